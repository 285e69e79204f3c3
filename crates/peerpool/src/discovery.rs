//! Local discovery (BEHAVIOUR.md §8, octez `P2p_discovery`): a node announces itself on
//! its local network with UDP datagrams and reports the points it hears about.
//!
//! [`Discovery::start`] binds one UDP socket and spawns two tasks on it:
//!
//! - the **answer worker** reads datagrams; each well-formed announcement
//!   ([`DiscoveryMessage`]) from another peer id becomes a [`Point`] (the datagram's source
//!   IP address, the announced TCP port) sent to the `found` channel. Anything else is
//!   ignored and counted ([`DiscoveryStats`]).
//! - the **sender worker** sends our announcement to the configured target (a broadcast
//!   address in production) on the backoff of [`SenderSchedule`]: 0.1 s, 0.2 s, … 51.2 s
//!   by default; [`Discovery::wake`] restarts it with an immediate send.
//!
//! Differences from octez, all deliberate: octez builds these workers but never activates
//! them, so its discovery never runs; ours runs once started. The announced port is
//! unsigned (octez's is a signed 16-bit integer). An announced port of 0 is ignored (no
//! one can dial it). The sender uses the bound socket rather than a fresh socket per
//! send, so the source port of an announcement is the discovery port; receivers only use
//! the source IP address.
//!
//! Whether a reported point is trusted (octez: only in sandbox mode) is the caller's
//! decision. Time comes only from `tokio::time`, so a paused clock or a simulator drives
//! the sender's delays.

use peerpool_proto::discovery::{
    DiscoveryMessage, SenderSchedule, DEFAULT_INITIAL_DELAY, DEFAULT_SENDS_BEFORE_CAP,
    DISCOVERY_MESSAGE_LEN,
};
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace};

/// Pause after a failed receive, so that a persistent socket error does not spin.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where local discovery listens and announces, and how often (BEHAVIOUR.md §8). Plain
/// data; [`DiscoveryConfig::new`] gives octez's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The address the UDP socket is bound to, for both receiving and sending.
    /// octez: `0.0.0.0:discovery_port` (default port [`DEFAULT_DISCOVERY_PORT`](peerpool_proto::discovery::DEFAULT_DISCOVERY_PORT), 10732).
    /// The socket has `SO_REUSEADDR`, so several nodes on one host can bind the same
    /// port, and `SO_BROADCAST` when the address is IPv4. Port 0 picks a free port (see
    /// [`Discovery::local_addr`]).
    pub bind: SocketAddr,
    /// Where announcements are sent: octez's `discovery_addr:discovery_port`, an IPv4
    /// broadcast address in production. A port of 0 means "the port `bind` ended up
    /// with", so that nodes sharing one discovery port can be configured before binding.
    pub target: SocketAddr,
    /// The delay before the first announcement, which then doubles after each send.
    /// octez: [`DEFAULT_INITIAL_DELAY`] (0.1 s).
    pub initial_delay: Duration,
    /// How many announcements double the delay before it stays put (see
    /// [`SenderSchedule::new`]). octez: [`DEFAULT_SENDS_BEFORE_CAP`] (10), so the delay
    /// stays at 51.2 s.
    pub sends_before_cap: u32,
}

impl DiscoveryConfig {
    /// octez's discovery on `port` (its default is [`DEFAULT_DISCOVERY_PORT`](peerpool_proto::discovery::DEFAULT_DISCOVERY_PORT), 10732):
    /// bound to the unspecified address of `discovery_addr`'s family (`0.0.0.0` or `::`)
    /// on `port`, announcing to `discovery_addr:port` with the default backoff.
    pub fn new(discovery_addr: IpAddr, port: u16) -> Self {
        let any = match discovery_addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        DiscoveryConfig {
            bind: SocketAddr::new(any, port),
            target: SocketAddr::new(discovery_addr, port),
            initial_delay: DEFAULT_INITIAL_DELAY,
            sends_before_cap: DEFAULT_SENDS_BEFORE_CAP,
        }
    }
}

/// What local discovery did since it started: a snapshot of its counters
/// ([`Discovery::stats`]). Every count is of datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Announcements sent.
    pub sent: u64,
    /// Announcements whose send failed (logged at debug; the sender goes on).
    pub send_errors: u64,
    /// Points handed to the `found` channel.
    pub reported: u64,
    /// Well-formed announcements from others dropped because `found` was full.
    pub dropped_full: u64,
    /// Datagrams ignored because they are not 28 bytes or lack the magic.
    pub malformed: u64,
    /// Announcements ignored because they carry our own peer id (our own broadcast, or
    /// another process with our identity).
    pub own: u64,
    /// Announcements ignored because they announce port 0.
    pub port_zero: u64,
    /// Failed receives (logged at debug; the worker pauses briefly and goes on).
    pub receive_errors: u64,
}

/// The live counters behind [`DiscoveryStats`].
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    reported: AtomicU64,
    dropped_full: AtomicU64,
    malformed: AtomicU64,
    own: AtomicU64,
    port_zero: AtomicU64,
    receive_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DiscoveryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiscoveryStats {
            sent: get(&self.sent),
            send_errors: get(&self.send_errors),
            reported: get(&self.reported),
            dropped_full: get(&self.dropped_full),
            malformed: get(&self.malformed),
            own: get(&self.own),
            port_zero: get(&self.port_zero),
            receive_errors: get(&self.receive_errors),
        }
    }
}

