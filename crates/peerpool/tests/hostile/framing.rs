//! Hostile framing from many established sessions at once: chunks announced and never
//! sent, messages announced far longer than the application's maximum, maximal messages
//! sent very slowly.

use crate::bench::*;
use peerpool::CloseReason;
use peerpool_proto::framing::FramingError;
use peerpool_proto::identity::PeerId;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How long the hostile sessions hold the node in the tests below.
const HOLD: Duration = Duration::from_secs(3);

/// Waits until every attacker's connection has closed; returns their close reasons.
async fn closed(b: &Bench, ids: &[PeerId]) -> Vec<CloseReason> {
    b.log
        .wait("every attacker's connection closed", |t| {
            ids.iter().all(|id| t.closed_reason(id).is_some())
        })
        .await;
    b.log.with(|t| {
        ids.iter()
            .map(|id| t.closed_reason(id).unwrap().clone())
            .collect()
    })
}

/// 100 sessions each announce a chunk of 65535 bytes, send 1000, and hang. The node waits
/// for the rest as octez does (no timeout after the handshake; BEHAVIOUR.md §5 greylists
/// nothing for it): honest peers are unaffected, memory stays bounded, and when the
/// attackers go away their connections close (EOF), nobody greylisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_announced_and_never_sent_from_100_connections() {
    const N: usize = 100;
    let mut b = Bench::start("chunk never sent", 21, 3, |_| {}).await;
    let mut attackers = b.sessions(2, 2100, N).await;
    b.measure_before().await;
    let w = b.window();
    let mut truncated = vec![0xff, 0xff];
    truncated.extend_from_slice(&[0x42; 1000]);
    for a in &mut attackers {
        a.est.stream.write_all(&truncated).await.unwrap();
    }
    // The attack lasts while the sessions hang; the honest peers keep going meanwhile.
    tokio::time::sleep(HOLD).await;
    let open_at_end = attackers
        .iter()
        .filter(|a| b.node.handle.connection(&a.peer_id).is_some())
        .count();
    let during = b.during(w).await;
    let ids: Vec<PeerId> = attackers.iter().map(|a| a.peer_id).collect();
    let ips: Vec<IpAddr> = attackers.iter().map(|a| IpAddr::V4(a.ip)).collect();
    drop(attackers);
    let reasons = closed(&b, &ids).await;
    let eof = reasons.iter().filter(|r| **r == CloseReason::Eof).count();
    let greylisted_peers = b.node.handle.greylisted_peers().await;
    let greylisted_ips = b.node.handle.greylisted_ips().await.0;
    eprintln!(
        "[chunk never sent] {N} sessions hung mid-chunk for {HOLD:?}: {open_at_end} still open at the end (no read timeout after the handshake, as octez); after they left, {eof} closed with EOF; greylisted: {} peers, {} addresses",
        greylisted_peers.len(),
        greylisted_ips.len()
    );
    assert_eq!(eof, N, "{reasons:?}");
    assert!(ids.iter().all(|id| !greylisted_peers.contains(id)));
    assert!(ips.iter().all(|ip| !greylisted_ips.contains(ip)));
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(128 << 20);
    b.finish().await;
}

/// 100 sessions at once each send a valid chunk announcing a 50 MiB message (above the
/// application's 1 MiB, below the 100 MiB envelope bound). Each is refused from its
/// length, before any body is buffered: closed as a protocol error, the peer and its
/// address greylisted (BEHAVIOUR.md §5), and a new connection from the address refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_announced_far_longer_than_the_maximum_from_100_connections() {
    const N: usize = 100;
    let mut b = Bench::start("oversized", 22, 3, |_| {}).await;
    let mut attackers = b.sessions(3, 2200, N).await;
    b.measure_before().await;
    let w = b.window();
    futures_util::future::join_all(attackers.iter_mut().map(|a| async move {
        let mut plain = (50u32 << 20).to_be_bytes().to_vec();
        plain.extend_from_slice(&0x1234u16.to_be_bytes());
        plain.extend_from_slice(&[0x55; 60_000]);
        let mut wire = Vec::new();
        a.est.session.sealer.seal_chunk(&plain, &mut wire);
        let _ = a.est.stream.write_all(&wire).await;
    }))
    .await;
    let ids: Vec<PeerId> = attackers.iter().map(|a| a.peer_id).collect();
    let reasons = closed(&b, &ids).await;
    let during = b.during(w).await;
    let too_large = reasons
        .iter()
        .filter(|r| {
            matches!(
                r,
                CloseReason::Protocol(FramingError::MessageTooLarge { .. })
            )
        })
        .count();
    let greylisted_peers: HashSet<PeerId> =
        b.node.handle.greylisted_peers().await.into_iter().collect();
    let greylisted_ips: HashSet<IpAddr> =
        b.node.handle.greylisted_ips().await.0.into_iter().collect();
    let peers_listed = ids
        .iter()
        .filter(|id| greylisted_peers.contains(id))
        .count();
    let ips_listed = attackers
        .iter()
        .filter(|a| greylisted_ips.contains(&IpAddr::V4(a.ip)))
        .count();
    eprintln!(
        "[oversized] {N} sessions announced 50 MiB messages: {too_large} closed as too large; greylisted: {peers_listed} of their peers, {ips_listed} of their addresses"
    );
    assert_eq!(too_large, N, "{reasons:?}");
    assert_eq!((peers_listed, ips_listed), (N, N));
    // A greylisted address is refused at accept.
    let again = crate::raw::connect_from(attackers[0].ip, b.addr()).await;
    if let Ok(mut s) = again {
        crate::raw::wait_closed(&mut s).await;
    }
    let refused_ip = IpAddr::V4(attackers[0].ip);
    b.log
        .wait("a greylisted address is refused", |t| {
            t.refused.iter().any(|(a, _)| a.ip() == refused_ip)
        })
        .await;
    b.check_during(during, Duration::from_secs(2));
    b.check_memory(64 << 20);
    drop(attackers);
    b.finish().await;
}

