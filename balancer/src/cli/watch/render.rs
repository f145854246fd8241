//! Lays out a [`View`] as lines of text for a given width: the same lines
//! go to the terminal (one screen, redrawn in place) and, when stdout is
//! not a terminal, to the output (one block per refresh). Pure: no I/O.
//!
//! ```text
//! balancer stats  every 1s  2025-06-01T10:00:00Z  rates over 1.00s     q or Ctrl-C to quit
//!
//! VIP / BACKEND   STATE   WEIGHT    PKT/S    NEW/S   SHARE  SERVICE
//! web             3/3 up             1234     41.0          198.51.100.80:80/tcp maglev
//!   10.50.0.10    up         100      410     13.7   33.4%
//!
//! FORWARDED            PKT/S      TOTAL    DROPPED              PKT/S      TOTAL
//! redirect                 0          0    drop_malformed           0          0
//! ```

use std::time::Duration;

use super::rates::{CounterKind, CounterRow, View};

/// The heading line's facts.
#[derive(Clone, Debug, PartialEq)]
pub struct Heading {
    /// When the poll was made, as text (RFC 3339).
    pub time: String,
    /// The refresh interval asked for.
    pub interval: Duration,
    /// Time since the previous poll, over which the rates are computed
    /// (none on the first frame).
    pub elapsed: Option<Duration>,
    /// Say how to quit (the terminal view; not the plain output).
    pub keys: bool,
}

const KEYS: &str = "q or Ctrl-C to quit";
/// Gap between columns.
const GAP: &str = "  ";
/// Gap between the two columns of counter groups.
const SIDE_GAP: &str = "    ";
const RATE_W: usize = 7;
const WEIGHT_W: usize = 6;
const SHARE_W: usize = 6;
const TOTAL_W: usize = 9;

/// The lines of one frame, none longer than `width` characters.
pub fn render(heading: &Heading, view: &View, width: usize) -> Vec<String> {
    let mut lines = vec![heading_line(heading, width), String::new()];
    lines.extend(vip_table(view));
    lines.push(String::new());
    lines.extend(counter_table(&view.counters, width));
    lines
        .into_iter()
        .map(|line| fit(line.trim_end(), width))
        .collect()
}

fn heading_line(heading: &Heading, width: usize) -> String {
    let rates = match heading.elapsed {
        Some(elapsed) => format!("rates over {:.2}s", elapsed.as_secs_f64()),
        None => "rates from the next refresh".to_owned(),
    };
    let left = format!(
        "balancer stats{GAP}every {}{GAP}{}{GAP}{rates}",
        humantime::format_duration(heading.interval),
        heading.time,
    );
    let used = left.chars().count() + GAP.len();
    if heading.keys && used + KEYS.len() <= width {
        format!("{left}{:>pad$}", KEYS, pad = width - left.chars().count())
    } else {
        left
    }
}

/// VIPs, each followed by its backends (indented), in shared columns; a
/// VIP row ends with its service and scheduler.
fn vip_table(view: &View) -> Vec<String> {
    if view.vips.is_empty() {
        return vec!["no VIPs configured".to_owned()];
    }
    let vip_state = |up: usize, total: usize, all_down: bool| {
        if all_down {
            "all down".to_owned()
        } else {
            format!("{up}/{total} up")
        }
    };
    let name_w = view
        .vips
        .iter()
        .flat_map(|v| {
            std::iter::once(v.name.chars().count())
                .chain(v.backends.iter().map(|b| 2 + b.address.to_string().len()))
        })
        .chain(["VIP / BACKEND".len()])
        .max()
        .unwrap_or(0);
    let state_w = view
        .vips
        .iter()
        .flat_map(|v| {
            std::iter::once(vip_state(v.backends_up, v.backends_total, v.all_down).len())
                .chain(v.backends.iter().map(|b| b.state.chars().count()))
        })
        .chain(["STATE".len()])
        .max()
        .unwrap_or(0);
    let row = |name: &str, state: &str, weight: &str, pkts: &str, flows: &str, share: &str| {
        format!(
            "{}{GAP}{}{GAP}{weight:>WEIGHT_W$}{GAP}{pkts:>RATE_W$}{GAP}{flows:>RATE_W$}{GAP}{share:>SHARE_W$}",
            pad(name, name_w),
            pad(state, state_w),
        )
    };
    let mut lines = vec![format!(
        "{}{GAP}SERVICE",
        row(
            "VIP / BACKEND",
            "STATE",
            "WEIGHT",
            "PKT/S",
            "NEW/S",
            "SHARE"
        )
    )];
    for vip in &view.vips {
        lines.push(format!(
            "{}{GAP}{} {}",
            row(
                &vip.name,
                &vip_state(vip.backends_up, vip.backends_total, vip.all_down),
                "",
                &rate(vip.packet_rate),
                &rate(vip.flow_rate),
                "",
            ),
            vip.service,
            vip.scheduler,
        ));
        for b in &vip.backends {
            lines.push(row(
                &format!("  {}", b.address),
                &b.state,
                &b.weight.to_string(),
                &rate(b.packet_rate),
                &rate(b.flow_rate),
                &b.share
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}%")),
            ));
        }
    }
    lines
}

