//! The authenticated handshake as a sans-IO state machine (WIRE.md §2–5, §8;
//! BEHAVIOUR.md §7.1).
//!
//! Both sides run the same steps:
//! 1. send the cleartext [`ConnectionMessage`] at once;
//! 2. read the peer's, check its proof of work, derive the channel key and nonces;
//! 3. send our [`ConnectionMetadata`] as one encrypted chunk, read the peer's;
//! 4. refuse our own peer id ([`HandshakeError::Myself`]);
//! 5. the caller decides ([`HandshakeEvent::Authenticated`]): [`Handshake::accept`] sends
//!    `Ack` and waits for the peer's; [`Handshake::reject`] sends a `Nack` (its form chosen
//!    from the peer's announced p2p version) and the handshake ends;
//! 6. on the peer's `Ack` the session is established ([`Handshake::into_session`]).
//!
//! Drive it by feeding received bytes to [`Handshake::handle_input`], writing whatever
//! [`Handshake::poll_transmit`] returns, and reacting to [`Handshake::poll_event`].
//! Timeouts belong to the driver (10 s outgoing, 5 s incoming by default).

use crate::connection_message::{
    AckMessage, ConnectionMessage, ConnectionMetadata, NackMotive, NetworkVersion,
    SupportedVersions,
};
use crate::crypto::{ChannelKey, CryptoError, NoncePair};
use crate::encoding::DecodeError;
use crate::framing::{ChunkOpener, ChunkSealer, FramingError};
use crate::identity::{Identity, PeerId, PowTarget};
use crate::point::Point;
use std::collections::VecDeque;
use std::sync::Arc;
use thiserror::Error;

/// Which side of the TCP connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We accepted the connection (responder).
    Incoming,
    /// We dialed (initiator).
    Outgoing,
}

/// What one side brings to a handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Our identity.
    pub identity: Arc<Identity>,
    /// Our chain name and supported versions (we announce the highest of each).
    pub versions: SupportedVersions,
    /// Our listening port, announced in the connection message (`None` = 0).
    pub listening_port: Option<u16>,
    /// Our connection metadata.
    pub metadata: ConnectionMetadata,
    /// The proof of work we demand from peers (default difficulty 26).
    pub pow_target: PowTarget,
    /// Plaintext bytes per chunk for messages after the handshake (≤ 65517).
    pub chunk_payload_size: usize,
}

/// Why a handshake failed. [`HandshakeError::greylists_peer_address`] tells the pool which
/// ones show garbage or malice (BEHAVIOUR.md §1.2).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum HandshakeError {
    /// The peer's connection message did not decode.
    #[error("invalid connection message: {0}")]
    InvalidConnectionMessage(DecodeError),
    /// Our own connection message could not be encoded (chain name too long).
    #[error("cannot encode our connection message: {0}")]
    LocalConfig(DecodeError),
    /// The peer's stamp does not reach our target (no Nack is sent).
    #[error("peer {peer_id} has not enough proof of work (target {expected})")]
    NotEnoughProofOfWork {
        /// The peer.
        peer_id: PeerId,
        /// Our difficulty.
        expected: f64,
    },
    /// The peer's public key is a low-order point.
    #[error("peer sent an unusable public key: {0}")]
    InvalidPublicKey(CryptoError),
    /// The metadata chunk was malformed, failed authentication or did not decode.
    #[error("invalid metadata: {0}")]
    InvalidMetadata(FramingError),
    /// The peer has our own peer id (we dialed ourselves).
    #[error("the peer is ourselves")]
    Myself,
    /// The Ack chunk was malformed, failed authentication or did not decode.
    #[error("invalid ack: {0}")]
    InvalidAck(FramingError),
    /// The peer refused us.
    #[error("rejected by the peer: {motive}")]
    RejectedByNack {
        /// The motive (`NoMotive` for `Nack_v_0`).
        motive: NackMotive,
        /// Points the peer suggests instead (to hand to the pool).
        points: Vec<Point>,
    },
    /// We refused the peer ([`Handshake::reject`]).
    #[error("we rejected the peer: {0}")]
    RejectedByUs(NackMotive),
    /// A method was called in a state where it has no meaning (a bug in the driver).
    #[error("handshake misuse: {0}")]
    Misuse(&'static str),
}

