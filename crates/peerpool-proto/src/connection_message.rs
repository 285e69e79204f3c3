//! The cleartext connection message each side sends first (WIRE.md §2), the connection
//! metadata exchanged next (WIRE.md §4), and the Ack / Nack answer (WIRE.md §5).

use crate::crypto::{PublicKey, KEY_LEN, NONCE_LEN};
use crate::encoding::{put_bool, put_dynamic, put_u30, DecodeError, Reader};
use crate::identity::{Stamp, STAMP_LEN};
use crate::point::Point;

/// Longest chain name accepted, bytes. octez sets no bound; the whole message must fit
/// the 2-byte frame length, so a longer one cannot be sent anyway.
pub const MAX_CHAIN_NAME_LEN: usize = u16::MAX as usize - 90;
/// Longest Nack point list (WIRE.md §5: `list ~max_length:100`).
pub const MAX_NACK_POINTS: usize = 100;

/// The version a node announces: chain name and the highest distributed-db and p2p
/// versions it speaks (WIRE.md §2, §8).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkVersion {
    /// Chain name, compared byte for byte (`TEZOS_MAINNET`, `TEZOS` for the sandbox).
    pub chain_name: String,
    /// Distributed-db version.
    pub distributed_db_version: u16,
    /// P2P version; 1 and above allows `Nack` with a point list.
    pub p2p_version: u16,
}

/// The cleartext first message (WIRE.md §2): `u16 len ‖ port ‖ pk ‖ stamp ‖ nonce ‖ version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionMessage {
    /// The sender's listening port, `None` when it does not listen (0 on the wire).
    pub port: Option<u16>,
    /// The sender's X25519 public key.
    pub public_key: PublicKey,
    /// The sender's proof-of-work stamp.
    pub proof_of_work_stamp: Stamp,
    /// Fresh random bytes, used only as entropy for the nonces.
    pub message_nonce: [u8; NONCE_LEN],
    /// The announced version.
    pub version: NetworkVersion,
}

impl ConnectionMessage {
    /// The framed message: 2-byte big-endian body length, then the body.
    ///
    /// Errors with [`DecodeError::TooLong`] if the body would not fit 65535 bytes.
    pub fn encode_frame(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = vec![0, 0];
        out.extend_from_slice(&self.port.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.public_key.0);
        out.extend_from_slice(&self.proof_of_work_stamp);
        out.extend_from_slice(&self.message_nonce);
        put_dynamic(&mut out, self.version.chain_name.as_bytes());
        out.extend_from_slice(&self.version.distributed_db_version.to_be_bytes());
        out.extend_from_slice(&self.version.p2p_version.to_be_bytes());
        let body = out.len() - 2;
        if body > u16::MAX as usize {
            return Err(DecodeError::TooLong {
                what: "connection message",
                len: body,
                max: u16::MAX as usize,
            });
        }
        out[..2].copy_from_slice(&(body as u16).to_be_bytes());
        Ok(out)
    }

    /// Decodes a body (without the 2-byte length); it must be consumed exactly.
    pub fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let port = r.u16("port")?;
        let public_key = PublicKey(r.array::<KEY_LEN>("public key")?);
        let proof_of_work_stamp = r.array::<STAMP_LEN>("proof of work stamp")?;
        let message_nonce = r.array::<NONCE_LEN>("message nonce")?;
        let chain_name = r.string("chain name", MAX_CHAIN_NAME_LEN)?.to_owned();
        let distributed_db_version = r.u16("distributed db version")?;
        let p2p_version = r.u16("p2p version")?;
        r.finish()?;
        Ok(ConnectionMessage {
            port: (port != 0).then_some(port),
            public_key,
            proof_of_work_stamp,
            message_nonce,
            version: NetworkVersion {
                chain_name,
                distributed_db_version,
                p2p_version,
            },
        })
    }
}

/// Connection metadata of the Tezos shell (WIRE.md §4): two booleans, 2 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionMetadata {
    /// The peer asks not to receive mempool traffic.
    pub disable_mempool: bool,
    /// The peer is a private node: its point must not be advertised.
    pub private_node: bool,
}

