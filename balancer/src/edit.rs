//! Changes the CLI makes to the configuration file, applied to its text
//! with a format-preserving TOML editor: comments, order and layout stay as
//! the operator wrote them. Pure: text in, text out. The result is checked
//! by the caller like any configuration before it is written.
//!
//! It sits beside [`crate::config`], not inside it: an edit is made of the
//! command types ([`crate::command`]), which are made of configuration
//! types, so the dependencies run config → command → edit → control.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::command::{AccessEntry, BackendAdd, BackendRef, BackendWeight, VipAdd, VipName};

/// One change to the configuration: the arguments are the commands' own
/// types, and a request carries it as it is, named by `command`
/// (docs/control-api.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Edit {
    VipAdd(VipAdd),
    VipRemove(VipName),
    BackendAdd(BackendAdd),
    BackendRemove(BackendRef),
    BackendWeight(BackendWeight),
    /// No new flows, established ones stay; the weight is kept for
    /// `undrain`.
    BackendDrain(BackendRef),
    BackendUndrain(BackendRef),
    /// A prefix added to an allow or deny list.
    AccessAdd(AccessEntry),
    /// A prefix taken out of an allow or deny list.
    AccessRemove(AccessEntry),
}

impl Edit {
    /// The `command` of each change, as the control socket names them.
    pub const COMMANDS: [&'static str; 9] = [
        "vip-add",
        "vip-remove",
        "backend-add",
        "backend-remove",
        "backend-weight",
        "backend-drain",
        "backend-undrain",
        "access-add",
        "access-remove",
    ];
}

/// Applies `edit` to the configuration `text`; the error says what is
/// missing or already there.
pub fn apply(text: &str, edit: &Edit) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the configuration does not parse: {e}"))?;
    match edit {
        Edit::VipAdd(add) => add_vip(&mut doc, add)?,
        Edit::VipRemove(VipName { name }) => {
            let index = vip_index(&mut doc, name)?;
            vips(&mut doc)?.remove(index);
        }
        Edit::BackendAdd(BackendAdd {
            vip,
            address,
            weight,
            port,
        }) => {
            let vip_table = find_vip(&mut doc, vip)?;
            if backend_index(vip_table, *address).is_some() {
                return Err(format!("VIP {vip:?} already has backend {address}"));
            }
            let mut table = Table::new();
            table["address"] = value(address.to_string());
            if let Some(weight) = weight {
                table["weight"] = value(i64::from(*weight));
            }
            if let Some(port) = port {
                table["port"] = value(i64::from(*port));
            }
            backends(vip_table)?.push(table);
        }
        Edit::BackendRemove(BackendRef { vip, address }) => {
            let vip_table = find_vip(&mut doc, vip)?;
            let index =
                backend_index(vip_table, *address).ok_or_else(|| no_backend(vip, *address))?;
            backends(vip_table)?.remove(index);
        }
        Edit::BackendWeight(BackendWeight {
            vip,
            address,
            weight,
        }) => {
            backend(&mut doc, vip, *address)?["weight"] = value(i64::from(*weight));
        }
        Edit::BackendDrain(BackendRef { vip, address }) => {
            backend(&mut doc, vip, *address)?["drain"] = value(true);
        }
        Edit::BackendUndrain(BackendRef { vip, address }) => {
            backend(&mut doc, vip, *address)?.remove("drain");
        }
        Edit::AccessAdd(entry) => {
            let (owner, list) = access_list(&mut doc, entry)?;
            if list.iter().any(|p| prefix_of(p) == Some(entry.prefix)) {
                return Err(format!(
                    "{owner}'s {} list already has {}",
                    entry.list.name(),
                    entry.prefix
                ));
            }
            list.push(entry.prefix.to_string());
        }
        Edit::AccessRemove(entry) => {
            let (owner, list) = access_list(&mut doc, entry)?;
            let index = list
                .iter()
                .position(|p| prefix_of(p) == Some(entry.prefix))
                .ok_or_else(|| {
                    format!(
                        "{owner}'s {} list has no {}",
                        entry.list.name(),
                        entry.prefix
                    )
                })?;
            list.remove(index);
            // The element that moves to the front keeps no separator's
            // space before it.
            if index == 0
                && let Some(first) = list.get_mut(0)
            {
                first.decor_mut().set_prefix("");
            }
        }
    }
    Ok(doc.to_string())
}

/// The array of `entry`'s list, made empty where the file has none, and
/// what owns it (`[access]` or a VIP) for messages.
fn access_list<'a>(
    doc: &'a mut DocumentMut,
    entry: &AccessEntry,
) -> Result<(String, &'a mut toml_edit::Array), String> {
    let (owner, table) = match &entry.vip {
        Some(vip) => (format!("VIP {vip:?}"), find_vip(doc, vip)?),
        None => {
            let table = doc
                .entry("access")
                .or_insert(Item::Table(Table::new()))
                .as_table_mut()
                .ok_or_else(|| "`access` is not a table ([access])".to_owned())?;
            ("[access]".to_owned(), table)
        }
    };
    let name = entry.list.name();
    let list = table
        .entry(name)
        .or_insert(value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| format!("{owner}: `{name}` is not an array of prefixes"))?;
    Ok((owner, list))
}

