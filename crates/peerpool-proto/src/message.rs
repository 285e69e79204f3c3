//! P2P messages (`P2p_message`, WIRE.md §7): the envelope `u30 N ‖ u16 tag ‖ body(N − 2)`,
//! the control messages, and the application message the embedding node chooses.

use crate::encoding::{begin_dynamic, end_dynamic, DecodeError, Reader};
use crate::identity::PeerId;
use crate::point::Point;

/// Largest envelope body `N` octez accepts, bytes (`check_size 100 MiB`).
pub const MAX_ENVELOPE_LEN: usize = 100 * 1024 * 1024;
/// Most points in one Advertise (`Variable.list ~max_length:100`).
pub const MAX_ADVERTISE_POINTS: usize = 100;

const TAG_DISCONNECT: u16 = 0x0001;
const TAG_BOOTSTRAP: u16 = 0x0002;
const TAG_ADVERTISE: u16 = 0x0003;
const TAG_SWAP_REQUEST: u16 = 0x0004;
const TAG_SWAP_ACK: u16 = 0x0005;

/// Whether `tag` belongs to a control message (Disconnect … Swap_ack).
pub fn is_control_tag(tag: u16) -> bool {
    (TAG_DISCONNECT..=TAG_SWAP_ACK).contains(&tag)
}

/// The application's message type: its own tags (other than 0x0001–0x0005), encoding and
/// size bound. octez's shell uses the distributed-db messages (tags 0x10 …, WIRE.md §7).
pub trait AppMessage: Sized + Send + 'static {
    /// Largest encoded size (tag + body), bytes; larger incoming messages are refused
    /// before they are buffered whole.
    const MAX_SIZE: usize;
    /// Appends `u16 tag ‖ body`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes a body for `tag`. Errors are the peer's fault (the connection closes).
    fn decode(tag: u16, body: &[u8]) -> Result<Self, DecodeError>;
}

/// An application message kept as raw bytes: any non-control tag and its body. The
/// `peerpool` binary uses it, so it relays whatever a Tezos node sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The union tag.
    pub tag: u16,
    /// The body, undecoded.
    pub body: Vec<u8>,
}

/// Largest [`RawMessage`] accepted, bytes (tag + body): 8 MiB, far below the envelope's
/// 100 MiB (octez's bound). An application whose messages are larger defines its own
/// message type with its own `MAX_SIZE`.
pub const RAW_MESSAGE_MAX_SIZE: usize = 8 * 1024 * 1024;

impl AppMessage for RawMessage {
    const MAX_SIZE: usize = RAW_MESSAGE_MAX_SIZE;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag.to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    fn decode(tag: u16, body: &[u8]) -> Result<Self, DecodeError> {
        Ok(RawMessage {
            tag,
            body: body.to_vec(),
        })
    }
}

/// A message after the handshake (WIRE.md §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum P2pMessage<M> {
    /// `0x0001`: the sender closes the connection.
    Disconnect,
    /// `0x0002`: asks for known points.
    Bootstrap,
    /// `0x0003`: up to 100 known points.
    Advertise(Vec<Point>),
    /// `0x0004`: proposes a swap: connect to this point / peer.
    SwapRequest(Point, PeerId),
    /// `0x0005`: accepts a swap, proposing this point / peer.
    SwapAck(Point, PeerId),
    /// Any other tag: the application's message.
    Message(M),
}

impl<M: AppMessage> P2pMessage<M> {
    /// The largest envelope body (`N`) a decoder should accept for this message type.
    pub fn max_len() -> usize {
        M::MAX_SIZE.clamp(2 + 4 + 51 * MAX_ADVERTISE_POINTS, MAX_ENVELOPE_LEN)
    }