impl ConnectionMetadata {
    /// The 2-byte plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2);
        put_bool(&mut out, self.disable_mempool);
        put_bool(&mut out, self.private_node);
        out
    }

    /// Decodes exactly 2 bytes; any non-zero byte is true.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let disable_mempool = r.bool("disable_mempool")?;
        let private_node = r.bool("private_node")?;
        r.finish()?;
        Ok(ConnectionMetadata {
            disable_mempool,
            private_node,
        })
    }
}

/// Why a node refuses a connection (`P2p_rejection`, WIRE.md §5): an `int16` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackMotive {
    /// 0: no motive given (also how `Nack_v_0` is reported).
    NoMotive,
    /// 1: the node has no free slot.
    TooManyConnections,
    /// 2: the chain names differ.
    UnknownChainName,
    /// 3: no common p2p version.
    DeprecatedP2pVersion,
    /// 4: no common distributed-db version.
    DeprecatedDistributedDbVersion,
    /// 5: the peer or point is already connected.
    AlreadyConnected,
    /// Any other code.
    Unknown(i16),
}

impl NackMotive {
    /// The wire code.
    pub fn code(self) -> i16 {
        match self {
            NackMotive::NoMotive => 0,
            NackMotive::TooManyConnections => 1,
            NackMotive::UnknownChainName => 2,
            NackMotive::DeprecatedP2pVersion => 3,
            NackMotive::DeprecatedDistributedDbVersion => 4,
            NackMotive::AlreadyConnected => 5,
            NackMotive::Unknown(c) => c,
        }
    }

    /// The motive for a wire code.
    pub fn from_code(code: i16) -> Self {
        match code {
            0 => NackMotive::NoMotive,
            1 => NackMotive::TooManyConnections,
            2 => NackMotive::UnknownChainName,
            3 => NackMotive::DeprecatedP2pVersion,
            4 => NackMotive::DeprecatedDistributedDbVersion,
            5 => NackMotive::AlreadyConnected,
            c => NackMotive::Unknown(c),
        }
    }
}

impl std::fmt::Display for NackMotive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NackMotive::NoMotive => f.write_str("no motive"),
            NackMotive::TooManyConnections => f.write_str("too many connections"),
            NackMotive::UnknownChainName => f.write_str("unknown chain name"),
            NackMotive::DeprecatedP2pVersion => f.write_str("deprecated p2p version"),
            NackMotive::DeprecatedDistributedDbVersion => {
                f.write_str("deprecated distributed db version")
            }
            NackMotive::AlreadyConnected => f.write_str("already connected"),
            NackMotive::Unknown(c) => write!(f, "unknown motive {c}"),
        }
    }
}

/// The last handshake message (WIRE.md §5): a `uint8`-tagged union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckMessage {
    /// `0x00`: accepted.
    Ack,
    /// `0x01`: refused, with a motive and up to 100 points to try instead.
    Nack {
        /// Why.
        motive: NackMotive,
        /// Referral points.
        points: Vec<Point>,
    },
    /// `0xff`: refused, old form without motive (peers announcing p2p version 0).
    NackV0,
}

impl AckMessage {
    /// The plaintext bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            AckMessage::Ack => vec![0x00],
            AckMessage::NackV0 => vec![0xff],
            AckMessage::Nack { motive, points } => {
                let mut out = vec![0x01];
                out.extend_from_slice(&motive.code().to_be_bytes());
                let mut list = Vec::new();
                for p in points.iter().take(MAX_NACK_POINTS) {
                    p.encode(&mut list);
                }
                put_u30(&mut out, list.len());
                out.extend_from_slice(&list);
                out
            }
        }
    }

    /// Decodes one Ack message that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let msg = match r.u8("ack tag")? {
            0x00 => AckMessage::Ack,
            0xff => AckMessage::NackV0,
            0x01 => {
                let motive = NackMotive::from_code(r.i16("nack motive")?);
                let list = r.dynamic("nack point list", MAX_NACK_POINTS * 51)?;
                let mut lr = Reader::new(list);
                let mut points = Vec::new();
                while !lr.is_empty() {
                    if points.len() == MAX_NACK_POINTS {
                        return Err(DecodeError::TooLong {
                            what: "nack point list",
                            len: points.len() + 1,
                            max: MAX_NACK_POINTS,
                        });
                    }
                    points.push(Point::decode(&mut lr)?);
                }
                AckMessage::Nack { motive, points }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "ack",
                    tag: tag as u16,
                })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// The versions a node speaks: its chain name and the sets of distributed-db and p2p
