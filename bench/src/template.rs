//! The generator's [`Template`] for a frame: where its source port and
//! transport checksum lie, and its headers. Pure, so that the checks are
//! tested without the kernel.

use balancer_bench_common::{CHECK_TCP, CHECK_UDP, TEMPLATE_LEN, Template};
use balancer_common::proto;

use crate::BenchError;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_LEN: usize = 14;
const IPV6_LEN: usize = 40;

/// The generator's template for `frame`.
pub(crate) fn template(frame: &[u8], flows: u32) -> Result<Template, BenchError> {
    let bad = |reason: String| BenchError::Frame { reason };
    let byte = |at: usize| -> Result<u8, BenchError> {
        frame
            .get(at)
            .copied()
            .ok_or_else(|| bad(format!("{} bytes end inside its headers", frame.len())))
    };
    let word = |at: usize| -> Result<u16, BenchError> {
        Ok(u16::from_be_bytes([byte(at)?, byte(at + 1)?]))
    };
    let (l4, protocol, v6) = match word(12)? {
        ETHERTYPE_IPV4 => {
            let vihl = byte(ETH_LEN)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(bad(format!(
                    "invalid IPv4 version and length byte {vihl:#04x}"
                )));
            }
            if word(ETH_LEN + 6)? & 0x3fff != 0 {
                return Err(bad("an IPv4 fragment".to_owned()));
            }
            (ETH_LEN + ihl, byte(ETH_LEN + 9)?, false)
        }
        ETHERTYPE_IPV6 => (ETH_LEN + IPV6_LEN, byte(ETH_LEN + 6)?, true),
        other => {
            return Err(bad(format!(
                "EtherType {other:#06x}: only IPv4 and IPv6 without a VLAN tag"
            )));
        }
    };
    let (headers, check_offset, check_kind) = match protocol {
        proto::TCP => {
            let data_offset = usize::from(byte(l4 + 12)? >> 4) * 4;
            if data_offset < 20 {
                return Err(bad(format!("TCP data offset of {data_offset} bytes")));
            }
            (l4 + data_offset, l4 + 16, CHECK_TCP)
        }
        // UDP over IPv4 may go without a checksum: it then stays 0.
        proto::UDP if !v6 && word(l4 + 6)? == 0 => (l4 + 8, 0, CHECK_UDP),
        proto::UDP => (l4 + 8, l4 + 6, CHECK_UDP),
        other => {
            return Err(bad(format!(
                "IP protocol {other}: only TCP and UDP (and no IPv6 extension header)"
            )));
        }
    };
    if headers > frame.len() {
        return Err(bad(format!(
            "{} bytes end inside its {headers} bytes of headers",
            frame.len()
        )));
    }
    if headers > TEMPLATE_LEN {
        return Err(bad(format!(
            "{headers} bytes of headers, the generator rewrites at most {TEMPLATE_LEN}"
        )));
    }
    let base = word(l4)?;
    if flows == 0 || u32::from(base) + flows - 1 > u32::from(u16::MAX) {
        return Err(BenchError::Flows { flows, base });
    }
    let mut bytes = [0u8; TEMPLATE_LEN];
    bytes[..headers].copy_from_slice(&frame[..headers]);
    Ok(Template {
        bytes,
        len: headers as u32,
        flows,
        port_offset: l4 as u16,
        check_offset: check_offset as u16,
        base_port: base.to_be(),
        check_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet II frame with an IPv4 or IPv6 header (checksums not
    /// computed: `template` does not check them) and a transport header of
    /// `l4_len` bytes starting with source port `port`.
    fn frame(v6: bool, protocol: u8, l4: &[u8], payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; IPV6_LEN];
            ip[0] = 0x60;
            ip[6] = protocol;
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[9] = protocol;
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(l4);
        f.resize(f.len() + payload, 0xab);
        f
    }

    fn udp(port: u16, check: u16) -> [u8; 8] {
        let [p0, p1] = port.to_be_bytes();
        let [c0, c1] = check.to_be_bytes();
        [p0, p1, 0, 53, 0, 8, c0, c1]
    }

    fn tcp(port: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..2].copy_from_slice(&port.to_be_bytes());
        h[12] = 5 << 4;
        h
    }

    #[test]
    fn udp_over_ipv4_with_a_checksum_is_adjusted() {
        let t = template(&frame(false, proto::UDP, &udp(1000, 0x1234), 18), 8).unwrap();
        assert_eq!(
            (t.len, t.port_offset, t.check_offset, t.check_kind),
            (42, 34, 40, CHECK_UDP)
        );
        assert_eq!(u16::from_be(t.base_port), 1000);
        assert_eq!(t.flows, 8);
        assert!(t.bytes[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn udp_over_ipv4_without_a_checksum_keeps_it_zero() {
        let t = template(&frame(false, proto::UDP, &udp(1000, 0), 18), 8).unwrap();
        assert_eq!(t.check_offset, 0);
    }

    #[test]
    fn ipv6_udp_is_always_adjusted_and_tcp_headers_are_found() {
        let t = template(&frame(true, proto::UDP, &udp(5, 0), 0), 1).unwrap();
        assert_eq!((t.len, t.port_offset, t.check_offset), (62, 54, 60));
        let t = template(&frame(true, proto::TCP, &tcp(40000), 0), 100).unwrap();
        assert_eq!(
            (t.len, t.port_offset, t.check_offset, t.check_kind),
            (74, 54, 70, CHECK_TCP)
        );
    }

    #[test]
    fn unusable_frames_are_refused_with_a_reason() {
        let too_short = &frame(false, proto::UDP, &udp(1, 1), 0)[..40];
        let mut options = tcp(1);
        options[12] = 8 << 4;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (too_short.to_vec(), "end inside"),
            (frame(false, proto::ICMP, &[0; 8], 0), "protocol 1"),
            (frame(true, proto::TCP, &options, 40), "at most 80"),
            (vec![0; 60], "EtherType 0x0000"),
        ];
        for (f, reason) in cases {
            let err = template(&f, 1).unwrap_err().to_string();
            assert!(err.contains(reason), "{err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn flows_must_fit_the_port_range() {
        let f = frame(false, proto::UDP, &udp(65530, 1), 0);
        assert!(template(&f, 6).is_ok());
        assert!(matches!(
            template(&f, 7),
            Err(BenchError::Flows {
                flows: 7,
                base: 65530
            })
        ));
        assert!(matches!(
            template(&f, 0),
            Err(BenchError::Flows { flows: 0, .. })
        ));
    }
}
