//! [`TcpTransport`]: tokio TCP.

use super::{Listener, Transport, TransportStream};
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How a peer that vanished without closing (its host gone, no FIN) is noticed: TCP
/// keepalive probes on an idle connection, and `TCP_USER_TIMEOUT` on data left
/// unacknowledged. octez sets both on every socket (keepalive after 10 s idle, probes every
/// 5 s; user timeout 45 s; BEHAVIOUR.md §1.3, §5 "No application-level keepalive"): a
/// dead peer is closed within about a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpOptions {
    /// Idle time before the first keepalive probe (`TCP_KEEPIDLE`); `None` turns keepalive
    /// off (octez: 10 s, `OCTEZ_P2P_TCP_KEEPALIVE=0` turns it off).
    pub keepalive_idle: Option<Duration>,
    /// Time between probes (`TCP_KEEPINTVL`; octez: 5 s). The system's probe count
    /// (`tcp_keepalive_probes`, 9 on Linux) applies.
    pub keepalive_interval: Duration,
    /// How long sent data may stay unacknowledged before the connection is dropped
    /// (`TCP_USER_TIMEOUT`, Linux only; octez: 45 s); `None` keeps the system's default
    /// (about 15 minutes of retransmissions).
    pub user_timeout: Option<Duration>,
}

impl Default for TcpOptions {
    /// octez's values: keepalive after 10 s idle, every 5 s; user timeout 45 s.
    fn default() -> Self {
        TcpOptions {
            keepalive_idle: Some(Duration::from_secs(10)),
            keepalive_interval: Duration::from_secs(5),
            user_timeout: Some(Duration::from_secs(45)),
        }
    }
}

impl TcpOptions {
    /// Sets the options on `stream`. Best effort, as octez: a socket that refuses an
    /// option still works, without it.
    pub fn apply(&self, stream: &TcpStream) {
        let socket = SockRef::from(stream);
        let _ = socket.set_tcp_nodelay(true);
        if let Some(idle) = self.keepalive_idle {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(self.keepalive_interval);
            let _ = socket.set_tcp_keepalive(&keepalive);
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.user_timeout {
            let _ = socket.set_tcp_user_timeout(Some(timeout));
        }
    }
}

/// tokio TCP. Listeners set `SO_REUSEADDR`; dials from a given local address bind it
/// first (port 0); every stream has `TCP_NODELAY` (the node writes whole chunks) and the
/// dead-peer detection of its [`TcpOptions`] (octez's by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport {
    options: TcpOptions,
}

impl TcpTransport {
    /// TCP with `options` on every stream, accepted or dialed.
    pub fn new(options: TcpOptions) -> Self {
        TcpTransport { options }
    }

    /// The options set on every stream.
    pub fn options(&self) -> TcpOptions {
        self.options
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpTransportListener(TcpListener, TcpOptions);

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
        self.1.apply(&stream);
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
        Ok(TcpTransportListener(
            socket.listen(backlog.max(1))?,
            self.options,
        ))
    }

    async fn connect(&self, local: Option<IpAddr>, remote: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket_for(&remote)?;
        if let Some(ip) = local.filter(|ip| ip.is_ipv4() == remote.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(remote).await?;
        self.options.apply(&stream);
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_defaults_are_octez_values() {
        let o = TcpOptions::default();
        assert_eq!(o.keepalive_idle, Some(Duration::from_secs(10)));
        assert_eq!(o.keepalive_interval, Duration::from_secs(5));
        assert_eq!(o.user_timeout, Some(Duration::from_secs(45)));
    }

    #[tokio::test]
    async fn accepted_and_dialed_streams_carry_the_options() {
        let options = TcpOptions {
            keepalive_idle: Some(Duration::from_secs(7)),
            keepalive_interval: Duration::from_secs(3),
            user_timeout: Some(Duration::from_secs(21)),
        };
        let transport = TcpTransport::new(options);
        let mut listener = transport
            .bind("127.0.0.1:0".parse().unwrap(), 16)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(transport.connect(None, addr), listener.accept());
        for stream in [dialed.unwrap(), accepted.unwrap().0] {
            let s = SockRef::from(&stream);
            assert!(s.keepalive().unwrap());
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
            assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
            #[cfg(target_os = "linux")]
            assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(21)));
            assert!(s.tcp_nodelay().unwrap());
        }
    }

    #[tokio::test]
    async fn keepalive_off_leaves_it_off() {
        let transport = TcpTransport::new(TcpOptions {
            keepalive_idle: None,
            user_timeout: None,
            ..TcpOptions::default()
        });
        let mut listener = transport
            .bind("127.0.0.1:0".parse().unwrap(), 16)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, _accepted) = tokio::join!(transport.connect(None, addr), listener.accept());
        let stream = dialed.unwrap();
        assert!(!SockRef::from(&stream).keepalive().unwrap());
    }

    #[test]
    fn out_of_range_values_are_refused_by_the_config() {
        let identity = std::sync::Arc::new(peerpool_proto::identity::Identity::generate(
            &peerpool_proto::identity::PowTarget::new(0.0).unwrap(),
            &mut rand::rng(),
        ));
        let mut c = crate::NodeConfig::new(identity, "T");
        c.tcp.keepalive_idle = Some(Duration::ZERO);
        let e = c.clone().validate().unwrap_err().to_string();
        assert!(e.contains("tcp.keepalive_idle"), "{e}");
        c.tcp.keepalive_idle = None;
        c.tcp.keepalive_interval = Duration::from_secs(40_000);
        let e = c.clone().validate().unwrap_err().to_string();
        assert!(e.contains("tcp.keepalive_interval"), "{e}");
        c.tcp.keepalive_interval = Duration::from_secs(5);
        c.tcp.user_timeout = Some(Duration::from_secs(50 * 86_400));
        let e = c.clone().validate().unwrap_err().to_string();
        assert!(e.contains("tcp.user_timeout"), "{e}");
        c.tcp.user_timeout = None;
        assert!(c.validate().is_ok());
    }
}