/// 100 sessions at once each start a maximal message (1 MiB, the application's maximum)
/// and send its body very slowly. The node reserves each message from its budget before
/// buffering its body, so at most six are being read at a time and the rest wait
/// unread: the node's buffered bytes stay within its message share throughout. A slow
/// peer is not a faulty one (BEHAVIOUR.md §5): when the attackers leave, their
/// connections close with EOF and nobody is greylisted. The honest peers, whose
/// messages need the same budget, must keep flowing meanwhile: so far they do not (the
/// waiting readers hold the budget's queue, the honest ones wait behind them until a slow
/// message completes), which this test reports; docs/RELIABILITY-hostile.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_messages_sent_slowly_from_100_connections() {
    const N: usize = 100;
    /// Plaintext bytes per chunk, and chunks per second, of each slow sender.
    const SLICE: usize = 1024;
    const PERIOD: Duration = Duration::from_millis(100);
    let mut b = Bench::start("slow maximal message", 23, 3, |_| {}).await;
    let attackers = b.sessions(4, 2300, N).await;
    b.measure_before().await;
    let w = b.window();
    let stop = Instant::now() + HOLD;
    let senders: Vec<_> = attackers
        .into_iter()
        .map(|mut a| {
            tokio::spawn(async move {
                // The envelope's length, the tag, then the body a slice at a time.
                let mut first = (MAX_MESSAGE as u32).to_be_bytes().to_vec();
                first.extend_from_slice(&0x200u16.to_be_bytes());
                let mut sent = 0u64;
                let mut wire = Vec::new();
                a.est.session.sealer.seal_chunk(&first, &mut wire);
                let mut next = Instant::now();
                while next < stop {
                    if a.est.stream.write_all(&wire).await.is_err() {
                        break;
                    }
                    sent += wire.len() as u64;
                    wire.clear();
                    a.est.session.sealer.seal_chunk(&[0x77; SLICE], &mut wire);
                    next += PERIOD;
                    tokio::time::sleep_until(next).await;
                }
                (a, sent)
            })
        })
        .collect();
    let mut attackers = Vec::new();
    let mut sent = 0;
    for s in senders {
        let (a, n) = s.await.unwrap();
        sent += n;
        attackers.push(a);
    }
    let during = b.during(w).await;
    let buffered_during = b.max_buffered();
    // The node's own count of what it read from each: a connection waiting for the budget
    // has given only its first chunk (length and tag, 24 bytes on the wire).
    let read: Vec<u64> = attackers
        .iter()
        .map(|a| {
            let c = b.node.handle.connection(&a.peer_id).unwrap();
            c.stats()
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .collect();
    let being_read = read.iter().filter(|&&n| n > 24).count();
    let ids: Vec<PeerId> = attackers.iter().map(|a| a.peer_id).collect();
    let ips: Vec<IpAddr> = attackers.iter().map(|a| IpAddr::V4(a.ip)).collect();
    drop(attackers);
    let reasons = closed(&b, &ids).await;
    let eof = reasons.iter().filter(|r| **r == CloseReason::Eof).count();
    let greylisted_peers = b.node.handle.greylisted_peers().await;
    let greylisted_ips = b.node.handle.greylisted_ips().await.0;
    eprintln!(
        "[slow maximal message] {N} sessions sent {} KiB of 1 MiB messages in {HOLD:?}; the node read {} KiB of it, from {being_read} connections (the others wait for the budget, unread); node buffered at most {} KiB (share {} KiB); after they left, {eof} closed with EOF; greylisted: {} peers, {} addresses",
        sent / 1024,
        read.iter().sum::<u64>() / 1024,
        buffered_during / 1024,
        SHARE / 1024,
        greylisted_peers.len(),
        greylisted_ips.len()
    );
    assert!(buffered_during <= SHARE);
    // As many messages as the share holds (five of 1 MiB and its prefix in 6 MiB).
    assert!(
        being_read <= SHARE / MAX_MESSAGE,
        "{being_read} connections read at once"
    );
    assert_eq!(eof, N, "{reasons:?}");
    assert!(ids.iter().all(|id| !greylisted_peers.contains(id)));
    assert!(ips.iter().all(|ip| !greylisted_ips.contains(ip)));
    b.check_memory(128 << 20);
    b.check_during(during, Duration::from_secs(2));
    b.finish().await;
}
