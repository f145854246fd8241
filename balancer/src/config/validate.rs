//! Every rule a configuration must follow beyond its syntax, each broken
//! rule reported with its line.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
    time::Duration,
};

use balancer_common::{
    access::ACCESS_ENTRIES,
    maps::{MAX_BACKENDS, MAX_RING_SIZE, MAX_VIPS},
};
use toml::Spanned;

use super::{
    CheckKind, Config, ConfigError, HealthCheckConfig, Lines, List, MAX_PERSISTENCE_TIMEOUT,
    MAX_RATE, MIN_PERSISTENCE_TIMEOUT, Prefix, VipConfig,
    bounds::{
        MAX_CHECK_INTERVAL, MAX_FLOW_TABLE_SIZE, MAX_RISE_FALL, MIN_CHECK_INTERVAL,
        MIN_CHECK_TIMEOUT, MIN_RING_SIZE, unusable,
    },
    format_duration,
};
use crate::{
    availability::{MAX_SLOW_START, MIN_SLOW_START},
    maglev::{MAX_WEIGHT, is_prime},
};

/// Checks `config` (parsed from `text`) and returns every problem found,
/// in file order; empty when the configuration is valid.
pub fn validate(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut errors = Errors {
        lines: Lines::new(text),
        list: Vec::new(),
    };
    datapath(config, &mut errors);
    vips(config, &mut errors);
    access(config, &mut errors);
    exempt_sources(config, &mut errors);
    announce(config, &mut errors);
    for (span, message) in super::nat::problems(config) {
        errors.at(span, message);
    }
    errors.list.sort_by_key(|e| e.line);
    errors.list
}

struct Errors {
    lines: Lines,
    list: Vec<ConfigError>,
}

impl Errors {
    fn at(&mut self, span: Range<usize>, message: String) {
        let line = (span != (0..0)).then(|| self.lines.line(span.start));
        self.list.push(ConfigError { line, message });
    }
}

/// `[announce]`, `[sync]`, and every VIP's `min_healthy`.
fn announce(config: &Config, errors: &mut Errors) {
    if let Some(announce) = &config.announce {
        for (span, message) in announce.problems() {
            errors.at(span, message);
        }
    }
    if let Some(sync) = &config.sync {
        for (span, message) in sync.problems() {
            errors.at(span, message);
        }
    }
    for vip in config.vips.iter().map(Spanned::get_ref) {
        if let Some(min) = vip.min_healthy.as_ref().filter(|m| *m.get_ref() == 0) {
            errors.at(
                min.span(),
                format!(
                    "VIP {:?}: min_healthy must be at least 1: a VIP with no backend up cannot be served",
                    vip.name.get_ref()
                ),
            );
        }
    }
}

fn datapath(config: &Config, errors: &mut Errors) {
    let d = &config.datapath;
    let ring = *d.ring_size.get_ref();
    if !is_prime(ring) || !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&ring) {
        errors.at(
            d.ring_size.span(),
            format!("ring_size {ring} must be a prime number from {MIN_RING_SIZE} to {MAX_RING_SIZE} (65537 is the default)"),
        );
    }
    let flows = *d.flow_table_size.get_ref();
    if !(1..=MAX_FLOW_TABLE_SIZE).contains(&flows) {
        errors.at(
            d.flow_table_size.span(),
            format!("flow_table_size {flows} is out of range: 1 to {MAX_FLOW_TABLE_SIZE} (64 Mi entries, 7.5 GiB of kernel memory)"),
        );
    }
    let nat = *d.nat_table_size.get_ref();
    if !(1..=MAX_FLOW_TABLE_SIZE).contains(&nat) {
        errors.at(
            d.nat_table_size.span(),
            format!("nat_table_size {nat} is out of range: 1 to {MAX_FLOW_TABLE_SIZE}"),
        );
    }
    let mut seen = BTreeSet::new();
    for interface in &d.interfaces {
        let name = interface.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            errors.at(
                interface.span(),
                format!("interface name {name:?} is not a valid Linux interface name"),
            );
        } else if !seen.insert(name) {
            errors.at(
                interface.span(),
                format!("interface {name:?} is listed twice"),
            );
        }
    }
    for (key, value) in [
        ("tcp_idle_timeout", d.tcp_idle_timeout),
        ("udp_idle_timeout", d.udp_idle_timeout),
    ] {
        if value.is_zero() {
            errors.at(0..0, format!("[datapath] {key} must be above 0"));
        }
    }
    if *d.gue_port.get_ref() == 0 {
        errors.at(
            d.gue_port.span(),
            "gue_port must be a UDP port from 1 to 65535 (6080 is the default)".to_owned(),
        );
    }
}

