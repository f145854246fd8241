//! Active connections per backend, counted from the connection table
//! (live entries for every scheduler; counted ones for the least-*
//! schedulers, whose datapath counts they correct), and each backend's
//! new flows between two scans. Pure logic.

use std::collections::BTreeMap;

use balancer_common::{
    flow::{FLOW_COUNTED, FlowKey, FlowState},
    nat::{NatFlow, NatReply, NatSettings as _},
    settings::Settings,
};

/// What one read of the connection table says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Backend id → entries not idle past their timeout.
    pub live: BTreeMap<u32, u64>,
    /// Backend id → live entries the datapath counts (not yet closed by a
    /// FIN or RST): what its connection count must be.
    pub counted: BTreeMap<u32, u64>,
    /// Entries idle past their timeout: the datapath ignores them, and
    /// removing them frees their slots. Those still counted are also
    /// tallied per backend in `expired_counted`.
    pub expired: Vec<FlowKey>,
    /// Backend id → expired entries still counted.
    pub expired_counted: BTreeMap<u32, u64>,
    /// NAT forward entries idle past their timeout, each with whether it
    /// is in an open table.
    pub expired_nat: Vec<(FlowKey, bool)>,
    /// NAT reverse entries idle past their timeout, likewise.
    pub expired_replies: Vec<(FlowKey, bool)>,
}

/// Tallies `entries` at time `now` (the program's clock), with the idle
/// timeouts of `settings`.
pub fn tally(entries: &[(FlowKey, FlowState)], now: u64, settings: &Settings) -> Tally {
    let mut tally = Tally::default();
    for (key, state) in entries {
        let counted = state.is_counted();
        if settings.expired(key.proto, state.last_seen_ns, now) {
            tally.expired.push(*key);
            if counted {
                *tally.expired_counted.entry(state.backend).or_default() += 1;
            }
            continue;
        }
        *tally.live.entry(state.backend).or_default() += 1;
        if counted {
            *tally.counted.entry(state.backend).or_default() += 1;
        }
    }
    tally
}

/// Adds NAT connections to `tally`: their forward entries `flows` (each
/// with whether it is in an open table) count as a backend's entries and,
/// counted ones, toward its connection count; expired ones (past their
/// state's timeout) are listed in `expired_nat` to remove, with the
/// expired reverse entries of `replies`.
pub fn tally_nat(
    tally: &mut Tally,
    flows: &[(FlowKey, NatFlow, bool)],
    replies: &[(FlowKey, NatReply, bool)],
    now: u64,
    settings: &Settings,
) {
    for (key, flow, open) in flows {
        let counted = flow.vip & FLOW_COUNTED != 0;
        if settings.nat_expired(flow.state, key.proto, flow.last_seen_ns, now) {
            tally.expired_nat.push((*key, *open));
            if counted {
                *tally.expired_counted.entry(flow.backend).or_default() += 1;
            }
            continue;
        }
        *tally.live.entry(flow.backend).or_default() += 1;
        if counted {
            *tally.counted.entry(flow.backend).or_default() += 1;
        }
    }
    for (key, reply, open) in replies {
        if settings.nat_expired(reply.state, key.proto, reply.last_seen_ns, now) {
            tally.expired_replies.push((*key, *open));
        }
    }
}

/// How much to add to a backend's connection count. `before` and `after`
/// are the count read just before and just after the table was read:
/// when they agree nothing opened or closed meanwhile, and the count is
/// set to what the table says (this also repairs entries lost to LRU
/// eviction or a race between CPUs); otherwise only the expired entries
/// the caller removes are taken off, exactly.
pub fn correction(before: i64, after: i64, counted: u64, expired_counted: u64) -> i64 {
    if before == after {
        counted as i64 - after
    } else {
        -(expired_counted as i64)
    }
}

