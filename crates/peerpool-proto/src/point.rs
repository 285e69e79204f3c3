//! A point: an IP address and a port, the address of a (possible) peer.
//!
//! Text form (WIRE.md §7, `P2p_point.Id`): `a.b.c.d:port` for IPv4 and IPv4-mapped IPv6
//! addresses, `[v6]:port` otherwise. On the wire a point is a `string` of at most 47 bytes
//! (51 with its `u30` prefix). Parsing accepts and drops an optional `#peer_id` suffix, as
//! octez does; [`parse_point_with_peer_id`] keeps it.

use crate::encoding::{put_dynamic, DecodeError, Reader};
use crate::identity::PeerId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Longest point text on the wire, bytes (`check_size 51` minus the 4-byte prefix).
pub const MAX_POINT_TEXT_LEN: usize = 47;

/// An IP address and port. IPv4-mapped IPv6 addresses are stored as IPv4, so the two
/// spellings of one address compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Point(SocketAddr);

impl Point {
    /// The point for `addr`, normalising IPv4-mapped IPv6 to IPv4.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        Point(SocketAddr::new(ip, port))
    }

    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The socket address to dial.
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }

    /// Appends the wire form: `u30` length then the text (WIRE.md §7).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_dynamic(out, self.to_string().as_bytes());
    }

    /// Reads one point from `r`; text longer than 47 bytes or that does not parse is an error.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let text = r.string("point", MAX_POINT_TEXT_LEN)?;
        text.parse()
            .map_err(|_| DecodeError::InvalidPoint(text.to_owned()))
    }
}

impl From<SocketAddr> for Point {
    fn from(addr: SocketAddr) -> Self {
        Point::new(addr.ip(), addr.port())
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.ip() {
            IpAddr::V4(v4) => write!(f, "{v4}:{}", self.0.port()),
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.0.port()),
        }
    }
}

impl fmt::Debug for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Point({self})")
    }
}

/// Why a point's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid point {0:?}: expected a.b.c.d:port or [ipv6]:port")]
pub struct PointParseError(pub String);

/// Parses `a.b.c.d:port`, `[v6]:port`, or either followed by `#peer_id`, keeping the peer id.
pub fn parse_point_with_peer_id(s: &str) -> Result<(Point, Option<PeerId>), PointParseError> {
    let err = || PointParseError(s.to_owned());
    let (addr, peer) = match s.split_once('#') {
        Some((addr, peer)) => (addr, Some(peer.parse::<PeerId>().map_err(|_| err())?)),
        None => (s, None),
    };
    let point = if let Some(rest) = addr.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:").ok_or_else(err)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| err())?;
        Point::new(IpAddr::V6(ip), port.parse().map_err(|_| err())?)
    } else {
        let (ip, port) = addr.split_once(':').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        Point::new(IpAddr::V4(ip), port.parse().map_err(|_| err())?)
    };
    Ok((point, peer))
}

impl FromStr for Point {
    type Err = PointParseError;

    /// Parses the text form; a `#peer_id` suffix is checked and dropped.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_point_with_peer_id(s).map(|(p, _)| p)
    }
}

impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Point {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for s in [
            "127.0.0.1:9732",
            "[::1]:9732",
            "[fe80::e828:209d:20e:c0ae]:375",
            "0.0.0.0:0",
        ] {
            let p: Point = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn ipv4_mapped_is_shown_and_compared_as_ipv4() {
        let p: Point = "[::ffff:10.0.0.1]:1".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.1:1");
        assert_eq!(p, "10.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn peer_id_suffix_is_kept_or_dropped() {
        let (p, id) =
            parse_point_with_peer_id("127.0.0.1:9732#idsg2wkkDDv2cbEMK4zH49fjgyn7XT").unwrap();
        assert_eq!(p.port(), 9732);
        assert_eq!(id.unwrap().to_string(), "idsg2wkkDDv2cbEMK4zH49fjgyn7XT");
        assert!("127.0.0.1:9732#idbad".parse::<Point>().is_err());
    }

    #[test]
    fn bad_texts_are_refused() {
        for s in ["", "1.2.3.4", "1.2.3.4:", "1.2.3.4:70000", "::1:80", "[::1]", "host:80", "[::1]:x"] {
            assert!(s.parse::<Point>().is_err(), "{s}");
        }
    }

    #[test]
    fn wire_decode_rejects_over_long_text() {
        let mut buf = Vec::new();
        put_dynamic(&mut buf, &[b'x'; 48]);
        assert!(matches!(
            Point::decode(&mut Reader::new(&buf)),
            Err(DecodeError::TooLong { len: 48, .. })
        ));
    }
}
