//! Bad input over real sockets. Each time the offending connection closes with a typed
//! error, the node stays up, its other connection keeps working, and it still accepts
//! new peers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::socket::{self, Established, SocketError};
use peerpool::CloseReason;
use peerpool::{ConnectError, NodeEvent};
use peerpool_proto::connection_message::{NackMotive, SupportedVersions};
use peerpool_proto::crypto::CryptoError;
use peerpool_proto::framing::FramingError;
use peerpool_proto::handshake::{Direction, HandshakeError};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::point::Point;
use peerpool_proto::pool::PoolError;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Harness {
    node: TestNode,
    witness: TestNode,
    events: peerpool::Events,
    seed: u64,
}

impl Harness {
    async fn new() -> Self {
        // The node under test no longer speaks distributed-db version 0, so an old peer
        // can be refused as deprecated.
        // Listening on every address: dialing 127.0.0.1 reaches the node itself without
        // the pool knowing that point is ours, so the handshake's `Myself` check is tested.
        let mut cfg = config(100, "0.0.0.0");
        cfg.versions.distributed_db_versions = vec![1, 2];
        let mut node = start(cfg).await;
        node.addr = std::net::SocketAddr::new([127, 0, 0, 1].into(), node.addr.port());
        let witness = start(config(101, "127.0.0.2")).await;
        witness
            .handle
            .connect(Point::from(node.addr), None)
            .await
            .unwrap();
        let events = node.handle.events();
        Harness {
            node,
            witness,
            events,
            seed: 200,
        }
    }

    /// A real, established session with the node, for sending crafted bytes after it.
    async fn session(&mut self) -> Established<TcpStream> {
        self.seed += 1;
        let stream = TcpStream::connect(self.node.addr).await.unwrap();
        let auth = socket::authenticate(
            stream,
            client_config(identity(self.seed)),
            Direction::Outgoing,
            [3; 24],
        )
        .await
        .unwrap();
        let version = auth.connection_message.version.clone();
        let est = auth.accept(version).await.unwrap();
        wait_for(&mut self.events, |e| {
            matches!(e, NodeEvent::ConnectionEstablished { .. }).then_some(())
        })
        .await;
        est
    }

    async fn handshake_error(&mut self) -> ConnectError {
        next_handshake_error(&mut self.events).await
    }

    async fn close_reason(&mut self) -> CloseReason {
        next_close_reason(&mut self.events).await
    }

    /// The node still serves its other peer and accepts a new one.
    async fn assert_node_healthy(&mut self) {
        assert_exchange(&self.witness.handle, &self.node.handle, 0x10).await;
        assert_exchange(&self.node.handle, &self.witness.handle, 0x11).await;
        self.seed += 1;
        let newcomer = start(config(self.seed + 1000, "127.0.0.3")).await;
        newcomer
            .handle
            .connect(Point::from(self.node.addr), None)
            .await
            .unwrap();
        assert_exchange(&newcomer.handle, &self.node.handle, 0x12).await;
        newcomer.handle.shutdown().await;
        self.close_reason().await;
    }
}

fn handshake_failure(e: &ConnectError) -> &HandshakeError {
    match e {
        ConnectError::Handshake(SocketError::Handshake(h)) => h,
        other => panic!("expected a handshake error, got {other}"),
    }
}

