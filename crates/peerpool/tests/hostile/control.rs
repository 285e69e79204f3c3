//! Hostile control traffic: Advertise and Nack lists of 10 000 points, Swap_request and
//! Bootstrap storms.

use crate::bench::*;
use crate::raw::*;
use peerpool::socket::SocketError;
use peerpool::{CloseReason, ConnectError};
use peerpool_proto::connection_message::{AckMessage, NackMotive};
use peerpool_proto::framing::{FramingError, MAX_CHUNK_PAYLOAD};
use peerpool_proto::handshake::HandshakeError;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::{P2pMessage, RawMessage};
use peerpool_proto::point::Point;
use peerpool_proto::policy::ControlKind;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The `k`-th of many distinct points, in 10.0.0.0/8.
fn point(k: usize) -> Point {
    let ip = Ipv4Addr::new(10, (k >> 16) as u8, (k >> 8) as u8, k as u8);
    Point::new(IpAddr::V4(ip), 9732)
}

/// Seals each message in turn and writes them all.
async fn send_messages(a: &mut Attacker, messages: &[Vec<u8>]) {
    let mut wire = Vec::new();
    for m in messages {
        a.est.session.sealer.seal_message(m, &mut wire);
    }
    let _ = a.est.stream.write_all(&wire).await;
}

fn envelope(m: &P2pMessage<RawMessage>) -> Vec<u8> {
    m.to_bytes()
}

/// The attackers are neither closed nor greylisted, peer or address (BEHAVIOUR.md §5:
/// rate-limited control messages are not a fault).
async fn assert_left_alone(b: &Bench, attackers: &[Attacker]) {
    let peers = b.node.handle.greylisted_peers().await;
    let ips = b.node.handle.greylisted_ips().await.0;
    for a in attackers {
        assert!(b.node.handle.connection(&a.peer_id).is_some(), "closed");
        assert!(!peers.contains(&a.peer_id) && !ips.contains(&IpAddr::V4(a.ip)));
    }
}

/// Ten peers each send one Advertise of 10 000 points (about 190 KB over several
/// chunks; the list holds at most 100): a decoding error, so each is closed and greylisted,
/// peer and address (BEHAVIOUR.md §5). Ten others send 10 000 points each the legal way,
/// 100 Advertise of 100: beyond the per-peer rate they are ignored, nobody is closed, and
/// the table of known points stays within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_with_10000_points() {
    const PEERS: usize = 10;
    const POINTS: usize = 10_000;
    let mut b = Bench::start("advertise", 31, 3, |_| {}).await;
    let mut oversized = b.sessions(5, 3100, PEERS).await;
    let mut legal = b.sessions(6, 3200, PEERS).await;
    b.measure_before().await;
    let w = b.window();
    let t0 = Instant::now();
    let mut big = 0x0003u16.to_be_bytes().to_vec();
    for k in 0..POINTS {
        point(k).encode(&mut big);
    }
    let mut one = (big.len() as u32).to_be_bytes().to_vec();
    one.extend_from_slice(&big);
    let one = &one;
    let oversized_attack = futures_util::future::join_all(
        oversized
            .iter_mut()
            .map(|a| async move { send_messages(a, std::slice::from_ref(one)).await }),
    );
    let legal_attack =
        futures_util::future::join_all(legal.iter_mut().enumerate().map(|(i, a)| async move {
            let messages: Vec<Vec<u8>> = (0..100)
                .map(|m| {
                    let first = POINTS * (1 + i) + 100 * m;
                    envelope(&P2pMessage::Advertise(
                        (first..first + 100).map(point).collect(),
                    ))
                })
                .collect();
            send_messages(a, &messages).await
        }));
    tokio::join!(oversized_attack, legal_attack);
    let oversized_ids: Vec<PeerId> = oversized.iter().map(|a| a.peer_id).collect();
    let legal_ids: HashSet<PeerId> = legal.iter().map(|a| a.peer_id).collect();
    b.log
        .wait("every Advertise handled", |t| {
            let handled = t
                .advertise_received
                .iter()
                .filter(|p| legal_ids.contains(p))
                .count()
                + t.throttled(ControlKind::Advertise);
            handled >= PEERS * 100 && oversized_ids.iter().all(|id| t.closed_reason(id).is_some())
        })
        .await;
    let elapsed = t0.elapsed();
    let during = b.during(w).await;
    let (decode_errors, registered, throttled) = b.log.with(|t| {
        let decode_errors = oversized_ids
            .iter()
            .filter(|id| {
                matches!(
                    t.closed_reason(id),
                    Some(CloseReason::Protocol(FramingError::Decode(_)))
                )
            })
            .count();
        let registered = t
            .advertise_received
            .iter()
            .filter(|p| legal_ids.contains(p))
            .count();
        (
            decode_errors,
            registered,
            t.throttled(ControlKind::Advertise),
        )
    });
    let known = b.node.handle.known_points().await.len();
    let peers = b.node.handle.greylisted_peers().await;
    let ips = b.node.handle.greylisted_ips().await.0;
    let greylisted = oversized
        .iter()
        .filter(|a| peers.contains(&a.peer_id) && ips.contains(&IpAddr::V4(a.ip)))
        .count();
    eprintln!(
        "[advertise] {PEERS} Advertise of {POINTS} points: {decode_errors} closed as undecodable, {greylisted} greylisted (peer and address); {PEERS} peers x 100 Advertise of 100 points: {registered} registered, {throttled} ignored over the rate; known points {known}"
    );
    assert_eq!((decode_errors, greylisted), (PEERS, PEERS));
    // Burst 3, then one per second, per peer.
    let allowed = PEERS * (3 + elapsed.as_secs() as usize + 1);
    assert!(
        registered <= allowed,
        "{registered} registered, {allowed} allowed"
    );
    assert_eq!(registered + throttled, PEERS * 100);
    assert!(known <= 400, "{known} known points");
    assert_left_alone(&b, &legal).await;
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    drop((oversized, legal));
    b.finish().await;
}