    /// Appends the whole envelope, `u30 N ‖ u16 tag ‖ body`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = begin_dynamic(out);
        match self {
            P2pMessage::Disconnect => out.extend_from_slice(&TAG_DISCONNECT.to_be_bytes()),
            P2pMessage::Bootstrap => out.extend_from_slice(&TAG_BOOTSTRAP.to_be_bytes()),
            P2pMessage::Advertise(points) => {
                out.extend_from_slice(&TAG_ADVERTISE.to_be_bytes());
                for p in points.iter().take(MAX_ADVERTISE_POINTS) {
                    p.encode(out);
                }
            }
            P2pMessage::SwapRequest(point, peer) | P2pMessage::SwapAck(point, peer) => {
                let tag = if matches!(self, P2pMessage::SwapRequest(..)) {
                    TAG_SWAP_REQUEST
                } else {
                    TAG_SWAP_ACK
                };
                out.extend_from_slice(&tag.to_be_bytes());
                point.encode(out);
                out.extend_from_slice(&peer.0);
            }
            P2pMessage::Message(m) => m.encode(out),
        }
        end_dynamic(out, at);
    }

    /// The envelope as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes an envelope body (`u16 tag ‖ body`, without the `u30`), which must be
    /// consumed exactly.
    pub fn decode_body(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let tag = r.u16("message tag")?;
        let msg = match tag {
            TAG_DISCONNECT => P2pMessage::Disconnect,
            TAG_BOOTSTRAP => P2pMessage::Bootstrap,
            TAG_ADVERTISE => {
                let mut points = Vec::new();
                while !r.is_empty() {
                    if points.len() == MAX_ADVERTISE_POINTS {
                        return Err(DecodeError::TooLong {
                            what: "advertise point list",
                            len: points.len() + 1,
                            max: MAX_ADVERTISE_POINTS,
                        });
                    }
                    points.push(Point::decode(&mut r)?);
                }
                P2pMessage::Advertise(points)
            }
            TAG_SWAP_REQUEST | TAG_SWAP_ACK => {
                let point = Point::decode(&mut r)?;
                let peer = PeerId(r.array("swap peer id")?);
                if tag == TAG_SWAP_REQUEST {
                    P2pMessage::SwapRequest(point, peer)
                } else {
                    P2pMessage::SwapAck(point, peer)
                }
            }
            _ => return Ok(P2pMessage::Message(M::decode(tag, r.rest())?)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Decodes a whole envelope (`u30 N ‖ …`), which must be exactly `4 + N` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let body = r.dynamic("message", Self::max_len())?;
        r.finish()?;
        Self::decode_body(body)
    }

    /// A short name of the message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            P2pMessage::Disconnect => "disconnect",
            P2pMessage::Bootstrap => "bootstrap",
            P2pMessage::Advertise(_) => "advertise",
            P2pMessage::SwapRequest(..) => "swap_request",
            P2pMessage::SwapAck(..) => "swap_ack",
            P2pMessage::Message(_) => "message",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Msg = P2pMessage<RawMessage>;

    #[test]
    fn app_message_round_trips() {
        let m = Msg::Message(RawMessage {
            tag: 0x10,
            body: vec![1, 2, 3],
        });
        let bytes = m.to_bytes();
        assert_eq!(bytes, [0, 0, 0, 5, 0, 0x10, 1, 2, 3]);
        assert_eq!(Msg::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn advertise_of_more_than_100_points_is_refused() {
        let mut body = TAG_ADVERTISE.to_be_bytes().to_vec();
        let p: Point = "1.2.3.4:5".parse().unwrap();
        for _ in 0..101 {
            p.encode(&mut body);
        }
        assert!(matches!(
            Msg::decode_body(&body),
            Err(DecodeError::TooLong { len: 101, .. })
        ));
    }

    #[test]
    fn truncated_swap_is_refused() {
        let mut body = TAG_SWAP_ACK.to_be_bytes().to_vec();
        "1.2.3.4:5".parse::<Point>().unwrap().encode(&mut body);
        body.extend_from_slice(&[0; 15]);
        assert!(matches!(
            Msg::decode_body(&body),
            Err(DecodeError::UnexpectedEnd { .. })
        ));
    }
}
