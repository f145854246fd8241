//! `docs/grafana-dashboard.json` against `docs/observability.md`: the
//! dashboard is well-formed (unique panel ids, a grid without overlaps,
//! a query in every panel, one data-source variable everywhere), it charts
//! exactly the metrics of the documented table, each with its documented
//! labels only, and every query parses as PromQL. Unprivileged: it reads
//! two files.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
};

use serde_json::Value;

/// Grid columns of a Grafana dashboard.
const COLUMNS: u64 = 24;
/// The data source every panel, query and variable names: the
/// `datasource` template variable, so that no uid is hard-coded.
const DATASOURCE: &str = "${datasource}";
/// Labels Prometheus adds to every scraped series, usable in a legend.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn read_doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read_doc("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("docs/grafana-dashboard.json is not JSON: {e}"))
}

/// Each metric of the table in observability.md (the rows whose first
/// cell is `` `balancer_...` ``) with its documented labels.
/// The documented metrics with their labels; a histogram is charted by
/// its `_bucket` series (with `le`), so that name stands for it.
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let text = read_doc("observability.md");
    let metrics: BTreeMap<_, _> = text
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`balancer_")?
                .strip_suffix('`')?;
            let mut labels: BTreeSet<String> = cells
                .get(3)?
                .split(',')
                .map(|l| l.trim().trim_matches('`'))
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if *cells.get(2)? == "histogram" {
                labels.insert("le".to_owned());
                return Some((format!("balancer_{name}_bucket"), labels));
            }
            Some((format!("balancer_{name}"), labels))
        })
        .collect();
    let up = metrics.get("balancer_backend_up");
    assert!(
        up.is_some_and(|l: &BTreeSet<String>| l.iter().map(String::as_str).eq(["backend", "vip"])),
        "the metric table of observability.md did not parse: {metrics:?}"
    );
    metrics
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// One query of a panel.
struct Query {
    panel: String,
    expr: String,
    legend: String,
}

fn queries(dashboard: &Value) -> Vec<Query> {
    let mut all = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            all.push(Query {
                panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    all
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The tokens `balancer_[a-z_]+` of a query.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in expr.match_indices("balancer_") {
        if expr[..i].ends_with(is_ident) {
            continue;
        }
        let len = expr[i..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(expr.len() - i);
        names.insert(expr[i..i + len].to_owned());
    }
    names
}

/// The query with its string literals emptied, so that label values do not
/// look like keywords.
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push('"');
        }
    }
    out
}

/// Each selector `metric{label="...", ...}` as the metric and its label
/// names.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let text = without_strings(expr);
    let mut found = Vec::new();
    for metric in metric_names(&text) {
        for (i, _) in text.match_indices(&metric) {
            let rest = &text[i + metric.len()..];
            if rest.starts_with(is_ident) {
                continue; // a longer name
            }
            let Some(inner) = rest.strip_prefix('{') else {
                continue;
            };
            let inner = &inner[..inner.find('}').expect("a selector without its '}'")];
            let labels = inner
                .split(',')
                .filter_map(|m| {
                    let m = m.trim();
                    let end = m.find(|c: char| !is_ident(c)).unwrap_or(m.len());
                    (end > 0).then(|| m[..end].to_owned())
                })
                .collect();
            found.push((metric.clone(), labels));
        }
    }
    found
}

/// The label names of `by`, `without`, `on`, `ignoring`, `group_left` and
/// `group_right` clauses.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let text = without_strings(expr);
    let mut labels = BTreeSet::new();
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        for (i, _) in text.match_indices(keyword) {
            let rest = &text[i + keyword.len()..];
            if text[..i].ends_with(is_ident) || rest.starts_with(is_ident) {
                continue;
            }
            let Some(list) = rest.trim_start().strip_prefix('(') else {
                continue;
            };
            let list = &list[..list.find(')').expect("a label list without its ')'")];
            labels.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
    }
    labels
}

/// The `{{label}}` names of a legend.
fn legend_labels(legend: &str) -> Vec<&str> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(label, _)| label.trim()))
        .collect()
}

/// The query as Prometheus receives it, with Grafana's variables replaced
/// by typical values.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$vip", ".*")
        .replace("$backend", ".*")
}

/// The query variables as their `label_values(selector, label)` parts.
fn variables(dashboard: &Value) -> Vec<(String, String, String)> {
    let list = dashboard["templating"]["list"].as_array();
    list.into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let definition = v["query"].as_str().unwrap_or_default();
            assert_eq!(
                v["definition"], definition,
                "variable {name}: definition and query differ"
            );
            let args = definition
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .and_then(|d| d.rsplit_once(','))
                .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {definition}"));
            (name, args.0.trim().to_owned(), args.1.trim().to_owned())
        })
        .collect()
}

fn is_prometheus_variable(datasource: &Value) -> bool {
    datasource["type"] == "prometheus" && datasource["uid"] == DATASOURCE
}

