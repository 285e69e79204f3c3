//! Local discovery, the pure part (BEHAVIOUR.md §8, octez `P2p_discovery`): the UDP
//! announcement a node sends on its local network, and the sender's backoff.
//!
//! - [`DiscoveryMessage`]: the 28-byte announcement, `"DISCOMAGIC"` ‖ peer id ‖ port.
//! - [`SenderSchedule`]: the delays between announcements, as a sans-IO state machine
//!   (it never reads a clock; the driver sleeps for the delays it returns).
//!
//! The sockets and tasks are the runtime's (`peerpool::discovery`).

use crate::identity::PeerId;
use std::time::Duration;
use thiserror::Error;

/// The 10 ASCII bytes every announcement starts with (BEHAVIOUR.md §8).
pub const DISCOVERY_MAGIC: [u8; 10] = *b"DISCOMAGIC";

/// Length of an announcement, bytes: 10 of magic, 16 of peer id, 2 of port.
pub const DISCOVERY_MESSAGE_LEN: usize = 28;

/// The default discovery UDP port (octez's `p2p.discovery-port` default, BEHAVIOUR.md §8).
pub const DEFAULT_DISCOVERY_PORT: u16 = 10732;

/// The default delay before the first announcement: 0.1 s (BEHAVIOUR.md §8).
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);

/// The default number of announcements whose delay doubles: 10, so the delay grows
/// 0.1 s, 0.2 s, … 51.2 s and then stays at 51.2 s (BEHAVIOUR.md §8).
pub const DEFAULT_SENDS_BEFORE_CAP: u32 = 10;

/// A local-discovery announcement: "a node with this peer id listens for TCP
/// connections on this port, at the address this datagram came from" (BEHAVIOUR.md §8).
///
/// Wire layout, exactly [`DISCOVERY_MESSAGE_LEN`] = 28 bytes:
///
/// | bytes  | content                                        |
/// |--------|------------------------------------------------|
/// | 0..10  | [`DISCOVERY_MAGIC`], `"DISCOMAGIC"`            |
/// | 10..26 | the sender's peer id (16 raw bytes)            |
/// | 26..28 | the sender's TCP listening port, big-endian    |
///
/// **Quirk fixed:** octez reads and writes the port as a *signed* 16-bit integer, so a
/// port above 32767 cannot be announced; here it is unsigned. The bytes are the same for
/// every port up to 32767.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiscoveryMessage {
    /// The announcing node's peer id.
    pub peer_id: PeerId,
    /// The announcing node's TCP listening port.
    pub port: u16,
}

/// Why a datagram is not a discovery announcement. A receiver ignores such a datagram
/// (BEHAVIOUR.md §8); it is not a fault of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DiscoveryError {
    /// The datagram is not exactly [`DISCOVERY_MESSAGE_LEN`] (28) bytes long.
    #[error("discovery datagram of {len} bytes, expected {DISCOVERY_MESSAGE_LEN}")]
    WrongLength {
        /// The datagram's length, bytes.
        len: usize,
    },
    /// The first 10 bytes are not [`DISCOVERY_MAGIC`].
    #[error("discovery datagram without the DISCOMAGIC prefix")]
    WrongMagic,
}

impl DiscoveryMessage {
    /// The 28-byte wire form (layout in the [type docs](DiscoveryMessage)).
    pub fn encode(&self) -> [u8; DISCOVERY_MESSAGE_LEN] {
        let mut out = [0u8; DISCOVERY_MESSAGE_LEN];
        out[..10].copy_from_slice(&DISCOVERY_MAGIC);
        out[10..26].copy_from_slice(&self.peer_id.0);
        out[26..].copy_from_slice(&self.port.to_be_bytes());
        out
    }