#[tokio::test]
async fn garbage_instead_of_a_connection_message() {
    let mut h = Harness::new().await;
    let mut s = TcpStream::connect(h.node.addr).await.unwrap();
    let mut garbage = vec![0x00, 0x20];
    garbage.extend_from_slice(&[0xab; 32]);
    s.write_all(&garbage).await.unwrap();
    let e = h.handshake_error().await;
    let he = handshake_failure(&e);
    assert!(
        matches!(he, HandshakeError::InvalidConnectionMessage(_)),
        "{he}"
    );
    assert!(he.greylists_peer_address());
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn length_prefix_longer_than_what_follows_then_eof() {
    let mut h = Harness::new().await;
    let mut s = TcpStream::connect(h.node.addr).await.unwrap();
    s.write_all(&[0x00, 0x67, 1, 2, 3, 4, 5]).await.unwrap();
    s.shutdown().await.unwrap();
    let e = h.handshake_error().await;
    assert!(
        matches!(
            e,
            ConnectError::Handshake(SocketError::ClosedDuringHandshake)
        ),
        "{e}"
    );
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn proof_of_work_below_the_target() {
    let mut h = Harness::new().await;
    // An identity whose stamp has fewer bits than the node's target.
    let weak = (0..)
        .map(|seed| {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            Identity::generate(&PowTarget::new(0.0).unwrap(), &mut rng)
        })
        .find(|id| (id.pow_bits() as f64) < TEST_POW)
        .unwrap();
    let stream = TcpStream::connect(h.node.addr).await.unwrap();
    let cfg = client_config(Arc::new(weak));
    // The node closes without a Nack; our side sees the connection end.
    let ours = socket::authenticate(stream, cfg, Direction::Outgoing, [4; 24]).await;
    assert!(ours.is_err());
    let e = h.handshake_error().await;
    assert!(
        matches!(
            handshake_failure(&e),
            HandshakeError::NotEnoughProofOfWork { .. }
        ),
        "{e}"
    );
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn chunk_whose_mac_fails() {
    let mut h = Harness::new().await;
    let mut est = h.session().await;
    let mut wire = Vec::new();
    est.session
        .sealer
        .seal_chunk(&[0, 0, 0, 2, 0, 2], &mut wire);
    let last = wire.len() - 1;
    wire[last] ^= 0x01;
    est.stream.write_all(&wire).await.unwrap();
    let reason = h.close_reason().await;
    assert_eq!(
        reason,
        CloseReason::Protocol(FramingError::Crypto(CryptoError::Decipher))
    );
    assert!(reason.is_peer_fault());
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn chunk_length_below_16() {
    let mut h = Harness::new().await;
    let mut est = h.session().await;
    est.stream
        .write_all(&[0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    assert_eq!(
        h.close_reason().await,
        CloseReason::Protocol(FramingError::ChunkTooShort(5))
    );
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn chunk_declaring_65535_bytes_and_sending_fewer() {
    let mut h = Harness::new().await;
    let mut est = h.session().await;
    let mut bytes = vec![0xff, 0xff];
    bytes.extend_from_slice(&[0x42; 1000]);
    est.stream.write_all(&bytes).await.unwrap();
    est.stream.shutdown().await.unwrap();
    assert_eq!(h.close_reason().await, CloseReason::Eof);
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn undecodable_message_after_the_handshake() {
    let mut h = Harness::new().await;
    let mut est = h.session().await;
    // An Advertise whose point is not an address.
    let mut msg = vec![0, 0, 0, 11, 0x00, 0x03, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let mut wire = Vec::new();
    est.session.sealer.seal_message(&msg, &mut wire);
    est.stream.write_all(&wire).await.unwrap();
    let reason = h.close_reason().await;
    assert!(
        matches!(reason, CloseReason::Protocol(FramingError::Decode(_))),
        "{reason}"
    );
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn message_longer_than_the_bound_is_refused_from_its_length() {
    let mut h = Harness::new().await;
    let mut est = h.session().await;
    let mut wire = Vec::new();
    // 200 MiB announced: above the 100 MiB envelope bound.
    est.session
        .sealer
        .seal_chunk(&(200u32 << 20).to_be_bytes(), &mut wire);
    est.stream.write_all(&wire).await.unwrap();
    assert!(matches!(
        h.close_reason().await,
        CloseReason::Protocol(FramingError::MessageTooLarge { .. })
    ));
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn unknown_chain_name_and_myself_leave_the_node_healthy() {
    let mut h = Harness::new().await;
    let mut other = config(300, "127.0.0.4");
    other.versions = SupportedVersions::octez("NOT_TEZOS");
    let other = start(other).await;
    assert!(other
        .handle
        .connect(Point::from(h.node.addr), None)
        .await
        .is_err());
    let e = h.handshake_error().await;
    assert!(
        matches!(e, ConnectError::RejectedByUs(NackMotive::UnknownChainName)),
        "{e}"
    );
    let e = h
        .node
        .handle
        .connect(Point::from(h.node.addr), None)
        .await
        .unwrap_err();
    assert!(matches!(handshake_failure(&e), HandshakeError::Myself));
    // The point is now known to be ours: the pool refuses to dial it again.
    let e = h
        .node
        .handle
        .connect(Point::from(h.node.addr), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::Pool(PoolError::Myself(_))), "{e}");
    h.assert_node_healthy().await;
}

#[tokio::test]
async fn deprecated_version() {
    let mut h = Harness::new().await;
    let mut old = config(301, "127.0.0.5");
    old.versions = SupportedVersions {
        chain_name: "TEZOS".into(),
        distributed_db_versions: vec![0],
        p2p_versions: vec![0, 1],
    };
    let old = start(old).await;
    let err = old
        .handle
        .connect(Point::from(h.node.addr), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.nack().map(|n| n.0),
        Some(NackMotive::DeprecatedDistributedDbVersion),
        "{err}"
    );
    let e = h.handshake_error().await;
    assert!(
        matches!(
            e,
            ConnectError::RejectedByUs(NackMotive::DeprecatedDistributedDbVersion)
        ),
        "{e}"
    );
    h.assert_node_healthy().await;
}

/// The bytes of a handshake that fails before its stream is registered with the I/O
/// scheduler still count in the node's totals (and against its global caps).
#[tokio::test]
async fn a_failed_handshake_counts_in_the_io_totals() {
    let node = start(config(150, "127.0.0.1")).await;
    let mut events = node.handle.events();
    let before = node.handle.stats().await.io;
    assert_eq!((before.total_sent, before.total_recv), (0, 0));
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let mut garbage = vec![0x00, 0x20];
    garbage.extend_from_slice(&[0xab; 32]);
    s.write_all(&garbage).await.unwrap();
    let e = next_handshake_error(&mut events).await;
    assert!(matches!(
        handshake_failure(&e),
        HandshakeError::InvalidConnectionMessage(_)
    ));
    let after = node.handle.stats().await.io;
    // The 34 bytes read, and the node's own connection message, sent first.
    assert_eq!(after.total_recv, garbage.len() as u64);
    assert!(after.total_sent > 0, "{after:?}");
}
