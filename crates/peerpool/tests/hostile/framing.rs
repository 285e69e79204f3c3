//! Hostile framing from many established sessions at once: chunks announced and never
//! sent, messages announced far longer than the application's maximum, maximal messages
//! sent very slowly.

use crate::bench::*;
use crate::common::{config, connected, start};
use peerpool::CloseReason;
use peerpool_proto::framing::FramingError;
use peerpool_proto::identity::PeerId;
use peerpool_proto::policy::DisconnectReason;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
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

/// Each attacker starts a maximal message (its length and tag) and sends its body a 1 KiB
/// chunk every 100 ms until `stop` or until the node closes the connection; each task
/// gives back its attacker and the bytes it wrote.
fn trickle(attackers: Vec<Attacker>, stop: Instant) -> Vec<JoinHandle<(Attacker, u64)>> {
    const SLICE: usize = 1024;
    const PERIOD: Duration = Duration::from_millis(100);
    attackers
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
        .collect()
}

/// 100 sessions at once each start a maximal message (1 MiB, the application's maximum)
/// and send its body very slowly. The node reserves each message from its budget before
/// buffering its body, so at most five are being read at a time and the rest wait
/// unread: the node's buffered bytes stay within its message share throughout. A slow
/// peer is not a faulty one (BEHAVIOUR.md §5): when the attackers leave, their
/// connections close with EOF and nobody is greylisted (the attack is shorter than the
/// slow-message deadline, 26 s for 1 MiB by default). The honest peers' small messages,
/// which need the same budget, keep flowing meanwhile through its small-message lane
/// (docs/RELIABILITY.md §2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_messages_sent_slowly_from_100_connections() {
    const N: usize = 100;
    let mut b = Bench::start("slow maximal message", 23, 3, |_| {}).await;
    let attackers = b.sessions(4, 2300, N).await;
    b.measure_before().await;
    let w = b.window();
    let senders = trickle(attackers, Instant::now() + HOLD);
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

/// Ten sessions each start a maximal message (1 MiB) and trickle its body, with the rule
/// on slow messages tightened (1 s of grace and 1 MiB/s: a 1 MiB message is due 2 s after
/// its reservation is granted). Five hold the large part of the budget and five wait
/// behind them; then a peer sends a 512 KiB message. Once their deadline passes while
/// others wait, the holders are closed as too slow, the next five in turn, and the honest
/// large message goes through; nobody is greylisted. Without the rule it waits for as
/// long as the trickling lasts (15 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_gets_past_slow_senders_holding_the_budget() {
    const N: usize = 10;
    const TRICKLE: Duration = Duration::from_secs(15);
    const LARGE: usize = 512 << 10;
    let mut b = Bench::start("slow senders cut", 25, 3, |c| {
        c.queues.slow_message_rate = Some(1 << 20);
        c.queues.slow_message_grace = Duration::from_secs(1);
    })
    .await;
    let attackers = b.sessions(6, 2500, N).await;
    let ids: Vec<PeerId> = attackers.iter().map(|a| a.peer_id).collect();
    let ips: Vec<IpAddr> = attackers.iter().map(|a| IpAddr::V4(a.ip)).collect();
    b.measure_before().await;
    let w = b.window();
    let senders = trickle(attackers, Instant::now() + TRICKLE);
    // Five messages reserved (the large part of the 6 MiB share holds five of 1 MiB).
    let node = b.node.handle.clone();
    tokio::time::timeout(LIMIT, async {
        while node.buffered_bytes() < 5 * MAX_MESSAGE {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the slow senders' messages were never reserved");
    // A peer with a large message, queued behind the five waiting senders.
    let peer = start(config(2599, &honest_ip(40))).await;
    peer.handle
        .connect(peerpool_proto::point::Point::from(b.addr()), None)
        .await
        .unwrap();
    let to_node = connected(&peer.handle, node.peer_id()).await;
    let t0 = Instant::now();
    to_node
        .send(&peerpool_proto::message::RawMessage {
            tag: ECHO_TAG,
            body: vec![0x42; LARGE],
        })
        .await
        .unwrap();
    // The node's application echoes it: its arrival here is the sign it got through.
    tokio::time::timeout(TRICKLE, async {
        while to_node.recv().await.unwrap().body.len() != LARGE {}
    })
    .await
    .expect("the large message did not get past the slow senders");
    let took = t0.elapsed();
    let during = b.during(w).await;
    for s in &senders {
        s.abort();
    }
    let reasons = closed(&b, &ids).await;
    let slow = reasons
        .iter()
        .filter(|r| **r == CloseReason::Local(DisconnectReason::SlowMessage))
        .count();
    let greylisted_peers = b.node.handle.greylisted_peers().await;
    let greylisted_ips = b.node.handle.greylisted_ips().await.0;
    eprintln!(
        "[slow senders cut] {N} sessions trickling 1 MiB messages; a 512 KiB message got through and back in {:.2} s; {slow} senders closed as too slow, {} otherwise; greylisted: {} peers, {} addresses",
        took.as_secs_f64(),
        N - slow,
        greylisted_peers.len(),
        greylisted_ips.len()
    );
    // At least the five first holders were cut at their deadline; those holding when the
    // large message had its reservation (nobody waiting any more) were not, and closed
    // when their senders left.
    assert!(slow >= 5, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| matches!(
            r,
            CloseReason::Local(DisconnectReason::SlowMessage)
                | CloseReason::Eof
                | CloseReason::Io(_)
        )),
        "{reasons:?}"
    );
    assert!(ids.iter().all(|id| !greylisted_peers.contains(id)));
    assert!(ips.iter().all(|ip| !greylisted_ips.contains(ip)));
    b.check_memory(128 << 20);
    b.check_during(during, Duration::from_secs(2));
    peer.handle.shutdown().await;
    b.finish().await;
}