fn vips(config: &Config, errors: &mut Errors) {
    if config.vips.len() > MAX_VIPS as usize {
        errors.at(
            0..0,
            format!(
                "{} VIPs: at most {MAX_VIPS} are supported",
                config.vips.len()
            ),
        );
    }
    let total: usize = config.vips.iter().map(|v| v.get_ref().backends.len()).sum();
    if total > MAX_BACKENDS as usize {
        errors.at(
            0..0,
            format!("{total} backends over all VIPs: at most {MAX_BACKENDS} are supported"),
        );
    }
    let mut names = BTreeMap::new();
    let mut services = BTreeMap::new();
    for spanned in &config.vips {
        let vip = spanned.get_ref();
        let name = vip.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.at(
                vip.name.span(),
                format!("VIP name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        if let Some(first) = names.insert(name.clone(), errors.lines.line(vip.name.span().start)) {
            errors.at(
                vip.name.span(),
                format!("duplicate VIP name {name:?} (first on line {first})"),
            );
        }
        let address = *vip.address.get_ref();
        if let Some(why) = unusable(address) {
            errors.at(
                vip.address.span(),
                format!("VIP {name:?}: address {address} {why}: a VIP needs a unicast address clients can reach"),
            );
        }
        ring_fits(config, vip, errors);
        let service = (address, vip.port, vip.protocol);
        if let Some(first) = services.insert(service, errors.lines.line(spanned.span().start)) {
            errors.at(
                vip.address.span(),
                format!(
                    "duplicate VIP {address} port {} {} (first on line {first})",
                    vip.port, vip.protocol
                ),
            );
        }
        let check = vip.check();
        let check_span = vip
            .health_check
            .as_ref()
            .map_or(spanned.span(), Spanned::span);
        health_check(name, vip.port, &check, check_span, errors);
        persistence(vip, errors);
        availability(vip, errors);
        limits(vip, errors);
        let mut backends = BTreeMap::new();
        for b in &vip.backends {
            let backend = b.get_ref();
            let addr = *backend.address.get_ref();
            // In a tunnel the backend's family is the outer header's,
            // whatever the client's; L2 DSR hands the client's packet over
            // as is.
            if addr.is_ipv4() != address.is_ipv4() && !vip.forwarding.tunnelled() {
                errors.at(
                    backend.address.span(),
                    format!("backend {addr} of VIP {name:?} is not of the VIP's address family ({address}): only forwarding = \"ipip\" or \"gue\" carries one family in the other"),
                );
            }
            if let Some(why) = unusable(addr) {
                errors.at(
                    backend.address.span(),
                    format!("backend address {addr} of VIP {name:?} {why}: it cannot receive forwarded traffic"),
                );
            } else if addr == address {
                errors.at(
                    backend.address.span(),
                    format!("backend address {addr} of VIP {name:?} is the VIP's own address: packets would come back to the balancer"),
                );
            }
            if let Some(first) = backends.insert(addr, errors.lines.line(b.span().start)) {
                errors.at(
                    backend.address.span(),
                    format!("duplicate backend {addr} in VIP {name:?} (first on line {first})"),
                );
            }
            let weight = *backend.weight.get_ref();
            if weight > MAX_WEIGHT {
                errors.at(
                    backend.weight.span(),
                    format!("weight {weight} of backend {addr} is out of range (0 to {MAX_WEIGHT}; 0 drains)"),
                );
            }
        }
    }
}

/// Whether `timeout` is a usable `persistence_timeout`; the error says why
/// not. The CLI checks its option with it too.
pub fn check_persistence_timeout(timeout: Duration) -> Result<(), String> {
    if timeout < MIN_PERSISTENCE_TIMEOUT {
        Err(format!(
            "persistence_timeout {} is below {}s: a client's next connection seldom comes sooner, so it would keep almost no client on its backend",
            format_duration(timeout),
            MIN_PERSISTENCE_TIMEOUT.as_secs()
        ))
    } else if timeout > MAX_PERSISTENCE_TIMEOUT {
        Err(format!(
            "persistence_timeout {} is above {}h: clients would stay on their backends for days after backends or weights change, and the datapath would remember clients long gone",
            format_duration(timeout),
            MAX_PERSISTENCE_TIMEOUT.as_secs() / 3600
        ))
    } else {
        Ok(())
    }
}

fn persistence(vip: &VipConfig, errors: &mut Errors) {
    let name = vip.name.get_ref();
    if let Some(timeout) = &vip.persistence_timeout
        && let Err(problem) = check_persistence_timeout(*timeout.get_ref())
    {
        errors.at(timeout.span(), format!("VIP {name:?}: {problem}"));
    }
    let Some(prefix) = &vip.persistence_ipv6_prefix else {
        return;
    };
    let bits = *prefix.get_ref();
    if !(1..=128).contains(&bits) {
        errors.at(
            prefix.span(),
            format!("VIP {name:?}: persistence_ipv6_prefix {bits} must be between 1 and 128"),
        );
    }
    let address = vip.address.get_ref();
    if address.is_ipv4() {
        errors.at(
            prefix.span(),
            format!(
                "VIP {name:?}: persistence_ipv6_prefix applies to IPv6 VIPs only, and {address} is IPv4"
            ),
        );
    }
    if vip.persistence_timeout.is_none() {
        errors.at(
            prefix.span(),
            format!(
                "VIP {name:?}: persistence_ipv6_prefix needs persistence_timeout, without which there is no persistence"
            ),
        );
    }
}

/// `panic_threshold` and `slow_start`.
fn availability(vip: &VipConfig, errors: &mut Errors) {
    let name = vip.name.get_ref();
    if let Some(threshold) = &vip.panic_threshold {
        let percent = *threshold.get_ref();
        if !(1..=100).contains(&percent) {
            errors.at(
                threshold.span(),
                format!(
                    "VIP {name:?}: panic_threshold {percent} must be a percentage from 1 to 100 (leave it out for none)"
                ),
            );
        }
    }
    if let Some(length) = &vip.slow_start {
        let length_value = *length.get_ref();
        if !(MIN_SLOW_START..=MAX_SLOW_START).contains(&length_value) {
            errors.at(
                length.span(),
                format!(
                    "VIP {name:?}: slow_start {} is out of range: {} to {} (leave it out for none)",
                    format_duration(length_value),
                    format_duration(MIN_SLOW_START),
                    format_duration(MAX_SLOW_START)
                ),
            );
        }
    }
}

/// Exempt prefixes no longer than the prefix that makes a source of the
/// limited VIPs they apply to (of their family): a source has one pair of
/// buckets, so it is exempt whole or not at all.
fn exempt_sources(config: &Config, errors: &mut Errors) {
    let limited: Vec<(&str, bool, u8)> = config
        .vips
        .iter()
        .map(Spanned::get_ref)
        .filter_map(|vip| {
            let v4 = vip.address.get_ref().is_ipv4();
            let limits = vip.limits.as_ref()?.get_ref();
            Some((vip.name.get_ref().as_str(), v4, limits.prefix(v4)))
        })
        .collect();
    let mut check = |owner: &str, prefix: &Spanned<Prefix>, only: Option<&str>| {
        let p = prefix.get_ref();
        let shorter = limited.iter().find(|(name, v4, bits)| {
            *v4 == p.is_ipv4() && p.prefix_len() > *bits && only.is_none_or(|o| o == *name)
        });
        if let Some((name, v4, bits)) = shorter {
            let key = if *v4 { "ipv4_prefix" } else { "ipv6_prefix" };
            errors.at(
                prefix.span(),
                format!(
                    "{owner}: exempt prefix {p} is longer than the /{bits} that makes one source of VIP {name:?}'s limits, and a source is exempt whole or not at all: exempt its /{bits}, or lengthen limits.{key}"
                ),
            );
        }
    };
    for prefix in &config.access.exempt {
        check("[access]", prefix, None);
    }
    for vip in config.vips.iter().map(Spanned::get_ref) {
        let owner = format!("VIP {:?}", vip.name.get_ref());
        for prefix in &vip.exempt {
            check(&owner, prefix, Some(vip.name.get_ref()));
        }
    }
}

/// `[vip.limits]`: at least one rate; rates, bursts and prefix lengths in
/// range; the prefix of the VIP's family only.
fn limits(vip: &VipConfig, errors: &mut Errors) {
    let Some(limits) = &vip.limits else {
        return;
    };
    let name = vip.name.get_ref();
    let l = limits.get_ref();
    if l.new_flows.is_none() && l.packets.is_none() {
        errors.at(
            limits.span(),
            format!("VIP {name:?}: [vip.limits] sets no rate: give new_flows or packets (or leave the table out)"),
        );
    }
    for (key, value) in [
        ("new_flows", &l.new_flows),
        ("new_flows_burst", &l.new_flows_burst),
        ("packets", &l.packets),
        ("packets_burst", &l.packets_burst),
    ] {
        if let Some(v) = value
            && !(1..=MAX_RATE).contains(v.get_ref())
        {
            errors.at(
                v.span(),
                format!("VIP {name:?}: limits.{key} {} must be between 1 and {MAX_RATE} (leave it out for no limit)", v.get_ref()),
            );
        }
    }
    for (key, rate, burst) in [
        ("new_flows", &l.new_flows, &l.new_flows_burst),
        ("packets", &l.packets, &l.packets_burst),
    ] {
        if let (None, Some(burst)) = (rate, burst) {
            errors.at(
                burst.span(),
                format!(
                    "VIP {name:?}: limits.{key}_burst needs limits.{key}, the rate it is a burst of"
                ),
            );
        }
    }
    let v4 = vip.address.get_ref().is_ipv4();
    for (key, value, bits, family) in [
        ("ipv4_prefix", &l.ipv4_prefix, 32, true),
        ("ipv6_prefix", &l.ipv6_prefix, 128, false),
    ] {
        let Some(value) = value else {
            continue;
        };
        let n = *value.get_ref();
        if !(1..=bits).contains(&n) {
            errors.at(
                value.span(),
                format!("VIP {name:?}: limits.{key} {n} must be between 1 and {bits}"),
            );
        }
        if family != v4 {
            let (applies, is) = if v4 {
                ("IPv6", "IPv4")
            } else {
                ("IPv4", "IPv6")
            };
            errors.at(
                value.span(),
                format!(
                    "VIP {name:?}: limits.{key} applies to {applies} VIPs only, and {} is {is}",
                    vip.address.get_ref()
                ),
            );
        }
    }
}

fn health_check(
    vip: &str,
    vip_port: u16,
    check: &HealthCheckConfig,
    span: Range<usize>,
    errors: &mut Errors,
) {
    if check.kind.needs_port() && vip_port == 0 && check.port.is_none_or(|p| p == 0) {
        errors.at(
            span.clone(),
            format!(
                "VIP {vip:?} takes every port (port 0), so its {:?} health check needs a port: set health_check.port",
                check.kind
            ),
        );
    }
    if check.kind == CheckKind::None {
        return;
    }
    check_timing(vip, check, &span, errors);
    match check.kind {
        CheckKind::Http => {
            if !check.path.starts_with('/') {
                errors.at(
                    span.clone(),
                    format!(
                        "VIP {vip:?}: health check path {:?} must start with '/'",
                        check.path
                    ),
                );
            }
            if !(100..=599).contains(&check.expect_status) {
                errors.at(
                    span,
                    format!(
                        "VIP {vip:?}: expect_status {} is not an HTTP status",
                        check.expect_status
                    ),
                );
            }
        }
        CheckKind::Udp => {
            if check.send.is_none() || check.expect.is_none() {
                errors.at(
                    span,
                    format!("VIP {vip:?}: a udp health check needs both send and expect"),
                );
            }
        }
        CheckKind::Exec => {
            if check.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                errors.at(
                    span,
                    format!("VIP {vip:?}: an exec health check needs a command"),
                );
            }
        }
        CheckKind::Tcp | CheckKind::None => {}
    }
}