/// The global counters in groups: forwarded and passed on the left,
/// dropped and events on the right when the width allows, else one under
/// the other.
fn counter_table(counters: &[CounterRow], width: usize) -> Vec<String> {
    let name_w = counters
        .iter()
        .map(|c| c.name.chars().count())
        .chain(["FORWARDED".len()])
        .max()
        .unwrap_or(0);
    let group = |kinds: &[CounterKind]| -> Vec<String> {
        let mut lines = Vec::new();
        for &kind in kinds {
            let rows: Vec<&CounterRow> = counters.iter().filter(|c| c.kind == kind).collect();
            if rows.is_empty() {
                continue;
            }
            let title = match kind {
                CounterKind::Forwarded => "FORWARDED",
                CounterKind::Passed => "PASSED",
                CounterKind::Dropped => "DROPPED",
                CounterKind::Event => "EVENTS",
            };
            lines.push(format!(
                "{}{GAP}{:>RATE_W$}{GAP}{:>TOTAL_W$}",
                pad(title, name_w),
                "PKT/S",
                "TOTAL"
            ));
            for c in rows {
                lines.push(format!(
                    "{}{GAP}{:>RATE_W$}{GAP}{:>TOTAL_W$}",
                    pad(&c.name, name_w),
                    rate(c.packet_rate),
                    total(c.packets)
                ));
            }
        }
        lines
    };
    let left = group(&[CounterKind::Forwarded, CounterKind::Passed]);
    let right = group(&[CounterKind::Dropped, CounterKind::Event]);
    let block_w = name_w + GAP.len() + RATE_W + GAP.len() + TOTAL_W;
    if left.is_empty() || right.is_empty() || 2 * block_w + SIDE_GAP.len() > width {
        return left.into_iter().chain(right).collect();
    }
    (0..left.len().max(right.len()))
        .map(|i| {
            let l = left.get(i).map_or("", String::as_str);
            match right.get(i) {
                Some(r) => format!("{}{SIDE_GAP}{r}", pad(l, block_w)),
                None => l.to_owned(),
            }
        })
        .collect()
}

/// `lines` cut to `height` rows: when they do not fit, the last row says
/// how many were left out.
pub fn fit_height(mut lines: Vec<String>, height: usize, width: usize) -> Vec<String> {
    if lines.len() > height {
        let hidden = lines.len() + 1 - height;
        lines.truncate(height.saturating_sub(1));
        if height > 0 {
            lines.push(fit(
                &format!("({hidden} more lines: enlarge the terminal to see them)"),
                width,
            ));
        }
    }
    lines
}

/// A rate per second in at most 6 characters: "-" when unknown, one
/// decimal below 100, whole numbers below 10,000, then k, M, G.
pub fn rate(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(0.0) => "0".to_owned(),
        Some(v) if v < 99.95 => format!("{v:.1}"),
        Some(v) if v < 9_999.5 => format!("{v:.0}"),
        Some(v) => scaled(v),
    }
}

/// A cumulative count: exact below a million, then M, G, T.
pub fn total(value: u64) -> String {
    if value < 1_000_000 {
        value.to_string()
    } else {
        scaled(value as f64)
    }
}

/// `value` (at least 10,000) with a unit: 12.3k, 456k, 1.20M.
fn scaled(value: f64) -> String {
    let (scaled, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| value >= *scale * 0.9995)
        .map_or((value, ""), |(scale, unit)| (value / scale, unit));
    if scaled < 9.995 {
        format!("{scaled:.2}{unit}")
    } else if scaled < 99.95 {
        format!("{scaled:.1}{unit}")
    } else {
        format!("{scaled:.0}{unit}")
    }
}