/// versions it supports (octez: ddb {0, 1, 2}, p2p {0, 1}).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedVersions {
    /// Chain name.
    pub chain_name: String,
    /// Supported distributed-db versions.
    pub distributed_db_versions: Vec<u16>,
    /// Supported p2p versions.
    pub p2p_versions: Vec<u16>,
}

impl SupportedVersions {
    /// What current octez supports, for `chain_name`.
    pub fn octez(chain_name: impl Into<String>) -> Self {
        SupportedVersions {
            chain_name: chain_name.into(),
            distributed_db_versions: vec![0, 1, 2],
            p2p_versions: vec![0, 1],
        }
    }

    /// The version announced in the connection message: chain name and the highest of each.
    pub fn announced(&self) -> NetworkVersion {
        NetworkVersion {
            chain_name: self.chain_name.clone(),
            distributed_db_version: self
                .distributed_db_versions
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
            p2p_version: self.p2p_versions.iter().copied().max().unwrap_or(0),
        }
    }

    /// Version selection (WIRE.md §8, BEHAVIOUR.md §7.2): equal chain names, then for each
    /// of ddb and p2p: our best if it is at most the remote's, else the remote's if we
    /// support it, else a Nack motive.
    pub fn select(&self, remote: &NetworkVersion) -> Result<NetworkVersion, NackMotive> {
        if self.chain_name != remote.chain_name {
            return Err(NackMotive::UnknownChainName);
        }
        fn pick(local: &[u16], remote: u16) -> Option<u16> {
            let best = local.iter().copied().max()?;
            if best <= remote {
                Some(best)
            } else if local.contains(&remote) {
                Some(remote)
            } else {
                None
            }
        }
        let distributed_db_version =
            pick(&self.distributed_db_versions, remote.distributed_db_version)
                .ok_or(NackMotive::DeprecatedDistributedDbVersion)?;
        let p2p_version =
            pick(&self.p2p_versions, remote.p2p_version).ok_or(NackMotive::DeprecatedP2pVersion)?;
        Ok(NetworkVersion {
            chain_name: self.chain_name.clone(),
            distributed_db_version,
            p2p_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(chain: &str, ddb: u16, p2p: u16) -> NetworkVersion {
        NetworkVersion {
            chain_name: chain.into(),
            distributed_db_version: ddb,
            p2p_version: p2p,
        }
    }

    #[test]
    fn version_selection_follows_the_rules() {
        let ours = SupportedVersions::octez("TEZOS");
        assert_eq!(ours.announced(), v("TEZOS", 2, 1));
        assert_eq!(ours.select(&v("TEZOS", 2, 1)), Ok(v("TEZOS", 2, 1)));
        assert_eq!(ours.select(&v("TEZOS", 7, 9)), Ok(v("TEZOS", 2, 1)));
        assert_eq!(ours.select(&v("TEZOS", 0, 0)), Ok(v("TEZOS", 0, 0)));
        assert_eq!(
            ours.select(&v("OTHER", 2, 1)),
            Err(NackMotive::UnknownChainName)
        );
        let newer = SupportedVersions {
            chain_name: "TEZOS".into(),
            distributed_db_versions: vec![3],
            p2p_versions: vec![2],
        };
        assert_eq!(
            newer.select(&v("TEZOS", 2, 2)),
            Err(NackMotive::DeprecatedDistributedDbVersion)
        );
        assert_eq!(
            newer.select(&v("TEZOS", 3, 1)),
            Err(NackMotive::DeprecatedP2pVersion)
        );
    }

    #[test]
    fn motive_codes_round_trip() {
        for c in -3..10 {
            assert_eq!(NackMotive::from_code(c).code(), c);
        }
    }

    #[test]
    fn ack_decode_rejects_trailing_bytes_and_unknown_tags() {
        assert_eq!(
            AckMessage::decode(&[0x00, 0x00]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            AckMessage::decode(&[0x02]),
            Err(DecodeError::UnknownTag { tag: 2, .. })
        ));
        assert!(AckMessage::decode(&[]).is_err());
    }
}
