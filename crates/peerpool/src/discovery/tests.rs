use super::*;
use peerpool_proto::discovery::DEFAULT_DISCOVERY_PORT;
use std::future::Future;

/// Safety net for waits on events that should come within milliseconds.
const SAFETY: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// Long enough that the sender never sends on its own during a test.
const NEVER: Duration = Duration::from_secs(3600);

fn id(byte: u8) -> PeerId {
    PeerId([byte; 16])
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn config(bind: &str, target: SocketAddr, initial_delay: Duration) -> DiscoveryConfig {
    DiscoveryConfig {
        bind: bind.parse().unwrap(),
        target,
        initial_delay,
        sends_before_cap: DEFAULT_SENDS_BEFORE_CAP,
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(SAFETY, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn next_point(found: &mut mpsc::Receiver<Point>) -> Point {
    within("a discovered point", found.recv())
        .await
        .expect("the answer worker is gone")
}

/// A plain socket standing for another node (or a stranger) on 127.0.0.1.
async fn stranger() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn announce(peer_id: PeerId, port: u16) -> [u8; DISCOVERY_MESSAGE_LEN] {
    DiscoveryMessage { peer_id, port }.encode()
}

/// Starts discovery for `id(1)` announcing port 9732, on 127.0.0.1, announcing to
/// `target` after `initial_delay`.
async fn start_one(
    target: SocketAddr,
    initial_delay: Duration,
    capacity: usize,
) -> (
    Discovery,
    mpsc::Receiver<Point>,
    TaskTracker,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(capacity);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let discovery = Discovery::start(
        config("127.0.0.1:0", target, initial_delay),
        id(1),
        9732,
        tx,
        &tracker,
        stop.clone(),
    )
    .await
    .unwrap();
    (discovery, rx, tracker, stop)
}

#[test]
fn octez_config_binds_the_unspecified_address_and_announces_on_the_same_port() {
    let config = DiscoveryConfig::new(ip("192.0.2.255"), DEFAULT_DISCOVERY_PORT);
    assert_eq!(config.bind, "0.0.0.0:10732".parse().unwrap());
    assert_eq!(config.target, "192.0.2.255:10732".parse().unwrap());
    assert_eq!(config.initial_delay, Duration::from_millis(100));
    assert_eq!(config.sends_before_cap, 10);
    let v6 = DiscoveryConfig::new(ip("ff02::1"), 4000);
    assert_eq!(v6.bind, "[::]:4000".parse().unwrap());
}

#[tokio::test]
async fn two_nodes_announcing_to_each_other_report_each_others_points() {
    // Like two hosts sharing one discovery port: 127.0.0.2 and 127.0.0.3, same port;
    // a target port of 0 stands for that shared port.
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let short = Duration::from_millis(10);
    let (a_tx, mut a_found) = mpsc::channel(16);
    let a = Discovery::start(
        config("127.0.0.2:0", "127.0.0.3:0".parse().unwrap(), short),
        id(0xa),
        40001, // above 32767: octez's signed port could not carry it
        a_tx,
        &tracker,
        stop.clone(),
    )
    .await
    .unwrap();
    let shared_port = a.local_addr().port();
    let (b_tx, mut b_found) = mpsc::channel(16);
    let b = Discovery::start(
        config(
            &format!("127.0.0.3:{shared_port}"),
            "127.0.0.2:0".parse().unwrap(),
            short,
        ),
        id(0xb),
        9732,
        b_tx,
        &tracker,
        stop.clone(),
    )
    .await
    .unwrap();
    assert_eq!(a.target(), b.local_addr());
    assert_eq!(b.target(), a.local_addr());

    // Each hears the other: the sender's IP address, the announced (TCP) port, not
    // the UDP port the datagram came from.
    assert_eq!(
        next_point(&mut a_found).await,
        Point::new(ip("127.0.0.3"), 9732)
    );
    assert_eq!(
        next_point(&mut b_found).await,
        Point::new(ip("127.0.0.2"), 40001)
    );
    assert!(a.stats().sent >= 1 && b.stats().sent >= 1);
    assert!(a.stats().reported >= 1 && b.stats().reported >= 1);

    stop.cancel();
    tracker.close();
    within("the workers to stop", tracker.wait()).await;
}

#[tokio::test]
async fn announcements_with_our_own_peer_id_are_ignored() {
    let sink = stranger().await;
    let (discovery, mut found, _tracker, _stop) =
        start_one(sink.local_addr().unwrap(), NEVER, 16).await;
    let other = stranger().await;
    let to = discovery.local_addr();
    other.send_to(&announce(id(1), 1111), to).await.unwrap(); // ours
    other.send_to(&announce(id(2), 2222), to).await.unwrap();
    // Datagrams from one socket over loopback arrive in order: the first point
    // reported is the one after ours.
    assert_eq!(
        next_point(&mut found).await,
        Point::new(ip("127.0.0.1"), 2222)
    );
    let stats = discovery.stats();
    assert_eq!((stats.own, stats.reported), (1, 1));
}

#[tokio::test]
async fn garbage_is_ignored_and_the_answer_worker_goes_on() {
    let sink = stranger().await;
    let (discovery, mut found, _tracker, _stop) =
        start_one(sink.local_addr().unwrap(), NEVER, 16).await;
    let other = stranger().await;
    let to = discovery.local_addr();
    let good = announce(id(2), 2222);
    let mut wrong_magic = good;
    wrong_magic[0] = b'X';
    let mut one_byte_more = good.to_vec();
    one_byte_more.push(0);
    let mut much_longer = good.to_vec();
    much_longer.resize(1000, 0xee);
    let malformed: [&[u8]; 6] = [
        &[],
        b"DISCO",
        &good[..27],
        &one_byte_more,
        &much_longer,
        &wrong_magic,
    ];
    for datagram in malformed {
        other.send_to(datagram, to).await.unwrap();
    }
    other.send_to(&announce(id(3), 0), to).await.unwrap();
    other.send_to(&good, to).await.unwrap();

    assert_eq!(
        next_point(&mut found).await,
        Point::new(ip("127.0.0.1"), 2222)
    );
    assert!(found.try_recv().is_err(), "nothing else was reported");
    let stats = discovery.stats();
    assert_eq!(
        (
            stats.malformed,
            stats.port_zero,
            stats.reported,
            stats.receive_errors
        ),
        (6, 1, 1, 0)
    );
}

#[tokio::test]
async fn a_point_is_dropped_not_waited_for_when_found_is_full() {
    let sink = stranger().await;
    let (discovery, mut found, _tracker, _stop) =
        start_one(sink.local_addr().unwrap(), NEVER, 1).await;
    let other = stranger().await;
    let to = discovery.local_addr();
    for port in [1001, 1002, 1003] {
        other.send_to(&announce(id(2), port), to).await.unwrap();
    }
    // Wait (yielding to the worker) until it has handled all three: one fits, two
    // are dropped. A worker that waited for room would never get there.
    within("two dropped points", async {
        while discovery.stats().dropped_full < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        next_point(&mut found).await,
        Point::new(ip("127.0.0.1"), 1001)
    );
    // The dropped ones are gone; the next announcement is reported.
    other.send_to(&announce(id(2), 1004), to).await.unwrap();
    assert_eq!(
        next_point(&mut found).await,
        Point::new(ip("127.0.0.1"), 1004)
    );
    let stats = discovery.stats();
    assert_eq!((stats.reported, stats.dropped_full), (2, 2));
}

#[tokio::test]
async fn cancelling_stop_ends_both_workers_and_closes_the_socket() {
    // The sender is in a long sleep and the answer worker in a receive: both must
    // notice the cancellation.
    let sink = stranger().await;
    let (discovery, _found, tracker, stop) = start_one(sink.local_addr().unwrap(), NEVER, 16).await;
    assert_eq!(tracker.len(), 2);
    stop.cancel();
    tracker.close();
    within("the workers to stop", tracker.wait()).await;
    // The address is free again, even for a socket without SO_REUSEADDR.
    std::net::UdpSocket::bind(discovery.local_addr()).unwrap();
}

#[tokio::test]
async fn several_nodes_on_one_host_can_bind_the_same_discovery_port() {
    let sink = stranger().await;
    let (first, _found, _tracker, _stop) = start_one(sink.local_addr().unwrap(), NEVER, 16).await;
    let (tx, _rx) = mpsc::channel(1);
    let tracker = TaskTracker::new();
    let second = Discovery::start(
        DiscoveryConfig {
            bind: first.local_addr(),
            ..config("127.0.0.1:0", sink.local_addr().unwrap(), NEVER)
        },
        id(2),
        9733,
        tx,
        &tracker,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(second.local_addr(), first.local_addr());
}

#[tokio::test]
async fn wake_sends_at_once_even_during_a_long_delay_then_backs_off_again() {
    let sink = stranger().await;
    let (discovery, _found, _tracker, _stop) =
        start_one(sink.local_addr().unwrap(), NEVER, 16).await;
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(QUIET, sink.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing is sent before the (hour-long) initial delay"
    );

    discovery.wake();
    let (len, from) = within("the announcement", sink.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(from, discovery.local_addr());
    assert_eq!(
        DiscoveryMessage::decode(&buf[..len]),
        Ok(DiscoveryMessage {
            peer_id: id(1),
            port: 9732
        })
    );
    // The backoff restarted at the initial delay: no flood after the wake.
    assert!(
        tokio::time::timeout(QUIET, sink.recv_from(&mut buf))
            .await
            .is_err(),
        "one announcement per wake"
    );
    assert_eq!(discovery.stats().sent, 1);
}
