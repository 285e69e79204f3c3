//! [`MemoryNetwork`]: an in-memory transport. Any number of nodes, on any addresses
//! (127.0.0.x, 10.x.y.z …), in one process; streams are `tokio::io::duplex` pairs, so the
//! whole node runs with tokio's paused clock and no socket.
//!
//! Network faults for simulations: [`MemoryNetwork::partition`] splits two sets of
//! addresses (their streams break, their new connections hang until the dialer's timeout,
//! as across a real split) until [`MemoryNetwork::heal`]; [`MemoryNetwork::unplug`]
//! takes one address off the network, as a host that crashed.

use super::{Listener, Transport, TransportStream};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

/// Bytes buffered in each direction of a stream (like a socket buffer).
const STREAM_BUFFER: usize = 256 * 1024;
/// Largest backlog of a listener; beyond its backlog a connect is refused.
const MAX_BACKLOG: usize = 65_536;
/// First ephemeral port.
const EPHEMERAL: u16 = 49_152;

#[derive(Debug, Default)]
struct State {
    listeners: BTreeMap<SocketAddr, mpsc::Sender<(MemoryStream, SocketAddr)>>,
    next_port: BTreeMap<IpAddr, u16>,
    /// Pairs of addresses (lower first) that cannot reach each other.
    cut: BTreeSet<(IpAddr, IpAddr)>,
    /// Addresses off the network.
    unplugged: BTreeSet<IpAddr>,
    /// The streams alive, to break them when their path is cut.
    links: Vec<Weak<Link>>,
}

fn pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl State {
    fn reachable(&self, a: IpAddr, b: IpAddr) -> bool {
        reachable(&self.cut, &self.unplugged, a, b)
    }

    /// Breaks every live stream whose path is no longer reachable, and forgets dead ones.
    fn sever_unreachable(&mut self) {
        let State {
            cut,
            unplugged,
            links,
            ..
        } = self;
        let mut broken = Vec::new();
        links.retain(|weak| match weak.upgrade() {
            Some(link) if !reachable(cut, unplugged, link.ends.0, link.ends.1) => {
                broken.push(link);
                false
            }
            Some(_) => true,
            None => false,
        });
        for link in broken {
            link.sever();
        }
    }
}

fn reachable(
    cut: &BTreeSet<(IpAddr, IpAddr)>,
    unplugged: &BTreeSet<IpAddr>,
    a: IpAddr,
    b: IpAddr,
) -> bool {
    !unplugged.contains(&a) && !unplugged.contains(&b) && !cut.contains(&pair(a, b))
}

/// What both ends of a stream share: whether its path was cut, and who waits on it.
#[derive(Debug)]
struct Link {
    ends: (IpAddr, IpAddr),
    severed: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl Link {
    fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for w in waiting {
            w.wake();
        }
    }

    /// `Err` once severed; otherwise remembers `cx`'s waker so a cut wakes the task.
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.severed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the network path was cut",
            ));
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            // Readers and writers of both ends: a handful at most; forget the oldest.
            if waiting.len() >= 8 {
                waiting.remove(0);
            }
            waiting.push(cx.waker().clone());
        }
        Ok(())
    }
}

impl State {
    fn ephemeral(&mut self, ip: IpAddr) -> io::Result<u16> {
        let next = self.next_port.entry(ip).or_insert(EPHEMERAL);
        for _ in EPHEMERAL..=u16::MAX {
            let port = *next;
            *next = if port == u16::MAX {
                EPHEMERAL
            } else {
                port + 1
            };
            if !self.listeners.contains_key(&SocketAddr::new(ip, port)) {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no free port",
        ))
    }
}

/// An in-memory network; clones share it. Use it as a [`Transport`].
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Splits `a` from `b`: the streams between them break (reset) and new connections
    /// between them hang (the dialer's own timeout ends them), until [`MemoryNetwork::heal`].
    pub fn partition(&self, a: &[IpAddr], b: &[IpAddr]) {
        let mut state = self.lock();
        for x in a {
            for y in b {
                state.cut.insert(pair(*x, *y));
            }
        }
        state.sever_unreachable();
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Takes `ip` off the network, as a crashed host: its streams break and connections
    /// to or from it hang, until [`MemoryNetwork::plug`].
    pub fn unplug(&self, ip: IpAddr) {
        let mut state = self.lock();
        state.unplugged.insert(ip);
        state.sever_unreachable();
    }

    /// Puts `ip` back on the network.
    pub fn plug(&self, ip: IpAddr) {
        self.lock().unplugged.remove(&ip);
    }
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemoryStream {
    inner: DuplexStream,
    local: SocketAddr,
    peer: SocketAddr,
    link: Arc<Link>,
}

/// A listener on a [`MemoryNetwork`]; unbinds when dropped.
#[derive(Debug)]
pub struct MemoryListener {
    network: MemoryNetwork,
    addr: SocketAddr,
    incoming: mpsc::Receiver<(MemoryStream, SocketAddr)>,
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.network.lock().listeners.remove(&self.addr);
    }
}