/// The health check's interval, timeout, rise and fall are within their
/// bounds, and the timeout within the interval.
fn check_timing(vip: &str, check: &HealthCheckConfig, span: &Range<usize>, errors: &mut Errors) {
    let (interval, timeout) = (check.interval, check.timeout);
    if !(MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&interval) {
        errors.at(
            span.clone(),
            format!(
                "VIP {vip:?}: health check interval {} is out of range: {} to {}",
                format_duration(interval),
                format_duration(MIN_CHECK_INTERVAL),
                format_duration(MAX_CHECK_INTERVAL)
            ),
        );
    }
    if timeout < MIN_CHECK_TIMEOUT {
        errors.at(
            span.clone(),
            format!(
                "VIP {vip:?}: health check timeout {} is below {}",
                format_duration(timeout),
                format_duration(MIN_CHECK_TIMEOUT)
            ),
        );
    } else if timeout > interval {
        errors.at(
            span.clone(),
            format!(
                "VIP {vip:?}: health check timeout ({timeout:?}) is longer than its interval ({interval:?})"
            ),
        );
    }
    for (key, value) in [("rise", check.rise), ("fall", check.fall)] {
        if !(1..=MAX_RISE_FALL).contains(&value) {
            errors.at(
                span.clone(),
                format!(
                    "VIP {vip:?}: health check {key} {value} is out of range: 1 to {MAX_RISE_FALL}"
                ),
            );
        }
    }
}