/// How much each backend's new-flow counter grew from `before` to `after`
/// (both read from the datapath). A backend without a `before` reading
/// (added during the interval) is left out: its growth is unknown.
pub fn growth(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
    after
        .iter()
        .filter_map(|(id, now)| Some((*id, now.saturating_sub(*before.get(id)?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use balancer_common::proto;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            tcp_idle_ns: 60 * SECOND,
            udp_idle_ns: 10 * SECOND,
            ..Settings::default()
        }
    }

    fn entry(port: u16, l4: u8, backend: u32, counted: bool, seen: u64) -> (FlowKey, FlowState) {
        (
            FlowKey {
                src_port: port,
                proto: l4,
                ..FlowKey::default()
            },
            FlowState::new(backend, 3, counted, false, seen),
        )
    }

    #[test]
    fn live_counted_and_expired_entries_are_told_apart_by_protocol_timeout() {
        let now = 100 * SECOND;
        let entries = [
            entry(1, proto::TCP, 7, true, now - 30 * SECOND),
            entry(2, proto::TCP, 7, false, now - 30 * SECOND),
            entry(3, proto::TCP, 7, true, now - 61 * SECOND),
            entry(4, proto::UDP, 8, false, now - 5 * SECOND),
            entry(5, proto::UDP, 8, true, now - 11 * SECOND),
        ];
        let t = tally(&entries, now, &settings());
        assert_eq!(t.live, BTreeMap::from([(7, 2), (8, 1)]));
        assert_eq!(t.counted, BTreeMap::from([(7, 1)]));
        assert_eq!(t.expired.len(), 2);
        assert_eq!(t.expired[0].src_port, 3);
        assert_eq!(t.expired_counted, BTreeMap::from([(7, 1), (8, 1)]));
    }

    #[test]
    fn a_quiet_count_is_set_to_the_table_a_busy_one_loses_only_the_expired() {
        // Drifted to 12 while the table counts 10: set to 10.
        assert_eq!(correction(12, 12, 10, 2), -2);
        assert_eq!(correction(-1, -1, 0, 0), 1);
        // Moving during the read: take off the expired entries only.
        assert_eq!(correction(12, 14, 10, 2), -2);
        assert_eq!(correction(5, 4, 10, 0), 0);
    }

    #[test]
    fn growth_is_per_backend_and_skips_backends_without_a_first_reading() {
        let before = BTreeMap::from([(1, 10), (2, 5), (3, 7)]);
        let after = BTreeMap::from([(1, 25), (2, 5), (4, 9)]);
        assert_eq!(growth(&before, &after), BTreeMap::from([(1, 15), (2, 0)]));
    }

    #[test]
    fn nat_connections_count_by_their_state_and_expire_on_its_timeout() {
        use balancer_common::nat::{NAT_CLOSING, NAT_ESTABLISHED, NAT_SYN, NAT_UDP};
        let settings = Settings {
            nat_handshake_ns: 5 * SECOND,
            nat_closing_ns: 20 * SECOND,
            ..settings()
        };
        let now = 100 * SECOND;
        let flow = |port: u16, l4, backend, counted: bool, state, idle: u64, open| {
            let key = FlowKey {
                src_port: port,
                proto: l4,
                ..FlowKey::default()
            };
            let flow = NatFlow {
                backend,
                vip: 3 | if counted { FLOW_COUNTED } else { 0 },
                last_seen_ns: now - idle * SECOND,
                state,
                ..NatFlow::default()
            };
            (key, flow, open)
        };
        let flows = [
            flow(1, proto::TCP, 7, true, NAT_ESTABLISHED, 50, false),
            flow(2, proto::TCP, 7, false, NAT_CLOSING, 10, false),
            flow(3, proto::TCP, 7, true, NAT_SYN, 6, true),
            flow(4, proto::TCP, 8, false, NAT_CLOSING, 21, false),
            flow(5, proto::UDP, 8, true, NAT_UDP, 9, false),
        ];
        let reply = |port: u16, state, idle: u64, open| {
            let key = FlowKey {
                dst_port: port,
                proto: proto::TCP,
                ..FlowKey::default()
            };
            let reply = NatReply {
                last_seen_ns: now - idle * SECOND,
                state,
                ..NatReply::default()
            };
            (key, reply, open)
        };
        let replies = [
            reply(1, NAT_ESTABLISHED, 50, false),
            reply(3, NAT_SYN, 6, true),
        ];
        let mut t = Tally::default();
        tally_nat(&mut t, &flows, &replies, now, &settings);
        assert_eq!(t.live, BTreeMap::from([(7, 2), (8, 1)]));
        assert_eq!(t.counted, BTreeMap::from([(7, 1), (8, 1)]));
        assert_eq!(t.expired_counted, BTreeMap::from([(7, 1)]));
        let key = |port| FlowKey {
            src_port: port,
            proto: proto::TCP,
            ..FlowKey::default()
        };
        assert_eq!(t.expired_nat, [(key(3), true), (key(4), false)]);
        let back = FlowKey {
            dst_port: 3,
            proto: proto::TCP,
            ..FlowKey::default()
        };
        assert_eq!(t.expired_replies, [(back, true)]);
    }
}
