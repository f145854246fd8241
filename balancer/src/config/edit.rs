//! Changes the CLI makes to the configuration file, applied to its text
//! with a format-preserving TOML editor: comments, order and layout stay as
//! the operator wrote them. Pure: text in, text out. The result is checked
//! by the caller like any configuration before it is written.

use std::{net::IpAddr, time::Duration};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

/// One change to the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    AddVip {
        name: String,
        address: IpAddr,
        port: u16,
        protocol: String,
        scheduler: Option<String>,
        /// Written as the file writes durations ("30s", "5m").
        persistence_timeout: Option<Duration>,
        persistence_ipv6_prefix: Option<u8>,
    },
    RemoveVip {
        name: String,
    },
    AddBackend {
        vip: String,
        address: IpAddr,
        weight: Option<u32>,
    },
    RemoveBackend {
        vip: String,
        address: IpAddr,
    },
    SetWeight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    /// `drain = true`: no new flows, established ones stay; the weight is
    /// kept for `undrain`.
    Drain {
        vip: String,
        address: IpAddr,
        drain: bool,
    },
}

/// Applies `edit` to the configuration `text`; the error says what is
/// missing or already there.
pub fn apply(text: &str, edit: &Edit) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the configuration does not parse: {e}"))?;
    match edit {
        Edit::AddVip {
            name,
            address,
            port,
            protocol,
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
        } => {
            if find_vip(&mut doc, name).is_ok() {
                return Err(format!("a VIP named {name:?} already exists"));
            }
            let mut table = Table::new();
            table["name"] = value(name.as_str());
            table["address"] = value(address.to_string());
            table["port"] = value(i64::from(*port));
            table["protocol"] = value(protocol.as_str());
            if let Some(scheduler) = scheduler {
                table["scheduler"] = value(scheduler.as_str());
            }
            if let Some(timeout) = persistence_timeout {
                table["persistence_timeout"] = value(super::format_duration(*timeout));
            }
            if let Some(prefix) = persistence_ipv6_prefix {
                table["persistence_ipv6_prefix"] = value(i64::from(*prefix));
            }
            vips(&mut doc)?.push(table);
        }
        Edit::RemoveVip { name } => {
            let index = vip_index(&mut doc, name)?;
            vips(&mut doc)?.remove(index);
        }
        Edit::AddBackend {
            vip,
            address,
            weight,
        } => {
            let vip_table = find_vip(&mut doc, vip)?;
            if backend_index(vip_table, *address).is_some() {
                return Err(format!("VIP {vip:?} already has backend {address}"));
            }
            let mut table = Table::new();
            table["address"] = value(address.to_string());
            if let Some(weight) = weight {
                table["weight"] = value(i64::from(*weight));
            }
            backends(vip_table)?.push(table);
        }
        Edit::RemoveBackend { vip, address } => {
            let vip_table = find_vip(&mut doc, vip)?;
            let index =
                backend_index(vip_table, *address).ok_or_else(|| no_backend(vip, *address))?;
            backends(vip_table)?.remove(index);
        }
        Edit::SetWeight {
            vip,
            address,
            weight,
        } => {
            backend(&mut doc, vip, *address)?["weight"] = value(i64::from(*weight));
        }
        Edit::Drain {
            vip,
            address,
            drain,
        } => {
            let table = backend(&mut doc, vip, *address)?;
            if *drain {
                table["drain"] = value(true);
            } else {
                table.remove("drain");
            }
        }
    }
    Ok(doc.to_string())
}

fn vips(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, String> {
    let item = doc
        .entry("vip")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .ok_or_else(|| "`vip` is not an array of tables ([[vip]])".to_owned())
}

fn vip_index(doc: &mut DocumentMut, name: &str) -> Result<usize, String> {
    vips(doc)?
        .iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| format!("no VIP named {name:?}"))
}

fn find_vip<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, String> {
    let index = vip_index(doc, name)?;
    vips(doc)?
        .get_mut(index)
        .ok_or_else(|| format!("no VIP named {name:?}"))
}

fn backends(vip: &mut Table) -> Result<&mut ArrayOfTables, String> {
    vip.entry("backend")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| "`backend` is not an array of tables ([[vip.backend]])".to_owned())
}

fn backend_index(vip: &mut Table, address: IpAddr) -> Option<usize> {
    backends(vip).ok()?.iter().position(|t| {
        t.get("address")
            .and_then(Item::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok())
            == Some(address)
    })
}

fn backend<'a>(
    doc: &'a mut DocumentMut,
    vip: &str,
    address: IpAddr,
) -> Result<&'a mut Table, String> {
    let vip_table = find_vip(doc, vip)?;
    let index = backend_index(vip_table, address).ok_or_else(|| no_backend(vip, address))?;
    backends(vip_table)?
        .get_mut(index)
        .ok_or_else(|| no_backend(vip, address))
}