    /// Reads one announcement from a whole datagram.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::WrongLength`] unless `datagram` is exactly 28 bytes (a longer one
    /// is refused, not truncated); [`DiscoveryError::WrongMagic`] when it does not start
    /// with `"DISCOMAGIC"`. Any peer id and any port (0 included) are accepted here; what
    /// to do with them is the receiver's choice.
    pub fn decode(datagram: &[u8]) -> Result<Self, DiscoveryError> {
        let bytes: &[u8; DISCOVERY_MESSAGE_LEN] =
            datagram
                .try_into()
                .map_err(|_| DiscoveryError::WrongLength {
                    len: datagram.len(),
                })?;
        let (magic, rest) = bytes.split_at(DISCOVERY_MAGIC.len());
        if magic != DISCOVERY_MAGIC {
            return Err(DiscoveryError::WrongMagic);
        }
        let (id, port) = rest.split_at(16);
        let mut peer_id = [0u8; 16];
        peer_id.copy_from_slice(id);
        let mut port_bytes = [0u8; 2];
        port_bytes.copy_from_slice(port);
        Ok(DiscoveryMessage {
            peer_id: PeerId(peer_id),
            port: u16::from_be_bytes(port_bytes),
        })
    }
}

/// The sender's backoff between announcements (BEHAVIOUR.md §8), sans IO: it only
/// computes delays; the driver sleeps for them and sends.
///
/// The driver calls [`next_delay`](Self::next_delay) before each send and waits that
/// long. The first delay is `initial`; it doubles after each of the first
/// `sends_before_cap` delays and then stays at `initial · 2^(sends_before_cap − 1)`.
/// With the defaults ([`SenderSchedule::default`]: 0.1 s and 10) the delays are 0.1 s,
/// 0.2 s, 0.4 s, … 51.2 s, then 51.2 s for ever.
///
/// [`wake`](Self::wake) (the maintenance wants peers now) restarts the sequence: the next
/// delay is zero (send at once), then `initial`, `2 · initial`, … again. octez restarts
/// the sequence at `initial`; sending at once instead keeps a wake prompt whatever the
/// configured initial delay (at the defaults the difference is 0.1 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderSchedule {
    initial: Duration,
    sends_before_cap: u32,
    /// The delay the next call to `next_delay` returns, unless `woken`.
    current: Duration,
    /// How many delays of the current sequence were returned (saturating).
    returned: u32,
    /// A wake is pending: the next delay is zero.
    woken: bool,
}

impl SenderSchedule {
    /// A schedule whose first delay is `initial` and which doubles it after each of the
    /// first `sends_before_cap` delays (units: `initial` is a duration; `sends_before_cap`
    /// counts sends). A `sends_before_cap` of 0 or 1 means a constant delay of `initial`.
    /// Doubling saturates at [`Duration::MAX`]; nothing here can fail.
    pub fn new(initial: Duration, sends_before_cap: u32) -> Self {
        SenderSchedule {
            initial,
            sends_before_cap,
            current: initial,
            returned: 0,
            woken: false,
        }
    }

    /// The delay to wait before the next send, and the schedule moves on by one send.
    /// Zero right after a [`wake`](Self::wake).
    pub fn next_delay(&mut self) -> Duration {
        if self.woken {
            self.woken = false;
            return Duration::ZERO;
        }
        let delay = self.current;
        self.returned = self.returned.saturating_add(1);
        if self.returned < self.sends_before_cap {
            self.current = self.current.saturating_mul(2);
        }
        delay
    }

    /// Restarts the backoff: the next delay is zero, the ones after it `initial`,
    /// `2 · initial`, … (BEHAVIOUR.md §8, the maintenance's `wakeup`). Several wakes
    /// before the next send count as one.
    pub fn wake(&mut self) {
        self.current = self.initial;
        self.returned = 0;
        self.woken = true;
    }
}

impl Default for SenderSchedule {
    /// octez's schedule: [`DEFAULT_INITIAL_DELAY`] (0.1 s), doubling for
    /// [`DEFAULT_SENDS_BEFORE_CAP`] (10) sends, so capped at 51.2 s.
    fn default() -> Self {
        SenderSchedule::new(DEFAULT_INITIAL_DELAY, DEFAULT_SENDS_BEFORE_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> PeerId {
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = byte.wrapping_add(i as u8);
        }
        PeerId(raw)
    }

    #[test]
    fn layout_is_magic_then_peer_id_then_big_endian_port() {
        let msg = DiscoveryMessage {
            peer_id: id(0xa0),
            port: 0x2a1c, // 10780
        };
        let bytes = msg.encode();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"DISCOMAGIC");
        expected.extend_from_slice(&[
            0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad,
            0xae, 0xaf,
        ]);
        expected.extend_from_slice(&[0x2a, 0x1c]);
        assert_eq!(bytes.len(), 28);
        assert_eq!(bytes.to_vec(), expected);
        assert_eq!(DiscoveryMessage::decode(&bytes), Ok(msg));
    }

