//! Netgroups: the address blocks an attacker can fill cheaply, as Bitcoin Core groups them
//! against eclipse attacks (ANCHORS.md §5): an IPv4 /16 or an IPv6 /32. An IPv4-mapped
//! IPv6 address is its IPv4 address.

use std::fmt;
use std::net::IpAddr;

/// The netgroup of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Netgroup {
    /// The first two bytes of an IPv4 address (/16).
    V4([u8; 2]),
    /// The first four bytes of an IPv6 address (/32).
    V6([u8; 4]),
}

impl Netgroup {
    /// The netgroup of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Netgroup::V4([o[0], o[1]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    let o = v4.octets();
                    Netgroup::V4([o[0], o[1]])
                }
                None => {
                    let o = v6.octets();
                    Netgroup::V6([o[0], o[1], o[2], o[3]])
                }
            },
        }
    }
}

impl fmt::Display for Netgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netgroup::V4([a, b]) => write!(f, "{a}.{b}.0.0/16"),
            Netgroup::V6([a, b, c, d]) => write!(
                f,
                "{:x}:{:x}::/32",
                u16::from_be_bytes([*a, *b]),
                u16::from_be_bytes([*c, *d])
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ng(s: &str) -> Netgroup {
        Netgroup::of(s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    #[test]
    fn v4_groups_by_16_v6_by_32_and_mapped_v4_is_v4() {
        assert_eq!(ng("10.1.2.3"), ng("10.1.200.7"));
        assert_ne!(ng("10.1.2.3"), ng("10.2.2.3"));
        assert_eq!(ng("::ffff:10.1.9.9"), ng("10.1.0.1"));
        assert_eq!(ng("2001:db8:1::1"), ng("2001:db8:ffff::2"));
        assert_ne!(ng("2001:db8::1"), ng("2001:db9::1"));
        assert_eq!(ng("10.1.2.3").to_string(), "10.1.0.0/16");
        assert_eq!(ng("2001:db8::1").to_string(), "2001:db8::/32");
    }
}