/// A Maglev ring holds every backend of its VIP at least once, so a VIP of
/// a hashing scheduler with more backends than `ring_size` slots could
/// never get a ring (the list schedulers size their rings by their lists).
fn ring_fits(config: &Config, vip: &VipConfig, errors: &mut Errors) {
    let ring = *config.datapath.ring_size.get_ref();
    let backends = vip.backends.len();
    if vip.scheduler.maglev_ring() && backends > ring as usize {
        errors.at(
            vip.name.span(),
            format!(
                "VIP {:?} has {backends} backends, more than ring_size {ring}: its Maglev ring could not hold them",
                vip.name.get_ref()
            ),
        );
    }
}

/// The allow, deny and exempt lists: no prefix twice in a list, a VIP's own
/// prefixes of its family (a client of an IPv4 VIP never has an IPv6
/// address), and no more entries in all than the trie holds.
fn access(config: &Config, errors: &mut Errors) {
    let mut entries = 0;
    let mut check = |owner: &str,
                     list: List,
                     prefixes: &[Spanned<Prefix>],
                     family: Option<bool>| {
        let mut seen = BTreeSet::new();
        for prefix in prefixes {
            let p = prefix.get_ref();
            let name = list.name();
            if !seen.insert(*p) {
                errors.at(prefix.span(), format!("{owner}: {name} lists {p} twice"));
            }
            if let Some(v4) = family.filter(|v4| *v4 != p.is_ipv4()) {
                let (vip, client) = if v4 {
                    ("IPv4", "IPv6")
                } else {
                    ("IPv6", "IPv4")
                };
                errors.at(
                    prefix.span(),
                    format!("{owner}: {name} prefix {p} is {client}, and the VIP is {vip}: its clients never match it"),
                );
            }
        }
        entries += prefixes.len() + usize::from(list == List::Allow && !prefixes.is_empty());
    };
    check("[access]", List::Deny, &config.access.deny, None);
    check("[access]", List::Allow, &config.access.allow, None);
    check("[access]", List::Exempt, &config.access.exempt, None);
    for vip in &config.vips {
        let vip = vip.get_ref();
        let owner = format!("VIP {:?}", vip.name.get_ref());
        let v4 = Some(vip.address.get_ref().is_ipv4());
        check(&owner, List::Deny, &vip.deny, v4);
        check(&owner, List::Allow, &vip.allow, v4);
        check(&owner, List::Exempt, &vip.exempt, v4);
    }
    if entries > ACCESS_ENTRIES as usize {
        errors.at(
            0..0,
            format!("the allow, deny and exempt lists hold {entries} entries in all (an allow list counts one more): at most {ACCESS_ENTRIES}"),
        );
    }
}