    #[test]
    fn ports_above_32767_round_trip_as_unsigned() {
        for port in [32767u16, 32768, 40000, 65535] {
            let msg = DiscoveryMessage {
                peer_id: id(1),
                port,
            };
            let bytes = msg.encode();
            assert_eq!(bytes[26..], port.to_be_bytes());
            assert_eq!(DiscoveryMessage::decode(&bytes), Ok(msg));
        }
        // 0xffff is port 65535 here, not -1 as octez would read it.
        let mut bytes = DiscoveryMessage {
            peer_id: id(1),
            port: 0,
        }
        .encode();
        bytes[26] = 0xff;
        bytes[27] = 0xff;
        assert_eq!(
            DiscoveryMessage::decode(&bytes).map(|m| m.port),
            Ok(u16::MAX)
        );
    }

    #[test]
    fn wrong_lengths_are_refused_not_truncated_or_padded() {
        let good = DiscoveryMessage {
            peer_id: id(7),
            port: 9732,
        }
        .encode();
        assert_eq!(
            DiscoveryMessage::decode(&[]),
            Err(DiscoveryError::WrongLength { len: 0 })
        );
        assert_eq!(
            DiscoveryMessage::decode(&good[..27]),
            Err(DiscoveryError::WrongLength { len: 27 })
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            DiscoveryMessage::decode(&long),
            Err(DiscoveryError::WrongLength { len: 29 })
        );
    }

    #[test]
    fn wrong_magic_is_refused() {
        let good = DiscoveryMessage {
            peer_id: id(7),
            port: 9732,
        }
        .encode();
        for i in 0..10 {
            let mut bad = good;
            bad[i] ^= 0x20; // e.g. "DISCOMAGIC" -> "dISCOMAGIC"
            assert_eq!(
                DiscoveryMessage::decode(&bad),
                Err(DiscoveryError::WrongMagic),
                "byte {i} flipped"
            );
        }
    }

    #[test]
    fn default_delays_double_from_a_tenth_of_a_second_and_stay_at_51_2_s() {
        let mut schedule = SenderSchedule::default();
        let delays: Vec<u64> = (0..13)
            .map(|_| schedule.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 51200, 51200, 51200]
        );
    }

    #[test]
    fn wake_sends_at_once_then_restarts_from_the_initial_delay() {
        let mut schedule = SenderSchedule::default();
        for _ in 0..20 {
            schedule.next_delay();
        }
        assert_eq!(schedule.next_delay(), Duration::from_millis(51200));
        schedule.wake();
        schedule.wake(); // two wakes before a send are one
        let delays: Vec<u64> = (0..4)
            .map(|_| schedule.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 100, 200, 400]);
    }

    #[test]
    fn wake_in_the_middle_of_the_sequence_restarts_it() {
        let mut schedule = SenderSchedule::new(Duration::from_secs(1), 3);
        assert_eq!(schedule.next_delay(), Duration::from_secs(1));
        assert_eq!(schedule.next_delay(), Duration::from_secs(2));
        schedule.wake();
        let delays: Vec<u64> = (0..5).map(|_| schedule.next_delay().as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 4]);
    }

    #[test]
    fn a_cap_of_zero_or_one_send_is_a_constant_delay_and_doubling_saturates() {
        for cap in [0, 1] {
            let mut schedule = SenderSchedule::new(Duration::from_millis(5), cap);
            for _ in 0..5 {
                assert_eq!(schedule.next_delay(), Duration::from_millis(5));
            }
        }
        let mut schedule = SenderSchedule::new(Duration::from_secs(u64::MAX / 2), u32::MAX);
        schedule.next_delay();
        schedule.next_delay();
        assert_eq!(schedule.next_delay(), Duration::MAX);
        assert_eq!(schedule.next_delay(), Duration::MAX);
    }

    proptest::proptest! {
        #[test]
        fn decode_inverts_encode(raw in proptest::prelude::any::<[u8; 16]>(), port in proptest::prelude::any::<u16>()) {
            let msg = DiscoveryMessage { peer_id: PeerId(raw), port };
            proptest::prop_assert_eq!(DiscoveryMessage::decode(&msg.encode()), Ok(msg));
        }
    }
}