/// A Nack announcing a list of 10 000 points (the list holds at most 100; what fits in the
/// one chunk is sent), as the answer to the node's dial and as the answer to its Ack on an
/// incoming connection: a decoding error in the handshake, the address greylisted
/// (BEHAVIOUR.md §5). Then 100 peers each Nack the node's dial with 100 fresh points, the
/// legal maximum: 10 000 points offered, nobody greylisted, the table of known points
/// within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_10000_points() {
    const HOSTILE: usize = 10;
    const LEGAL: usize = 100;
    let mut b = Bench::start("nack", 32, 3, |_| {}).await;
    b.measure_before().await;
    let w = b.window();
    let mut list = Vec::new();
    for k in 0..10_000 {
        point(k).encode(&mut list);
    }
    let mut huge = vec![0x01];
    huge.extend_from_slice(&NackMotive::TooManyConnections.code().to_be_bytes());
    huge.extend_from_slice(&(list.len() as u32).to_be_bytes());
    huge.extend_from_slice(&list);
    huge.truncate(MAX_CHUNK_PAYLOAD);
    let huge = &huge;

    // Listeners the node dials: each answers its Ack with `nack`.
    async fn listener(ip: Ipv4Addr, seed: u64, nack: Vec<u8>) -> SocketAddr {
        let l = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = l.accept().await.unwrap();
            let mut raw = Raw::handshake(stream, &crate::common::identity(seed), true)
                .await
                .unwrap();
            let _ = raw.recv_chunk().await;
            let _ = raw.send_chunk(&nack).await;
            wait_closed(&mut raw.stream).await;
        });
        addr
    }
    let node = b.node.handle.clone();
    let dialled = futures_util::future::join_all((0..HOSTILE).map(|i| {
        let node = node.clone();
        async move {
            let to = listener(attacker_ip(7, i), 3300 + i as u64, huge.clone()).await;
            node.connect(Point::from(to), None).await.unwrap_err()
        }
    }))
    .await;
    // Clients dialling the node, answering its Ack the same way.
    let addr = b.addr();
    futures_util::future::join_all((0..HOSTILE).map(|i| async move {
        let s = connect_from(attacker_ip(8, i), addr).await.unwrap();
        let id = crate::common::identity(3400 + i as u64);
        let mut raw = Raw::handshake(s, &id, false).await.unwrap();
        let _ = raw.recv_chunk().await;
        let _ = raw.send_chunk(huge).await;
        wait_closed(&mut raw.stream).await;
    }))
    .await;
    let incoming: Vec<IpAddr> = (0..HOSTILE)
        .map(|i| IpAddr::V4(attacker_ip(8, i)))
        .collect();
    b.log
        .wait("every incoming Nack failed the handshake", |t| {
            incoming
                .iter()
                .all(|ip| t.handshake_failed.iter().any(|(a, _)| a.ip() == *ip))
        })
        .await;
    let invalid_ack = |e: &ConnectError| {
        matches!(
            e,
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::InvalidAck(_)))
        )
    };
    assert!(dialled.iter().all(invalid_ack), "{dialled:?}");
    b.log.with(|t| {
        for (a, e) in &t.handshake_failed {
            assert!(invalid_ack(e), "{a}: {e}");
        }
    });
    let greylisted: HashSet<IpAddr> = b.node.handle.greylisted_ips().await.0.into_iter().collect();
    let hostile_ips: HashSet<IpAddr> = (0..HOSTILE)
        .map(|i| IpAddr::V4(attacker_ip(7, i)))
        .chain(incoming.iter().copied())
        .collect();
    let listed = hostile_ips.intersection(&greylisted).count();

    // The legal way: 100 Nacks of 100 fresh points.
    let legal = futures_util::future::join_all((0..LEGAL).map(|i| {
        let node = node.clone();
        async move {
            let nack = AckMessage::Nack {
                motive: NackMotive::TooManyConnections,
                points: (0..100).map(|k| point(20_000 + 100 * i + k)).collect(),
            }
            .encode();
            let to = listener(attacker_ip(9, i), 3500 + i as u64, nack).await;
            node.connect(Point::from(to), None).await.unwrap_err()
        }
    }))
    .await;
    let during = b.during(w).await;
    let nacked = legal
        .iter()
        .filter(|e| e.nack().is_some_and(|(_, p)| p.len() == 100))
        .count();
    let known = b.node.handle.known_points().await.len();
    let greylisted_after = b.node.handle.greylisted_ips().await.0.len();
    eprintln!(
        "[nack] {} Nacks announcing 10 000 points ({HOSTILE} to our dials, {HOSTILE} to our Acks): all invalid, {listed} addresses greylisted; {LEGAL} Nacks of 100 points: {nacked} taken, known points {known}, greylisted addresses {greylisted_after}",
        2 * HOSTILE
    );
    assert_eq!(listed, 2 * HOSTILE);
    assert_eq!(nacked, LEGAL);
    assert_eq!(greylisted_after, 2 * HOSTILE, "a legal Nack greylisted");
    assert!(known <= 400, "{known} known points");
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    b.finish().await;
}

