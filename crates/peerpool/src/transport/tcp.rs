//! [`TcpTransport`]: tokio TCP.

use super::{Listener, Transport, TransportStream};
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// tokio TCP. Listeners set `SO_REUSEADDR`; dials from a given local address bind it
/// first (port 0); every stream has `TCP_NODELAY` (the node writes whole chunks).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpTransportListener(TcpListener);

impl TransportStream for TcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }
}

impl Listener for TcpTransportListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        // Best effort: a socket that refuses the option still works.
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn socket_for(addr: &SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

impl Transport for TcpTransport {
    type Stream = TcpStream;
    type Listener = TcpTransportListener;

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<TcpTransportListener> {
        let socket = socket_for(&addr)?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(TcpTransportListener(socket.listen(backlog.max(1))?))
    }

    async fn connect(&self, local: Option<IpAddr>, remote: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket_for(&remote)?;
        if let Some(ip) = local.filter(|ip| ip.is_ipv4() == remote.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(remote).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
