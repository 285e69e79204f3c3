//! Hostile connections before any session: silent sockets held until the authentication
//! timeout, a flood of connection attempts, replayed and reflected connection messages.

use crate::bench::*;
use crate::raw::*;
use futures_util::StreamExt;
use peerpool::socket::SocketError;
use peerpool::ConnectError;
use peerpool_proto::connection_message::AckMessage;
use peerpool_proto::handshake::HandshakeError;
use peerpool_proto::policy::Refusal;
use peerpool_proto::pool::PoolError;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A connection message whose body does not decode (garbage: greylists the address).
const GARBAGE: [u8; 34] = {
    let mut g = [0xab; 34];
    g[0] = 0x00;
    g[1] = 0x20;
    g
};

fn is_timeout(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Timeout(_))
}

fn is_invalid_metadata(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Handshake(SocketError::Handshake(HandshakeError::InvalidMetadata(_)))
    )
}

/// Hundreds of connections that send nothing: each is held by the node until the
/// authentication timeout, then closed; a timeout greylists nothing (BEHAVIOUR.md §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_hundreds_of_silent_connections_until_the_authentication_timeout() {
    const SILENT: usize = 400;
    const AUTH: Duration = Duration::from_secs(2);
    let mut b = Bench::start("slowloris", 11, 3, |c| {
        c.authentication_timeout = AUTH;
        // Every one of them in flight at once (the default caps, 20 handshakes in flight
        // and 10 per netgroup, refuse most at accept: the flood test runs with those).
        c.policy.max_incoming_handshakes = 1000;
        c.policy.max_incoming_handshakes_per_netgroup = Some(1000);
    })
    .await;
    b.measure_before().await;
    let w = b.window();
    // Two per address (the per-address cap), 200 addresses.
    let addr = b.addr();
    let closed_after: Vec<Duration> =
        futures_util::future::join_all((0..SILENT).map(|i| async move {
            // From before the connect: the node's timer starts at its accept, later.
            let opened = Instant::now();
            let mut s = connect_from(attacker_ip(1, i / 2), addr).await.unwrap();
            // Reads (the node's connection message) but never writes.
            tokio::time::timeout(LIMIT, wait_closed(&mut s))
                .await
                .expect("a silent connection outlived the authentication timeout");
            opened.elapsed()
        }))
        .await;
    let during = b.during(w).await;
    b.log
        .wait("every silent connection failed its handshake", |t| {
            t.handshake_failed.len() >= SILENT
        })
        .await;
    let (timeouts, others) = b.log.with(|t| {
        let timeouts = t
            .handshake_failed
            .iter()
            .filter(|(_, e)| is_timeout(e))
            .count();
        (
            timeouts,
            t.handshake_failed.len() - timeouts + t.refused.len(),
        )
    });
    let first = closed_after.iter().min().unwrap();
    let last = closed_after.iter().max().unwrap();
    let greylisted = b.node.handle.greylisted_ips().await.0;
    eprintln!(
        "[slowloris] {SILENT} silent connections: {timeouts} closed at the timeout, {others} otherwise; closed {:.2}–{:.2} s after opening (timeout {AUTH:?}); {} addresses greylisted",
        first.as_secs_f64(),
        last.as_secs_f64(),
        greylisted.len()
    );
    assert_eq!((timeouts, others), (SILENT, 0));
    assert!(*first >= AUTH, "closed early");
    assert!(*last <= AUTH + Duration::from_secs(3), "closed late");
    assert!(greylisted.is_empty(), "a timeout greylisted {greylisted:?}");
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(128 << 20);
    b.finish().await;
}