/// The prefix an array element of a list holds, if it is one.
fn prefix_of(item: &toml_edit::Value) -> Option<crate::config::Prefix> {
    item.as_str()?.parse().ok()
}

/// Appends a `[[vip]]` table with the keys given, the optional ones only
/// when given.
fn add_vip(doc: &mut DocumentMut, add: &VipAdd) -> Result<(), String> {
    let VipAdd {
        name,
        service,
        scheduler,
        persistence_timeout,
        persistence_ipv6_prefix,
        forwarding,
        snat,
    } = add;
    if find_vip(doc, name).is_ok() {
        return Err(format!("a VIP named {name:?} already exists"));
    }
    let mut table = Table::new();
    table["name"] = value(name.as_str());
    table["address"] = value(service.address.to_string());
    table["port"] = value(i64::from(service.port));
    table["protocol"] = value(service.protocol.to_string());
    if let Some(scheduler) = scheduler {
        table["scheduler"] = value(scheduler.name());
    }
    if let Some(timeout) = persistence_timeout {
        table["persistence_timeout"] = value(crate::config::format_duration(*timeout));
    }
    if let Some(prefix) = persistence_ipv6_prefix {
        table["persistence_ipv6_prefix"] = value(i64::from(*prefix));
    }
    if let Some(forwarding) = forwarding {
        table["forwarding"] = value(forwarding.name());
    }
    if let Some(snat) = snat {
        table["snat"] = value(*snat);
    }
    vips(doc)?.push(table);
    Ok(())
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
    use std::time::Duration;

    use super::*;
    use crate::{
        command::Service,
        config::{Protocol, Scheduler},
    };

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

    /// A backend of VIP "web".
    fn web(address: &str) -> BackendRef {
        BackendRef {
            vip: "web".into(),
            address: ip(address),
        }
    }

    /// `vip add` without scheduler or persistence.
    fn vip_add(name: &str, address: &str, port: u16, protocol: Protocol) -> VipAdd {
        VipAdd {
            name: name.into(),
            service: Service {
                address: ip(address),
                port,
                protocol,
            },
            scheduler: None,
            persistence_timeout: None,
            persistence_ipv6_prefix: None,
            forwarding: None,
            snat: None,
        }
    }

    #[test]
    fn adding_a_backend_keeps_comments_and_layout() {
        let out = apply(
            FILE,
            &Edit::BackendAdd(BackendAdd {
                vip: "web".into(),
                address: ip("10.0.0.2"),
                weight: Some(50),
                port: None,
            }),
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
            &Edit::BackendWeight(BackendWeight {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                weight: 7,
            }),
        )
        .unwrap();
        assert!(
            out.contains("address = \"10.0.0.1\"   # rack 1\nweight = 7\n"),
            "{out}"
        );
        let drained = apply(&out, &Edit::BackendDrain(web("10.0.0.1"))).unwrap();
        assert!(drained.contains("drain = true"), "{drained}");
        let back = apply(&drained, &Edit::BackendUndrain(web("10.0.0.1"))).unwrap();
        assert_eq!(back, out);
        let removed = apply(FILE, &Edit::BackendRemove(web("10.0.0.1"))).unwrap();
        assert!(
            !removed.contains("10.0.0.1") && removed.contains("# The web service."),
            "{removed}"
        );
    }

    #[test]
    fn vips_are_added_and_removed_by_name() {
        let out = apply(
            FILE,
            &Edit::VipAdd(VipAdd {
                scheduler: Some(Scheduler::SourceHash),
                ..vip_add("dns", "192.0.2.53", 53, Protocol::Udp)
            }),
        )
        .unwrap();
        assert!(
            out.starts_with(FILE) && out.contains("name = \"dns\""),
            "{out}"
        );
        assert!(!out.contains("persistence"), "{out}");
        let config = crate::config::parse(&out, "t").unwrap();
        assert_eq!(config.vips.len(), 2);
        let removed = apply(&out, &Edit::VipRemove(VipName { name: "web".into() })).unwrap();
        assert!(
            !removed.contains("\"web\"") && removed.contains("\"dns\""),
            "{removed}"
        );
    }

    #[test]
    fn a_vip_is_added_with_its_scheduler_and_persistence() {
        let out = apply(
            FILE,
            &Edit::VipAdd(VipAdd {
                scheduler: Some(Scheduler::LeastConnections),
                persistence_timeout: Some(Duration::from_secs(300)),
                persistence_ipv6_prefix: Some(56),
                ..vip_add("app", "2001:db8::80", 443, Protocol::Tcp)
            }),
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
        assert_eq!(vip.scheduler, Scheduler::LeastConnections);
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
                &Edit::VipAdd(VipAdd {
                    persistence_timeout: Some(Duration::from_millis(timeout)),
                    persistence_ipv6_prefix: prefix,
                    ..vip_add("app", address, 443, Protocol::Tcp)
                }),
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
            &Edit::VipRemove(VipName {
                name: "nope".into(),
            }),
        )
        .unwrap_err();
        assert_eq!(e, "no VIP named \"nope\"");
        let e = apply(
            FILE,
            &Edit::BackendWeight(BackendWeight {
                vip: "web".into(),
                address: ip("10.9.9.9"),
                weight: 1,
            }),
        )
        .unwrap_err();
        assert_eq!(e, "VIP \"web\" has no backend 10.9.9.9");
        let e = apply(
            FILE,
            &Edit::BackendAdd(BackendAdd {
                vip: "web".into(),
                address: ip("10.0.0.1"),
                weight: None,
                port: None,
            }),
        )
        .unwrap_err();
        assert_eq!(e, "VIP \"web\" already has backend 10.0.0.1");
    }

    #[test]
    fn list_prefixes_are_added_and_removed_with_the_file_kept() {
        let entry = |list, prefix: &str, vip: Option<&str>| AccessEntry {
            list,
            prefix: prefix.parse().unwrap(),
            vip: vip.map(str::to_owned),
        };
        use crate::config::List::{Allow, Deny};
        let out = apply(FILE, &Edit::AccessAdd(entry(Deny, "203.0.113.0/24", None))).unwrap();
        let out = apply(&out, &Edit::AccessAdd(entry(Deny, "2001:db8::/32", None))).unwrap();
        let out = apply(
            &out,
            &Edit::AccessAdd(entry(Allow, "198.51.100.0/24", Some("web"))),
        )
        .unwrap();
        assert!(
            out.starts_with(
                "# Production balancer.\n[datapath]\ninterfaces = [\"eth0\"]   # uplink"
            ),
            "{out}"
        );
        assert!(out.contains("address = \"10.0.0.1\"   # rack 1"), "{out}");
        assert!(
            out.contains("[access]\ndeny = [\"203.0.113.0/24\", \"2001:db8::/32\"]"),
            "{out}"
        );
        assert!(
            out.contains("protocol = \"tcp\"\nallow = [\"198.51.100.0/24\"]"),
            "{out}"
        );
        let config = crate::config::parse(&out, "t").unwrap();
        assert_eq!(config.access.deny.len(), 2);
        assert_eq!(config.vips[0].get_ref().allow.len(), 1);

        let out = apply(
            &out,
            &Edit::AccessRemove(entry(Deny, "203.0.113.0/24", None)),
        )
        .unwrap();
        assert!(out.contains("deny = [\"2001:db8::/32\"]"), "{out}");
        for (edit, error) in [
            (
                Edit::AccessAdd(entry(Deny, "2001:db8::/32", None)),
                "[access]'s deny list already has 2001:db8::/32",
            ),
            (
                Edit::AccessRemove(entry(Deny, "203.0.113.0/24", None)),
                "[access]'s deny list has no 203.0.113.0/24",
            ),
            (
                Edit::AccessRemove(entry(Allow, "10.0.0.0/8", Some("web"))),
                "VIP \"web\"'s allow list has no 10.0.0.0/8",
            ),
            (
                Edit::AccessAdd(entry(Allow, "10.0.0.0/8", Some("nope"))),
                "no VIP named \"nope\"",
            ),
        ] {
            assert_eq!(apply(&out, &edit), Err(error.to_owned()));
        }
    }

    #[test]
    fn an_exempt_prefix_goes_to_the_vip_beside_its_limits_table() {
        let limited = FILE.replace(
            "[[vip.backend]]",
            "[vip.limits]\nnew_flows = 10\n\n[[vip.backend]]",
        );
        let exempt = AccessEntry {
            list: crate::config::List::Exempt,
            prefix: "198.51.100.0/24".parse().unwrap(),
            vip: Some("web".into()),
        };
        let out = apply(&limited, &Edit::AccessAdd(exempt.clone())).unwrap();
        assert!(
            out.contains(
                "protocol = \"tcp\"\nexempt = [\"198.51.100.0/24\"]\n\n[vip.limits]\nnew_flows = 10"
            ),
            "{out}"
        );
        let config = crate::config::parse(&out, "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.vips[0].get_ref().exempt.len(), 1);
        let global = AccessEntry {
            vip: None,
            ..exempt
        };
        let out = apply(&out, &Edit::AccessAdd(global)).unwrap();
        assert!(
            out.contains("[access]\nexempt = [\"198.51.100.0/24\"]"),
            "{out}"
        );
    }
}