/// Running local discovery: a handle to wake its sender and read its counters
/// (BEHAVIOUR.md §8). Cloning gives another handle to the same workers; dropping every
/// handle does not stop them (the `stop` token given to [`start`](Self::start) does).
#[derive(Debug, Clone)]
pub struct Discovery {
    wake: Arc<Notify>,
    counters: Arc<Counters>,
    local_addr: SocketAddr,
    target: SocketAddr,
}

impl Discovery {
    /// Binds the discovery socket to `config.bind` and spawns the answer and sender
    /// workers on `tracker`; both end when `stop` is cancelled, and the socket is closed
    /// when both have ended. The answer worker also ends if `found`'s receiver is dropped.
    ///
    /// We announce `our_peer_id` and `our_port` (our TCP listening port). Each point heard
    /// of is offered to `found` without waiting: when the channel is full the point is
    /// dropped and counted ([`DiscoveryStats::dropped_full`]); a later announcement brings
    /// it again.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error of creating, configuring (`SO_REUSEADDR`, `SO_BROADCAST`) or binding
    /// the socket, e.g. `AddrInUse` when another socket without `SO_REUSEADDR` holds the
    /// address. Nothing is spawned then.
    pub async fn start(
        config: DiscoveryConfig,
        our_peer_id: PeerId,
        our_port: u16,
        found: mpsc::Sender<Point>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> io::Result<Discovery> {
        let socket = Arc::new(bind_socket(config.bind)?);
        let local_addr = socket.local_addr()?;
        let target = if config.target.port() == 0 {
            SocketAddr::new(config.target.ip(), local_addr.port())
        } else {
            config.target
        };
        let discovery = Discovery {
            wake: Arc::new(Notify::new()),
            counters: Arc::new(Counters::default()),
            local_addr,
            target,
        };
        debug!(%local_addr, %target, "local discovery started");
        tracker.spawn(answer(
            Arc::clone(&socket),
            our_peer_id,
            found,
            Arc::clone(&discovery.counters),
            stop.clone(),
        ));
        let announcement = DiscoveryMessage {
            peer_id: our_peer_id,
            port: our_port,
        }
        .encode();
        tracker.spawn(send(
            socket,
            target,
            announcement,
            SenderSchedule::new(config.initial_delay, config.sends_before_cap),
            Arc::clone(&discovery.wake),
            Arc::clone(&discovery.counters),
            stop,
        ));
        Ok(discovery)
    }

    /// Restarts the sender's backoff with an immediate announcement, then the initial
    /// delay, doubling again (BEHAVIOUR.md §8: the maintenance wakes discovery when it is
    /// short of peers). Wakes that come before the sender gets to them count as one.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The address the socket is bound to (its port is the chosen one when
    /// `config.bind` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where announcements go: `config.target`, with port 0 replaced by the bound port.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The counters so far.
    pub fn stats(&self) -> DiscoveryStats {
        self.counters.snapshot()
    }
}

/// A non-blocking UDP socket bound to `addr`, with `SO_REUSEADDR`, and `SO_BROADCAST`
/// when IPv4 (BEHAVIOUR.md §8).
fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The answer worker: reads announcements and reports the points of the others.
async fn answer(
    socket: Arc<UdpSocket>,
    our_peer_id: PeerId,
    found: mpsc::Sender<Point>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    // One byte more than an announcement: a longer datagram is truncated to 29 bytes
    // and so still refused for its length.
    let mut buf = [0u8; DISCOVERY_MESSAGE_LEN + 1];
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, from) = match received {
            Ok(got) => got,
            Err(e) => {
                debug!(error = %e, "discovery receive failed");
                Counters::bump(&counters.receive_errors);
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => continue,
                }
            }
        };
        let message = match DiscoveryMessage::decode(buf.get(..len).unwrap_or(&buf)) {
            Ok(message) => message,
            Err(e) => {
                trace!(%from, error = %e, "ignored a datagram");
                Counters::bump(&counters.malformed);
                continue;
            }
        };
        if message.peer_id == our_peer_id {
            Counters::bump(&counters.own);
            continue;
        }
        if message.port == 0 {
            trace!(%from, peer_id = %message.peer_id, "ignored an announcement of port 0");
            Counters::bump(&counters.port_zero);
            continue;
        }
        let point = Point::new(from.ip(), message.port);
        match found.try_send(point) {
            Ok(()) => {
                trace!(%point, peer_id = %message.peer_id, "discovered");
                Counters::bump(&counters.reported);
            }
            Err(mpsc::error::TrySendError::Full(_)) => Counters::bump(&counters.dropped_full),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!("nobody takes discovered points any more; the answer worker stops");
                return;
            }
        }
    }
}

/// The sender worker: announces us on `schedule`, at once after a wake.
async fn send(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    announcement: [u8; DISCOVERY_MESSAGE_LEN],
    mut schedule: SenderSchedule,
    wake: Arc<Notify>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let delay = schedule.next_delay();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = wake.notified() => {
                schedule.wake();
                continue;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        let sent = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = socket.send_to(&announcement, target) => r,
        };
        match sent {
            Ok(_) => Counters::bump(&counters.sent),
            Err(e) => {
                debug!(%target, error = %e, "discovery announcement failed");
                Counters::bump(&counters.send_errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let (discovery, _found, tracker, stop) =
            start_one(sink.local_addr().unwrap(), NEVER, 16).await;
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
        let (first, _found, _tracker, _stop) =
            start_one(sink.local_addr().unwrap(), NEVER, 16).await;
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
}