/// `text` padded with spaces to `width` characters.
fn pad(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

/// `text` cut to `width` characters.
fn fit(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::watch::rates::{BackendRow, VipRow};

    fn view() -> View {
        let backend = |address: &str, state: &str, weight, flows: f64, share| BackendRow {
            address: address.parse().unwrap(),
            state: state.into(),
            weight,
            packet_rate: Some(flows * 10.0),
            flow_rate: Some(flows),
            share,
        };
        let counter = |name: &str, rate, packets| CounterRow {
            name: name.into(),
            kind: CounterKind::of(name),
            packet_rate: rate,
            packets,
        };
        View {
            vips: vec![VipRow {
                name: "web".into(),
                service: "198.51.100.80:80/tcp".into(),
                scheduler: "maglev".into(),
                backends_up: 2,
                backends_total: 3,
                all_down: false,
                packet_rate: Some(1234.0),
                flow_rate: Some(41.0),
                backends: vec![
                    backend("10.50.0.10", "up", 100, 13.7, Some(33.4)),
                    backend("10.50.0.11", "up", 200, 27.3, Some(66.6)),
                    backend("2001:db8::11", "down", 100, 0.0, Some(0.0)),
                ],
            }],
            counters: vec![
                counter("redirect", Some(0.0), 0),
                counter("tx", Some(1234.0), 2_345_678),
                counter("pass_not_vip", Some(2.5), 17),
                counter("drop_no_backend", Some(0.0), 3),
                counter("drop_no_neighbour", Some(0.0), 0),
                counter("new_flow", Some(41.0), 900),
            ],
        }
    }

    fn heading(elapsed: Option<Duration>, keys: bool) -> Heading {
        Heading {
            time: "2025-06-01T10:00:00Z".into(),
            interval: Duration::from_secs(1),
            elapsed,
            keys,
        }
    }

    #[test]
    fn a_frame_at_100_columns() {
        let lines = render(
            &heading(Some(Duration::from_millis(1004)), true),
            &view(),
            100,
        );
        let expected = [
            "balancer stats  every 1s  2025-06-01T10:00:00Z  rates over 1.00s                 q or Ctrl-C to quit",
            "",
            "VIP / BACKEND   STATE   WEIGHT    PKT/S    NEW/S   SHARE  SERVICE",
            "web             2/3 up             1234     41.0          198.51.100.80:80/tcp maglev",
            "  10.50.0.10    up         100      137     13.7   33.4%",
            "  10.50.0.11    up         200      273     27.3   66.6%",
            "  2001:db8::11  down       100        0        0    0.0%",
            "",
            "FORWARDED            PKT/S      TOTAL    DROPPED              PKT/S      TOTAL",
            "redirect                 0          0    drop_no_backend          0          3",
            "tx                    1234      2.35M    drop_no_neighbour        0          0",
            "PASSED               PKT/S      TOTAL    EVENTS               PKT/S      TOTAL",
            "pass_not_vip           2.5         17    new_flow              41.0        900",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn narrow_terminals_stack_the_counters_and_cut_lines() {
        let lines = render(&heading(None, true), &view(), 60);
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert_eq!(
            lines[0], "balancer stats  every 1s  2025-06-01T10:00:00Z  rates from t",
            "no room for the keys"
        );
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
        assert!(at("FORWARDED") < at("PASSED"));
        assert!(at("PASSED") < at("DROPPED"));
        assert!(at("DROPPED") < at("EVENTS"));
        assert_eq!(lines[at("tx")], "tx                    1234      2.35M");
        assert_eq!(
            lines[3], "web             2/3 up             1234     41.0          19",
            "the VIP's service is cut at the edge"
        );
    }

    #[test]
    fn unknown_rates_show_as_dashes_and_the_plain_heading_has_no_keys() {
        let mut view = view();
        view.vips[0].packet_rate = None;
        view.vips[0].all_down = true;
        view.vips[0].backends[0].share = None;
        view.counters[1].packet_rate = None;
        let lines = render(&heading(None, false), &view, usize::MAX);
        assert_eq!(
            lines[0],
            "balancer stats  every 1s  2025-06-01T10:00:00Z  rates from the next refresh"
        );
        assert!(lines[3].starts_with("web             all down                -     41.0"));
        assert!(lines[4].ends_with("13.7       -"), "{}", lines[4]);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("tx                       -      2.35M"))
        );
        assert!(lines.iter().all(|l| !l.contains('\x1b')));
    }

    #[test]
    fn lines_beyond_the_height_are_counted() {
        let lines: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(fit_height(lines.clone(), 10, 80), lines);
        assert_eq!(
            fit_height(lines.clone(), 4, 80),
            [
                "0",
                "1",
                "2",
                "(7 more lines: enlarge the terminal to see them)"
            ]
        );
        assert_eq!(fit_height(lines.clone(), 3, 6), ["0", "1", "(8 mor"]);
        assert!(fit_height(lines, 0, 80).is_empty());
    }

    #[test]
    fn no_vips_is_said() {
        let lines = render(&heading(None, false), &View::default(), 80);
        assert_eq!(lines[2], "no VIPs configured");
    }

    #[test]
    fn numbers_stay_short() {
        let r = |v| rate(Some(v));
        assert_eq!(rate(None), "-");
        assert_eq!(
            [
                r(0.0),
                r(0.04),
                r(3.333),
                r(99.94),
                r(99.96),
                r(412.4),
                r(9_999.4)
            ],
            ["0", "0.0", "3.3", "99.9", "100", "412", "9999"]
        );
        assert_eq!(
            [
                r(9_999.6),
                r(12_345.0),
                r(99_960.0),
                r(456_000.0),
                r(999_600.0),
                r(1.2e6),
                r(3.4e9)
            ],
            ["10.0k", "12.3k", "100k", "456k", "1.00M", "1.20M", "3.40G"]
        );
        assert_eq!(
            [
                total(0),
                total(999_999),
                total(1_000_000),
                total(12_345_678_901)
            ],
            ["0", "999999", "1.00M", "12.3G"]
        );
    }
}
