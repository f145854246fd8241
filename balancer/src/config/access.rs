//! Allow, deny and exempt lists in the configuration: prefixes of client
//! addresses, in `[access]` for every VIP and in a `[[vip]]` for that VIP.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

/// `[access]`, and the `deny`, `allow` and `exempt` keys of a `[[vip]]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Clients whose packets are dropped.
    pub deny: Vec<Spanned<Prefix>>,
    /// When not empty, only these clients are admitted (a deny still
    /// wins).
    pub allow: Vec<Spanned<Prefix>>,
    /// Clients the per-source limits (`[vip.limits]`) never apply to.
    pub exempt: Vec<Spanned<Prefix>>,
}

impl AccessConfig {
    /// The prefixes of `list`.
    pub fn list(&self, list: List) -> impl Iterator<Item = Prefix> + '_ {
        prefixes([&self.deny, &self.allow, &self.exempt], list)
    }

    /// Whether the allow and deny lists are both empty (the exempt list
    /// drops nothing).
    pub fn admits_all(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }
}

/// The prefixes of `list`, of a table's `deny`, `allow` and `exempt`
/// keys.
pub(super) fn prefixes<'a>(
    [deny, allow, exempt]: [&'a [Spanned<Prefix>]; 3],
    list: List,
) -> impl Iterator<Item = Prefix> + 'a {
    let entries = match list {
        List::Deny => deny,
        List::Allow => allow,
        List::Exempt => exempt,
    };
    entries.iter().map(|p| *p.get_ref())
}

/// Which list.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum List {
    Deny,
    Allow,
    /// Clients the per-source limits never apply to.
    Exempt,
}

impl List {
    /// Every list, in the order listings show them.
    pub const ALL: [List; 3] = [List::Deny, List::Allow, List::Exempt];

    /// The list's key in the file, and its name in the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            List::Deny => "deny",
            List::Allow => "allow",
            List::Exempt => "exempt",
        }
    }
}

/// A prefix of client addresses, IPv4 or IPv6, written `ADDRESS/LENGTH`
/// (or a bare address for one host), without host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix(IpNet);

impl Prefix {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// The prefix length, in bits of its family.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether the prefix is IPv4.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Whether every address of `other` is in this prefix.
    pub fn covers(&self, other: &Prefix) -> bool {
        self.0.contains(&other.0)
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Prefix, String> {
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(addr) => IpNet::from(addr),
                Err(_) => {
                    return Err(format!(
                        "{text:?} is not a prefix: write ADDRESS/LENGTH, such as \"203.0.113.0/24\" or \"2001:db8::/32\", or one address"
                    ));
                }
            },
        };
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has bits set past its length: write {}",
                net.trunc()
            ));
        }
        Ok(Prefix(net))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Prefix, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_without_host_bits() {
        for (text, want) in [
            ("203.0.113.0/24", Ok("203.0.113.0/24")),
            ("203.0.113.7", Ok("203.0.113.7/32")),
            ("2001:db8::/32", Ok("2001:db8::/32")),
            ("2001:db8::1", Ok("2001:db8::1/128")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            (
                "203.0.113.7/24",
                Err("\"203.0.113.7/24\" has bits set past its length: write 203.0.113.0/24"),
            ),
            ("203.0.113.0/33", Err("not a prefix")),
            ("example.com", Err("not a prefix")),
        ] {
            let got = text.parse::<Prefix>().map(|p| p.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_prefix_covers_itself_and_what_lies_inside_it() {
        let p = |t: &str| t.parse::<Prefix>().unwrap();
        assert!(p("10.0.0.0/8").covers(&p("10.1.0.0/16")));
        assert!(p("10.0.0.0/8").covers(&p("10.0.0.0/8")));
        assert!(!p("10.1.0.0/16").covers(&p("10.0.0.0/8")));
        assert!(!p("10.0.0.0/8").covers(&p("2001:db8::/32")));
    }
}
