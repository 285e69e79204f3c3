//! [`SimTransport`]: peerpool's transport seam over turmoil's simulated TCP. Each
//! simulated host has one address, so a node dials from it whatever local address it asks
//! for; listeners bind turmoil's wildcard and report the host's address as theirs.

use peerpool::transport::{Listener, Transport, TransportStream};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// turmoil's network as a peerpool transport. Use it only inside a simulated host.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimTransport;

/// A simulated TCP stream.
#[derive(Debug)]
pub struct SimStream(turmoil::net::TcpStream);

/// A simulated listener.
pub struct SimListener {
    inner: turmoil::net::TcpListener,
    addr: SocketAddr,
}

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TransportStream for SimStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&mut self) -> io::Result<(SimStream, SocketAddr)> {
        let (stream, addr) = self.inner.accept().await?;
        Ok((SimStream(stream), addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Transport for SimTransport {
    type Stream = SimStream;
    type Listener = SimListener;

    async fn bind(&self, addr: SocketAddr, _backlog: u32) -> io::Result<SimListener> {
        // turmoil binds only its wildcard; the host's one address is where it listens.
        let any = if addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let inner = turmoil::net::TcpListener::bind(SocketAddr::new(any, addr.port())).await?;
        let port = inner.local_addr()?.port();
        Ok(SimListener {
            inner,
            addr: SocketAddr::new(addr.ip(), port),
        })
    }

    async fn connect(&self, _local: Option<IpAddr>, remote: SocketAddr) -> io::Result<SimStream> {
        turmoil::net::TcpStream::connect(remote)
            .await
            .map(SimStream)
    }
}