#[test]
fn the_dashboard_is_well_formed() {
    let text = read_doc("grafana-dashboard.json");
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(
        !text.contains("${DS_") && d.get("__inputs").is_none(),
        "the data source is the `datasource` variable, not an import input"
    );
    let panels = panels(&d);
    assert!(!panels.is_empty(), "no panels");

    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        let id = p["id"].as_u64();
        assert!(
            id.is_some_and(|id| ids.insert(id)),
            "{title}: id {id:?} missing or not unique"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: no gridPos.{k}"))
        });
        assert!(
            w > 0 && h > 0 && x + w <= COLUMNS,
            "{title}: gridPos {g} is outside the grid"
        );
        for (other, ox, oy, ow, oh) in &boxes {
            let apart = x + w <= *ox || *ox + *ow <= x || y + h <= *oy || *oy + *oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, x, y, w, h));

        if p["type"] == "row" {
            continue;
        }
        assert!(
            is_prometheus_variable(&p["datasource"]),
            "{title}: data source {}",
            p["datasource"]
        );
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(
                is_prometheus_variable(&t["datasource"]),
                "{title}: query data source {}",
                t["datasource"]
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a query without expr"
            );
        }
        if ["timeseries", "stat", "gauge", "bargauge"]
            .contains(&p["type"].as_str().unwrap_or_default())
        {
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(unit.is_some_and(|u| !u.is_empty()), "{title}: no unit");
        }
    }

    for q in queries(&d) {
        for (i, _) in q.expr.match_indices('[') {
            assert!(
                q.expr[i..].starts_with("[$__rate_interval]"),
                "{}: a range other than $__rate_interval in {}",
                q.panel,
                q.expr
            );
        }
    }

    let list = d["templating"]["list"]
        .as_array()
        .expect("no templating list");
    let var = |name: &str| {
        list.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let ds = var("datasource");
    assert!(
        ds["type"] == "datasource" && ds["query"] == "prometheus",
        "{ds}"
    );
    for name in ["vip", "backend"] {
        let v = var(name);
        assert!(
            is_prometheus_variable(&v["datasource"]),
            "variable {name}: {}",
            v["datasource"]
        );
        assert!(
            v["multi"] == true && v["includeAll"] == true,
            "variable {name} must be multi with All"
        );
    }
}

#[test]
fn the_dashboard_charts_exactly_the_documented_metrics() {
    let documented = documented_metrics();
    let d = dashboard();
    let mut used = BTreeSet::new();
    for q in queries(&d) {
        for name in metric_names(&q.expr) {
            assert!(
                documented.contains_key(&name),
                "{}: {name} is not in the metric table of observability.md",
                q.panel
            );
            used.insert(name);
        }
    }
    for (name, selector, _) in variables(&d) {
        for metric in metric_names(&selector) {
            assert!(
                documented.contains_key(&metric),
                "variable {name}: {metric} is not documented"
            );
        }
    }
    let unused: Vec<_> = documented.keys().filter(|m| !used.contains(*m)).collect();
    assert!(
        unused.is_empty(),
        "documented metrics no panel charts: {unused:?}"
    );
}

#[test]
fn its_label_names_are_documented_for_their_metrics() {
    let documented = documented_metrics();
    let d = dashboard();
    for q in queries(&d) {
        let names = metric_names(&q.expr);
        let families: Vec<_> = names.iter().filter_map(|m| documented.get(m)).collect();
        if families.len() < names.len() {
            continue; // an undocumented name, which the test above reports
        }
        for (metric, labels) in selectors(&q.expr) {
            for label in labels {
                assert!(
                    documented[&metric].contains(&label),
                    "{}: {metric} has no label {label} in {}",
                    q.panel,
                    q.expr
                );
            }
        }
        for label in grouping_labels(&q.expr) {
            assert!(
                families.iter().all(|f| f.contains(&label)),
                "{}: groups by {label}, which not every metric of {} has",
                q.panel,
                q.expr
            );
        }
        for label in legend_labels(&q.legend) {
            assert!(
                TARGET_LABELS.contains(&label) || families.iter().any(|f| f.contains(label)),
                "{}: the legend names {label}, which no metric of {} has",
                q.panel,
                q.expr
            );
        }
    }
    for (name, selector, label) in variables(&d) {
        let mut used = selectors(&selector);
        used.extend(
            metric_names(&selector)
                .into_iter()
                .map(|m| (m, vec![label.clone()])),
        );
        for (metric, labels) in used {
            let Some(known) = documented.get(&metric) else {
                continue; // reported by the test above
            };
            for l in labels {
                assert!(
                    known.contains(&l),
                    "variable {name}: {metric} has no label {l}"
                );
            }
        }
    }
}

#[test]
fn its_queries_parse_as_promql() {
    let d = dashboard();
    for q in queries(&d) {
        let promql = substituted(&q.expr);
        if let Err(e) = promql_parser::parser::parse(&promql) {
            panic!("{}: {promql} does not parse: {e}", q.panel);
        }
    }
    for (name, selector, _) in variables(&d) {
        let promql = substituted(&selector);
        if let Err(e) = promql_parser::parser::parse(&promql) {
            panic!("variable {name}: {promql} does not parse: {e}");
        }
    }
}