/// 5 000 connection attempts in two seconds (waves of 250 every 100 ms) from 250
/// addresses while 20 established peers exchange messages; default caps on handshakes in
/// flight, so most are refused at accept. Half the addresses send a garbage connection
/// message (their address is greylisted, later attempts from it refused at accept); the
/// others close at once (nothing greylisted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_5000_connection_attempts_while_20_peers_exchange() {
    const ATTEMPTS: usize = 5000;
    const ADDRS: usize = 250;
    const CONCURRENCY: usize = 250;
    const SPREAD: Duration = Duration::from_secs(2);
    crate::logs::install();
    let mut b = Bench::start("flood", 12, 20, |_| {}).await;
    b.measure_before().await;
    let w = b.window();
    let lines_before = crate::logs::lines();
    let t0 = Instant::now();
    let addr = b.addr();
    let connected = futures_util::stream::iter(0..ATTEMPTS)
        .map(|k| async move {
            // In waves of 250 at once (beyond the caps on handshakes in flight), spread over
            // SPREAD so the honest peers are measured under a sustained flood.
            let wave = (k / ADDRS) as u32;
            tokio::time::sleep_until(t0 + SPREAD * wave / (ATTEMPTS / ADDRS) as u32).await;
            let a = k % ADDRS;
            let Ok(mut s) = connect_from(attacker_ip(1, a), addr).await else {
                return false;
            };
            if a % 2 == 1 {
                let _ = s.write_all(&GARBAGE).await;
            }
            true
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let flood_time = t0.elapsed();
    b.log
        .wait("every attempt refused or failed", |t| {
            t.refused.len() + t.handshake_failed.len() >= connected
        })
        .await;
    let lines = crate::logs::lines() - lines_before;
    let during = b.during(w).await;
    let garbage_ip = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[3] % 2 == 0,
        IpAddr::V6(_) => false,
    };
    let (refusals, failures, invalid_ips) = b.log.with(|t| {
        let mut refusals: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (_, r) in &t.refused {
            let kind = match r {
                Refusal::TooManyIncomingHandshakes => "too many handshakes",
                Refusal::TooManyHandshakesFromAddr => "too many from the address",
                Refusal::TooManyHandshakesFromNetgroup(_) => "too many from the netgroup",
                Refusal::Pool(PoolError::PointBanned(_)) => "greylisted address",
                _ => "other",
            };
            *refusals.entry(kind).or_default() += 1;
        }
        let mut failures: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut invalid_ips = HashSet::new();
        for (remote, e) in &t.handshake_failed {
            let kind = match e {
                ConnectError::Handshake(SocketError::Handshake(
                    HandshakeError::InvalidConnectionMessage(_),
                )) => {
                    invalid_ips.insert(remote.ip());
                    "invalid connection message"
                }
                ConnectError::Handshake(SocketError::ClosedDuringHandshake) => "closed",
                ConnectError::Handshake(SocketError::Io(_)) => "i/o error",
                _ => "other",
            };
            *failures.entry(kind).or_default() += 1;
        }
        (refusals, failures, invalid_ips)
    });
    let greylisted: HashSet<IpAddr> = b.node.handle.greylisted_ips().await.0.into_iter().collect();
    eprintln!(
        "[flood] {ATTEMPTS} attempts from {ADDRS} addresses in {:.2} s ({:.0}/s), {connected} connected; refused at accept: {refusals:?}; handshakes failed: {failures:?}; {} addresses greylisted; events lost {}; log lines at info and above {lines}",
        flood_time.as_secs_f64(),
        ATTEMPTS as f64 / flood_time.as_secs_f64(),
        greylisted.len(),
        b.log.with(|t| t.lagged)
    );
    // Refusals and failed attempts are routine: logged at debug level and summarised once
    // a minute, so the flood writes a handful of lines, not one per attempt.
    assert!(
        lines < 50,
        "{lines} log lines at info level or above for {connected} attempts"
    );
    // Attempt k is from address k % 250, i.e. 127.0.1.(1 + k % 250): the odd k (even
    // last byte) sent garbage.
    assert!(connected >= ATTEMPTS * 99 / 100, "{connected} connected");
    assert_eq!(failures.get("other"), None, "{failures:?}");
    assert_eq!(refusals.get("other"), None, "{refusals:?}");
    assert!(!invalid_ips.is_empty());
    assert!(invalid_ips.iter().all(|ip| garbage_ip(*ip)));
    assert!(
        invalid_ips.is_subset(&greylisted),
        "an address that sent garbage is not greylisted"
    );
    assert!(
        greylisted.iter().all(|ip| garbage_ip(*ip)),
        "an address that only closed was greylisted"
    );
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(128 << 20);
    b.finish().await;
}

