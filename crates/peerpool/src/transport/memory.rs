//! [`MemoryNetwork`]: an in-memory transport. Any number of nodes, on any addresses
//! (127.0.0.x, 10.x.y.z …), in one process; streams are `tokio::io::duplex` pairs, so the
//! whole node runs with tokio's paused clock and no socket.

use super::{Listener, Transport, TransportStream};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
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
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemoryStream {
    inner: DuplexStream,
    local: SocketAddr,
    peer: SocketAddr,
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        drop(state);
        let (ours, theirs) = tokio::io::duplex(STREAM_BUFFER);
        let server_end = MemoryStream {
            inner: theirs,
            local: remote,
            peer: local,
        };
        listener
            .try_send((server_end, local))
            .map_err(|_| refused())?;
        Ok(MemoryStream {
            inner: ours,
            local,
            peer: remote,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
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
}