/// Ten peers each send 1 000 Swap_request (each proposing a point where nothing
/// listens): beyond the per-peer rate (burst 2, then one a minute) they are ignored, so
/// the node dials at most twice per peer; nobody is closed or greylisted, and no honest
/// connection is swapped away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_request_storm() {
    const PEERS: usize = 10;
    const EACH: usize = 1000;
    let mut b = Bench::start("swap storm", 33, 3, |c| {
        c.policy.swap_linger = Some(Duration::from_secs(30));
    })
    .await;
    let mut stormers = b.sessions(10, 3600, PEERS).await;
    b.measure_before().await;
    let w = b.window();
    futures_util::future::join_all(stormers.iter_mut().enumerate().map(|(i, a)| async move {
        let messages: Vec<Vec<u8>> = (0..EACH)
            .map(|k| {
                let to = Point::new(IpAddr::V4(attacker_ip(11, k % 250)), 1);
                envelope(&P2pMessage::SwapRequest(to, PeerId([(i + k) as u8; 16])))
            })
            .collect();
        send_messages(a, &messages).await
    }))
    .await;
    b.log
        .wait("every Swap_request handled", |t| {
            t.swap_requests_received + t.throttled(ControlKind::SwapRequest) >= PEERS * EACH
        })
        .await;
    let during = b.during(w).await;
    let (received, acks, throttled) = b.log.with(|t| {
        (
            t.swap_requests_received,
            t.swap_acks_sent,
            t.throttled(ControlKind::SwapRequest),
        )
    });
    eprintln!(
        "[swap storm] {} Swap_request from {PEERS} peers: {received} handled, {acks} answered (a dial each), {throttled} ignored over the rate",
        PEERS * EACH
    );
    assert!(received <= 2 * PEERS, "{received} handled");
    assert!(acks <= received);
    assert_eq!(received + throttled, PEERS * EACH);
    assert_left_alone(&b, &stormers).await;
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    drop(stormers);
    b.finish().await;
}

/// Ten peers each send 2 000 Bootstrap and never read the answers: beyond the per-peer
/// rate (burst 3, then one a second) they are ignored; the answers that do go out wait in
/// the peer's bounded control queue; nobody is closed or greylisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_storm() {
    const PEERS: usize = 10;
    const EACH: usize = 2000;
    let mut b = Bench::start("bootstrap storm", 34, 3, |_| {}).await;
    let mut stormers = b.sessions(12, 3700, PEERS).await;
    b.measure_before().await;
    let w = b.window();
    let t0 = Instant::now();
    let bootstrap = envelope(&P2pMessage::Bootstrap);
    let messages = vec![bootstrap; EACH];
    let messages = &messages;
    futures_util::future::join_all(
        stormers
            .iter_mut()
            .map(|a| async move { send_messages(a, messages).await }),
    )
    .await;
    let ids: HashSet<PeerId> = stormers.iter().map(|a| a.peer_id).collect();
    b.log
        .wait("every Bootstrap handled", |t| {
            t.bootstrap_answered
                .iter()
                .filter(|p| ids.contains(p))
                .count()
                + t.throttled(ControlKind::Bootstrap)
                >= PEERS * EACH
        })
        .await;
    let elapsed = t0.elapsed();
    let during = b.during(w).await;
    let (answered, throttled) = b.log.with(|t| {
        (
            t.bootstrap_answered
                .iter()
                .filter(|p| ids.contains(p))
                .count(),
            t.throttled(ControlKind::Bootstrap),
        )
    });
    eprintln!(
        "[bootstrap storm] {} Bootstrap from {PEERS} peers in {:.2} s: {answered} answered, {throttled} ignored over the rate",
        PEERS * EACH,
        elapsed.as_secs_f64()
    );
    let allowed = PEERS * (3 + elapsed.as_secs() as usize + 1);
    assert!(
        answered <= allowed,
        "{answered} answered, {allowed} allowed"
    );
    assert_eq!(answered + throttled, PEERS * EACH);
    assert_left_alone(&b, &stormers).await;
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    drop(stormers);
    b.finish().await;
}