impl HandshakeError {
    /// Whether the failure shows garbage or malice, so the peer's address should be
    /// greylisted (BEHAVIOUR.md §1.2: bad PoW, bad auth, bad sizes, decoding errors).
    pub fn greylists_peer_address(&self) -> bool {
        matches!(
            self,
            HandshakeError::InvalidConnectionMessage(_)
                | HandshakeError::NotEnoughProofOfWork { .. }
                | HandshakeError::InvalidPublicKey(_)
                | HandshakeError::InvalidMetadata(_)
                | HandshakeError::InvalidAck(_)
        )
    }
}

/// What the handshake tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// The peer proved its key and sent its metadata: call [`Handshake::accept`] or
    /// [`Handshake::reject`]. Version selection is [`SupportedVersions::select`].
    Authenticated {
        /// The peer's id.
        peer_id: PeerId,
        /// Its connection message (port, key, announced version).
        connection_message: ConnectionMessage,
        /// Its metadata.
        metadata: ConnectionMetadata,
    },
    /// The peer's Ack arrived after ours: [`Handshake::into_session`] is ready.
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitConnectionMessage,
    AwaitMetadata,
    AwaitDecision,
    AwaitAck,
    Established,
    Done,
}

/// An established, authenticated session: everything the connection needs to exchange
/// encrypted messages.
#[derive(Debug)]
pub struct Session {
    /// The peer's id.
    pub peer_id: PeerId,
    /// Its connection message.
    pub remote: ConnectionMessage,
    /// Its metadata.
    pub remote_metadata: ConnectionMetadata,
    /// The negotiated version.
    pub version: NetworkVersion,
    /// Seals what we send (starts at local nonce + 2).
    pub sealer: ChunkSealer,
    /// Opens what we receive (starts at remote nonce + 2).
    pub opener: ChunkOpener,
    /// Bytes received after the peer's Ack: the start of its first messages.
    pub leftover: Vec<u8>,
}

/// The handshake state machine of one connection.
#[derive(Debug)]
pub struct Handshake {
    direction: Direction,
    config: HandshakeConfig,
    state: State,
    input: Vec<u8>,
    transmit: Vec<u8>,
    events: VecDeque<HandshakeEvent>,
    sent_frame: Vec<u8>,
    remote: Option<(PeerId, ConnectionMessage)>,
    remote_metadata: Option<ConnectionMetadata>,
    crypto: Option<(ChunkSealer, ChunkOpener)>,
    version: Option<NetworkVersion>,
}

impl Handshake {
    /// Starts a handshake and queues our connection message. `message_nonce` is 24 fresh
    /// random bytes from the caller's RNG.
    pub fn new(
        config: HandshakeConfig,
        direction: Direction,
        message_nonce: [u8; 24],
    ) -> Result<Self, HandshakeError> {
        let msg = ConnectionMessage {
            port: config.listening_port,
            public_key: config.identity.public_key,
            proof_of_work_stamp: config.identity.proof_of_work_stamp,
            message_nonce,
            version: config.versions.announced(),
        };
        let sent_frame = msg.encode_frame().map_err(HandshakeError::LocalConfig)?;
        Ok(Handshake {
            direction,
            config,
            state: State::AwaitConnectionMessage,
            input: Vec::new(),
            transmit: sent_frame.clone(),
            events: VecDeque::new(),
            sent_frame,
            remote: None,
            remote_metadata: None,
            crypto: None,
            version: None,
        })
    }

    /// Our side.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The peer's id, once its connection message has been read and checked.
    pub fn remote_peer_id(&self) -> Option<PeerId> {
        self.remote.as_ref().map(|(peer_id, _)| *peer_id)
    }