fn no_backend(vip: &str, address: IpAddr) -> String {
    format!("VIP {vip:?} has no backend {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# Production balancer.
[datapath]
interfaces = ["eth0"]   # uplink

# The web service.
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"

[[vip.backend]]
address = "10.0.0.1"   # rack 1
weight = 150
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn adding_a_backend_keeps_comments_and_layout() {
        let out = apply(
            FILE,
            &Edit::AddBackend {
                vip: "web".into(),
                address: ip("10.0.0.2"),
                weight: Some(50),
            },
        )
        .unwrap();
        assert!(out.starts_with(FILE), "the existing text changed:\n{out}");
        assert!(
            out.ends_with("[[vip.backend]]\naddress = \"10.0.0.2\"\nweight = 50\n"),
            "{out}"
        );
        crate::config::parse(&out, "t").unwrap();
    }

    #[test]
    fn weight_drain_and_removal_touch_only_their_backend() {
        let out = apply(
            FILE,
            &Edit::SetWeight {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                weight: 7,
            },
        )
        .unwrap();
        assert!(
            out.contains("address = \"10.0.0.1\"   # rack 1\nweight = 7\n"),
            "{out}"
        );
        let drained = apply(
            &out,
            &Edit::Drain {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                drain: true,
            },
        )
        .unwrap();
        assert!(drained.contains("drain = true"), "{drained}");
        let back = apply(
            &drained,
            &Edit::Drain {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                drain: false,
            },
        )
        .unwrap();
        assert_eq!(back, out);
        let removed = apply(
            FILE,
            &Edit::RemoveBackend {
                vip: "web".into(),
                address: ip("10.0.0.1"),
            },
        )
        .unwrap();
        assert!(
            !removed.contains("10.0.0.1") && removed.contains("# The web service."),
            "{removed}"
        );
    }

    #[test]
    fn vips_are_added_and_removed_by_name() {
        let out = apply(
            FILE,
            &Edit::AddVip {
                name: "dns".into(),
                address: ip("192.0.2.53"),
                port: 53,
                protocol: "udp".into(),
                scheduler: Some("source-hash".into()),
                persistence_timeout: None,
                persistence_ipv6_prefix: None,
            },
        )
        .unwrap();
        assert!(
            out.starts_with(FILE) && out.contains("name = \"dns\""),
            "{out}"
        );
        assert!(!out.contains("persistence"), "{out}");
        let config = crate::config::parse(&out, "t").unwrap();
        assert_eq!(config.vips.len(), 2);
        let removed = apply(&out, &Edit::RemoveVip { name: "web".into() }).unwrap();
        assert!(
            !removed.contains("\"web\"") && removed.contains("\"dns\""),
            "{removed}"
        );
    }

    #[test]
    fn a_vip_is_added_with_its_scheduler_and_persistence() {
        let out = apply(
            FILE,
            &Edit::AddVip {
                name: "app".into(),
                address: ip("2001:db8::80"),
                port: 443,
                protocol: "tcp".into(),
                scheduler: Some("least-connections".into()),
                persistence_timeout: Some(Duration::from_secs(300)),
                persistence_ipv6_prefix: Some(56),
            },
        )
        .unwrap();
        assert!(
            out.ends_with(
                "scheduler = \"least-connections\"\npersistence_timeout = \"5m\"\npersistence_ipv6_prefix = 56\n"
            ),
            "{out}"
        );
        let config = crate::config::parse(&out, "t").unwrap();
        let vip = config.vips[1].get_ref();
        assert_eq!(vip.scheduler, crate::config::Scheduler::LeastConnections);
        assert_eq!(
            vip.persistence(),
            Some(crate::config::Persistence {
                timeout: Duration::from_secs(300),
                ipv6_prefix: 56
            })
        );
    }

    #[test]
    fn a_vip_added_with_bad_persistence_is_refused_by_validation() {
        let add = |address: &str, timeout: u64, prefix: Option<u8>| {
            let out = apply(
                FILE,
                &Edit::AddVip {
                    name: "app".into(),
                    address: ip(address),
                    port: 443,
                    protocol: "tcp".into(),
                    scheduler: None,
                    persistence_timeout: Some(Duration::from_millis(timeout)),
                    persistence_ipv6_prefix: prefix,
                },
            )
            .unwrap();
            crate::config::parse(&out, "t").unwrap_err().to_string()
        };
        let short = add("192.0.2.80", 500, None);
        assert!(
            short.contains("persistence_timeout 500ms is below 1s"),
            "{short}"
        );
        let v4 = add("192.0.2.80", 30_000, Some(24));
        assert!(v4.contains("applies to IPv6 VIPs only"), "{v4}");
        let zero = add("2001:db8::80", 30_000, Some(0));
        assert!(zero.contains("between 1 and 128"), "{zero}");
    }

    #[test]
    fn edits_of_what_is_not_there_are_refused() {
        let e = apply(
            FILE,
            &Edit::RemoveVip {
                name: "nope".into(),
            },
        )
        .unwrap_err();
        assert_eq!(e, "no VIP named \"nope\"");
        let e = apply(
            FILE,
            &Edit::SetWeight {
                vip: "web".into(),
                address: ip("10.9.9.9"),
                weight: 1,
            },
        )
        .unwrap_err();
        assert_eq!(e, "VIP \"web\" has no backend 10.9.9.9");
        let e = apply(
            FILE,
            &Edit::AddBackend {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                weight: None,
            },
        )
        .unwrap_err();
        assert_eq!(e, "VIP \"web\" already has backend 10.0.0.1");
    }
}
