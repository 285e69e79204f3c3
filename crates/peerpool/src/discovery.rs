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
mod tests;