    /// Bytes to write to the peer now, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.transmit))
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }

    /// Whether the machine needs more bytes from the peer to progress.
    pub fn wants_input(&self) -> bool {
        matches!(
            self.state,
            State::AwaitConnectionMessage | State::AwaitMetadata | State::AwaitAck
        )
    }

    /// Whether the handshake is over (established, or ended by our Nack).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Established | State::Done)
    }

    /// Feeds bytes received from the peer and advances as far as they allow.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), HandshakeError> {
        self.input.extend_from_slice(bytes);
        loop {
            let progressed = match self.state {
                State::AwaitConnectionMessage => self.read_connection_message()?,
                State::AwaitMetadata => self.read_metadata()?,
                State::AwaitAck => self.read_ack()?,
                State::AwaitDecision | State::Established | State::Done => false,
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    fn read_connection_message(&mut self) -> Result<bool, HandshakeError> {
        if self.input.len() < 2 {
            return Ok(false);
        }
        let len = u16::from_be_bytes([self.input[0], self.input[1]]) as usize;
        if self.input.len() < 2 + len {
            return Ok(false);
        }
        let frame: Vec<u8> = self.input.drain(..2 + len).collect();
        let msg = ConnectionMessage::decode_body(&frame[2..])
            .map_err(HandshakeError::InvalidConnectionMessage)?;
        let peer_id = PeerId::of_public_key(&msg.public_key);
        if !self
            .config
            .pow_target
            .check(&msg.public_key, &msg.proof_of_work_stamp)
        {
            return Err(HandshakeError::NotEnoughProofOfWork {
                peer_id,
                expected: self.config.pow_target.difficulty(),
            });
        }
        let key = ChannelKey::derive(&msg.public_key, &self.config.identity.secret_key)
            .map_err(HandshakeError::InvalidPublicKey)?;
        let nonces = NoncePair::derive(
            &self.sent_frame,
            &frame,
            self.direction == Direction::Incoming,
        );
        let mut sealer =
            ChunkSealer::new(key.clone(), nonces.local, self.config.chunk_payload_size);
        sealer.seal_chunk(&self.config.metadata.encode(), &mut self.transmit);
        self.crypto = Some((sealer, ChunkOpener::new(key, nonces.remote)));
        self.remote = Some((peer_id, msg));
        self.state = State::AwaitMetadata;
        Ok(true)
    }

    /// Opens the next whole handshake chunk from the input, if buffered.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        let Some((_, opener)) = self.crypto.as_mut() else {
            return Ok(None);
        };
        match opener.open_buffered(&mut self.input)? {
            None => Ok(None),
            Some((used, plain)) => {
                let plain = plain.to_vec();
                self.input.drain(..used);
                Ok(Some(plain))
            }
        }
    }

    fn read_metadata(&mut self) -> Result<bool, HandshakeError> {
        let Some(plain) = self.next_chunk().map_err(HandshakeError::InvalidMetadata)? else {
            return Ok(false);
        };
        let metadata = ConnectionMetadata::decode(&plain)
            .map_err(|e| HandshakeError::InvalidMetadata(e.into()))?;
        let Some((peer_id, msg)) = self.remote.clone() else {
            return Err(HandshakeError::Misuse("metadata before connection message"));
        };
        if peer_id == self.config.identity.peer_id {
            self.state = State::Done;
            return Err(HandshakeError::Myself);
        }
        self.remote_metadata = Some(metadata);
        self.state = State::AwaitDecision;
        self.events.push_back(HandshakeEvent::Authenticated {
            peer_id,
            connection_message: msg,
            metadata,
        });
        Ok(true)
    }

    fn read_ack(&mut self) -> Result<bool, HandshakeError> {
        let Some(plain) = self.next_chunk().map_err(HandshakeError::InvalidAck)? else {
            return Ok(false);
        };
        match AckMessage::decode(&plain).map_err(|e| HandshakeError::InvalidAck(e.into()))? {
            AckMessage::Ack => {
                self.state = State::Established;
                self.events.push_back(HandshakeEvent::Established);
                Ok(false)
            }
            AckMessage::NackV0 => {
                self.state = State::Done;
                Err(HandshakeError::RejectedByNack {
                    motive: NackMotive::NoMotive,
                    points: Vec::new(),
                })
            }
            AckMessage::Nack { motive, points } => {
                self.state = State::Done;
                Err(HandshakeError::RejectedByNack { motive, points })
            }
        }
    }

    /// Accepts the authenticated peer with the negotiated `version`: queues our Ack.
    pub fn accept(&mut self, version: NetworkVersion) -> Result<(), HandshakeError> {
        if self.state != State::AwaitDecision {
            return Err(HandshakeError::Misuse("accept outside the decision step"));
        }
        let Some((sealer, _)) = self.crypto.as_mut() else {
            return Err(HandshakeError::Misuse("accept without keys"));
        };
        sealer.seal_chunk(&AckMessage::Ack.encode(), &mut self.transmit);
        self.version = Some(version);
        self.state = State::AwaitAck;
        // The peer's Ack may already be buffered.
        self.handle_input(&[])
    }

    /// Refuses the authenticated peer: queues `Nack { motive, points }` (at most 100
    /// points) if the peer announced p2p version ≥ 1, else `Nack_v_0`. The handshake ends;
    /// write the transmit bytes, then close.
    pub fn reject(&mut self, motive: NackMotive, points: Vec<Point>) -> Result<(), HandshakeError> {
        if self.state != State::AwaitDecision {
            return Err(HandshakeError::Misuse("reject outside the decision step"));
        }
        let with_list = self
            .remote
            .as_ref()
            .is_some_and(|(_, m)| m.version.p2p_version >= 1);
        let nack = if with_list {
            AckMessage::Nack { motive, points }
        } else {
            AckMessage::NackV0
        };
        let Some((sealer, _)) = self.crypto.as_mut() else {
            return Err(HandshakeError::Misuse("reject without keys"));
        };
        sealer.seal_chunk(&nack.encode(), &mut self.transmit);
        self.state = State::Done;
        Ok(())
    }

    /// The established session. Errors with [`HandshakeError::Misuse`] before
    /// [`HandshakeEvent::Established`].
    pub fn into_session(mut self) -> Result<Session, HandshakeError> {
        if self.state != State::Established {
            return Err(HandshakeError::Misuse(
                "session requested before establishment",
            ));
        }
        match (
            self.remote.take(),
            self.remote_metadata,
            self.crypto.take(),
            self.version.take(),
        ) {
            (
                Some((peer_id, remote)),
                Some(remote_metadata),
                Some((sealer, opener)),
                Some(version),
            ) => Ok(Session {
                peer_id,
                remote,
                remote_metadata,
                version,
                sealer,
                opener,
                leftover: std::mem::take(&mut self.input),
            }),
            _ => Err(HandshakeError::Misuse("incomplete established state")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn config(seed: u64, chain: &str) -> HandshakeConfig {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let target = PowTarget::new(4.0).unwrap();
        HandshakeConfig {
            identity: Arc::new(Identity::generate(&target, &mut rng)),
            versions: SupportedVersions::octez(chain),
            listening_port: Some(9732),
            metadata: ConnectionMetadata::default(),
            pow_target: target,
            chunk_payload_size: 65517,
        }
    }

    fn nonce(rng: &mut impl RngCore) -> [u8; 24] {
        let mut n = [0; 24];
        rng.fill_bytes(&mut n);
        n
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn pump(
        a: &mut Handshake,
        b: &mut Handshake,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (mut ra, mut rb) = (Ok(()), Ok(()));
        loop {
            let ta = a.poll_transmit();
            let tb = b.poll_transmit();
            if ta.is_none() && tb.is_none() {
                return (ra, rb);
            }
            if let (Some(t), Ok(())) = (ta, &rb) {
                rb = b.handle_input(&t);
            }
            if let (Some(t), Ok(())) = (tb, &ra) {
                ra = a.handle_input(&t);
            }
        }
    }

    fn authenticated(h: &mut Handshake) -> (PeerId, ConnectionMessage) {
        match h.poll_event() {
            Some(HandshakeEvent::Authenticated {
                peer_id,
                connection_message,
                ..
            }) => (peer_id, connection_message),
            other => panic!("expected Authenticated, got {other:?}"),
        }
    }

    #[test]
    fn two_endpoints_establish_and_exchange_a_message() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (ca, cb) = (config(1, "TEZOS"), config(2, "TEZOS"));
        let (ida, idb) = (ca.identity.peer_id, cb.identity.peer_id);
        let mut a = Handshake::new(ca.clone(), Direction::Outgoing, nonce(&mut rng)).unwrap();
        let mut b = Handshake::new(cb.clone(), Direction::Incoming, nonce(&mut rng)).unwrap();
        let (ra, rb) = pump(&mut a, &mut b);
        ra.unwrap();
        rb.unwrap();
        let (pa, ma) = authenticated(&mut a);
        let (pb, mb) = authenticated(&mut b);
        assert_eq!((pa, pb), (idb, ida));
        a.accept(ca.versions.select(&ma.version).unwrap()).unwrap();
        b.accept(cb.versions.select(&mb.version).unwrap()).unwrap();
        let (ra, rb) = pump(&mut a, &mut b);
        ra.unwrap();
        rb.unwrap();
        assert_eq!(a.poll_event(), Some(HandshakeEvent::Established));
        assert_eq!(b.poll_event(), Some(HandshakeEvent::Established));
        let mut sa = a.into_session().unwrap();
        let mut sb = b.into_session().unwrap();
        let mut wire = Vec::new();
        sa.sealer
            .seal_message(b"\x00\x00\x00\x02\x00\x02", &mut wire);
        let (_, plain) = sb.opener.open_buffered(&mut wire).unwrap().unwrap();
        assert_eq!(plain, b"\x00\x00\x00\x02\x00\x02");
    }

    #[test]
    fn reject_sends_a_nack_with_points_and_the_peer_sees_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (ca, cb) = (config(1, "TEZOS"), config(2, "OTHER"));
        let mut a = Handshake::new(ca.clone(), Direction::Outgoing, nonce(&mut rng)).unwrap();
        let mut b = Handshake::new(cb.clone(), Direction::Incoming, nonce(&mut rng)).unwrap();
        let _ = pump(&mut a, &mut b);
        let (_, ma) = authenticated(&mut a);
        let (_, mb) = authenticated(&mut b);
        let motive = cb.versions.select(&mb.version).unwrap_err();
        assert_eq!(motive, NackMotive::UnknownChainName);
        let referral: Point = "127.0.0.9:9732".parse().unwrap();
        b.reject(motive, vec![referral]).unwrap();
        assert!(b.is_done());
        // a accepts (its own view), then reads b's Nack.
        let _ = ca.versions.select(&ma.version);
        a.accept(ma.version.clone()).unwrap();
        let (ra, _) = pump(&mut a, &mut b);
        assert_eq!(
            ra,
            Err(HandshakeError::RejectedByNack {
                motive: NackMotive::UnknownChainName,
                points: vec![referral]
            })
        );
    }

    #[test]
    fn dialing_ourselves_is_detected() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let c = config(1, "TEZOS");
        let mut a = Handshake::new(c.clone(), Direction::Outgoing, nonce(&mut rng)).unwrap();
        let mut b = Handshake::new(c, Direction::Incoming, nonce(&mut rng)).unwrap();
        let (ra, rb) = pump(&mut a, &mut b);
        assert_eq!(ra, Err(HandshakeError::Myself));
        assert_eq!(rb, Err(HandshakeError::Myself));
    }

    #[test]
    fn insufficient_pow_is_refused_before_any_encrypted_byte() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let weak = config(1, "TEZOS");
        let mut strict = config(2, "TEZOS");
        // Demand far more than a 4-bit identity has.
        strict.pow_target = PowTarget::new(40.0).unwrap();
        let mut a = Handshake::new(weak, Direction::Outgoing, nonce(&mut rng)).unwrap();
        let mut b = Handshake::new(strict, Direction::Incoming, nonce(&mut rng)).unwrap();
        let frame = a.poll_transmit().unwrap();
        let err = b.handle_input(&frame).unwrap_err();
        assert!(matches!(err, HandshakeError::NotEnoughProofOfWork { .. }));
        assert!(err.greylists_peer_address());
    }

    #[test]
    fn bytes_arriving_one_at_a_time_give_the_same_result() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (ca, cb) = (config(1, "TEZOS"), config(2, "TEZOS"));
        let mut a = Handshake::new(ca, Direction::Outgoing, nonce(&mut rng)).unwrap();
        let mut b = Handshake::new(cb, Direction::Incoming, nonce(&mut rng)).unwrap();
        let fa = a.poll_transmit().unwrap();
        for byte in &fa {
            b.handle_input(std::slice::from_ref(byte)).unwrap();
        }
        let fb = b.poll_transmit().unwrap();
        for byte in &fb {
            a.handle_input(std::slice::from_ref(byte)).unwrap();
        }
        assert!(matches!(
            a.poll_event(),
            Some(HandshakeEvent::Authenticated { .. })
        ));
    }
}