impl TransportStream for MemoryStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.link.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.link.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Listener for MemoryListener {
    type Stream = MemoryStream;

    async fn accept(&mut self) -> io::Result<(MemoryStream, SocketAddr)> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "network gone"))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Transport for MemoryNetwork {
    type Stream = MemoryStream;
    type Listener = MemoryListener;

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<MemoryListener> {
        let mut state = self.lock();
        let addr = if addr.port() == 0 {
            SocketAddr::new(addr.ip(), state.ephemeral(addr.ip())?)
        } else {
            addr
        };
        if state.listeners.contains_key(&addr) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, addr.to_string()));
        }
        let (tx, rx) = mpsc::channel((backlog as usize).clamp(1, MAX_BACKLOG));
        state.listeners.insert(addr, tx);
        drop(state);
        Ok(MemoryListener {
            network: self.clone(),
            addr,
            incoming: rx,
        })
    }

    async fn connect(&self, local: Option<IpAddr>, remote: SocketAddr) -> io::Result<MemoryStream> {
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, remote.to_string());
        let from = local.unwrap_or(if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
        let reachable = self.lock().reachable(from, remote.ip());
        if !reachable {
            // As across a real split: no answer; the dialer's timeout ends the wait.
            return std::future::pending().await;
        }
        let mut state = self.lock();
        let unspecified = SocketAddr::new(
            if remote.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            },
            remote.port(),
        );
        let listener = state
            .listeners
            .get(&remote)
            .or_else(|| state.listeners.get(&unspecified))
            .cloned()
            .ok_or_else(refused)?;
        let local_ip = local.unwrap_or(if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
        let local = SocketAddr::new(local_ip, state.ephemeral(local_ip)?);
        let link = Arc::new(Link {
            ends: (local_ip, remote.ip()),
            severed: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
        });
        state.links.retain(|l| l.strong_count() > 0);
        state.links.push(Arc::downgrade(&link));
        drop(state);
        let (ours, theirs) = tokio::io::duplex(STREAM_BUFFER);
        let server_end = MemoryStream {
            inner: theirs,
            local: remote,
            peer: local,
            link: link.clone(),
        };
        listener
            .try_send((server_end, local))
            .map_err(|_| refused())?;
        Ok(MemoryStream {
            inner: ours,
            local,
            peer: remote,
            link,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn streams_carry_bytes_and_addresses_both_ways() {
        let net = MemoryNetwork::new();
        let mut listener = net.bind("127.0.0.2:0".parse().unwrap(), 16).await.unwrap();
        let server = listener.local_addr().unwrap();
        assert_eq!(server.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        let mut client = net
            .connect(Some("127.0.0.7".parse().unwrap()), server)
            .await
            .unwrap();
        let (mut accepted, from) = listener.accept().await.unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(from.ip(), "127.0.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(accepted.peer_addr().unwrap(), from);
        assert_eq!(client.peer_addr().unwrap(), server);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        accepted.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_listening_is_refused_and_a_dropped_listener_unbinds() {
        let net = MemoryNetwork::new();
        let addr: SocketAddr = "10.0.0.1:9732".parse().unwrap();
        let err = net.connect(None, addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let listener = net.bind(addr, 16).await.unwrap();
        assert_eq!(
            net.bind(addr, 16).await.unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(listener);
        assert!(net.bind(addr, 16).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_breaks_streams_and_hangs_connects_until_healed() {
        let net = MemoryNetwork::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut listener = net.bind(SocketAddr::new(b, 9732), 16).await.unwrap();
        let server = listener.local_addr().unwrap();
        let mut client = net.connect(Some(a), server).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        // A reader waiting when the split comes is woken with an error.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            accepted.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        net.partition(&[a], &[b]);
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            client.write_all(b"x").await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        // A new connection across the split gets no answer.
        let hung =
            tokio::time::timeout(Duration::from_secs(30), net.connect(Some(a), server)).await;
        assert!(hung.is_err());
        net.heal();
        let mut again = net.connect(Some(a), server).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        again.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unplugged_host_loses_its_streams_and_comes_back_when_plugged() {
        let net = MemoryNetwork::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut listener = net.bind(SocketAddr::new(b, 9732), 16).await.unwrap();
        let server = listener.local_addr().unwrap();
        let mut client = net.connect(Some(a), server).await.unwrap();
        let _accepted = listener.accept().await.unwrap();
        net.unplug(b);
        assert!(client.write_all(b"x").await.is_err());
        let hung =
            tokio::time::timeout(Duration::from_secs(30), net.connect(Some(a), server)).await;
        assert!(hung.is_err());
        net.plug(b);
        assert!(net.connect(Some(a), server).await.is_ok());
    }
}