/// A recorded session replayed byte for byte from other addresses, the node's own
/// connection message and metadata reflected back to it, and a connection message sent
/// twice: none gets past the metadata (the replayer does not have the key; the nonces
/// differ each way), the handshake fails as garbage and the address is greylisted
/// (BEHAVIOUR.md §5). The replayed peer itself is not greylisted and stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_reflected_connection_messages() {
    const EACH: usize = 8;
    let mut b = Bench::start("replay", 13, 3, |_| {}).await;
    b.measure_before().await;
    // A real session, its bytes recorded.
    let original = crate::common::identity(500);
    let stream = connect_from(attacker_ip(1, 0), b.addr()).await.unwrap();
    let mut raw = Raw::handshake(stream, &original, false).await.unwrap();
    raw.send_chunk(&AckMessage::Ack.encode()).await.unwrap();
    let ack = AckMessage::decode(&raw.recv_chunk().await.unwrap()).unwrap();
    assert_eq!(ack, AckMessage::Ack);
    b.log
        .wait("the recorded session is established", |t| {
            t.established.iter().any(|(p, _)| *p == original.peer_id)
        })
        .await;
    let recorded = raw.sent.clone();
    let w = b.window();
    let addr = b.addr();
    let mut attackers: Vec<(&str, Ipv4Addr)> = Vec::new();
    for (round, kind) in ["replay", "reflection", "twice"].into_iter().enumerate() {
        // Each from a /16 of its own: eight at once fit the caps on handshakes in flight.
        let ips: Vec<Ipv4Addr> = (0..EACH)
            .map(|i| Ipv4Addr::new(127, 20 + (round * EACH + i) as u8, 0, 1))
            .collect();
        let recorded = &recorded;
        futures_util::future::join_all(ips.iter().map(|&ip| async move {
            let mut s = connect_from(ip, addr).await.unwrap();
            match kind {
                "replay" => s.write_all(recorded).await.unwrap(),
                "reflection" => {
                    let theirs = read_frame(&mut s).await.unwrap();
                    s.write_all(&theirs).await.unwrap();
                    let metadata = read_frame(&mut s).await.unwrap();
                    let _ = s.write_all(&metadata).await;
                }
                _ => {
                    let ours = connection_frame(&crate::common::identity(501), [1; 24]);
                    s.write_all(&ours).await.unwrap();
                    let _ = s.write_all(&ours).await;
                }
            }
            tokio::time::timeout(LIMIT, wait_closed(&mut s))
                .await
                .expect("the node closes a replay");
        }))
        .await;
        b.log
            .wait("every replay failed its handshake", |t| {
                ips.iter().all(|ip| {
                    t.handshake_failed
                        .iter()
                        .any(|(a, _)| a.ip() == IpAddr::V4(*ip))
                })
            })
            .await;
        attackers.extend(ips.into_iter().map(|ip| (kind, ip)));
    }
    let during = b.during(w).await;
    let greylisted: HashSet<IpAddr> = b.node.handle.greylisted_ips().await.0.into_iter().collect();
    b.log.with(|t| {
        for (kind, ip) in &attackers {
            let (_, e) = t
                .handshake_failed
                .iter()
                .find(|(a, _)| a.ip() == IpAddr::V4(*ip))
                .unwrap();
            assert!(is_invalid_metadata(e), "{kind} from {ip}: {e}");
            assert!(
                greylisted.contains(&IpAddr::V4(*ip)),
                "{kind} from {ip} not greylisted"
            );
        }
        assert!(t.refused.is_empty(), "refused at accept: {:?}", t.refused);
    });
    let peers = b.node.handle.greylisted_peers().await;
    eprintln!(
        "[replay] {} replays, {} reflections, {} doubled connection messages: all failed as invalid metadata; {} addresses and {} peers greylisted",
        EACH,
        EACH,
        EACH,
        greylisted.len(),
        peers.len()
    );
    assert!(
        !peers.contains(&original.peer_id),
        "a replay greylisted its victim"
    );
    assert!(b.node.handle.connection(&original.peer_id).is_some());
    assert_eq!(greylisted.len(), 3 * EACH);
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    drop(raw);
    b.finish().await;
}
