//! The transport seam: how the node reaches the network (ARCHITECTURE.md "Contracts").
//!
//! A [`Transport`] binds listeners and dials, *from a given local address* when asked (a
//! node bound to 127.0.0.5 dials from 127.0.0.5, so its peers see the address it listens
//! on); its streams are plain `AsyncRead + AsyncWrite` with their two addresses.
//!
//! - [`TcpTransport`]: tokio TCP, the default.
//! - [`MemoryNetwork`]: an in-memory network of any number of nodes on any addresses,
//!   for tests, with tokio's paused clock.
//! - the simulation crate (`peerpool-sim`) implements it over turmoil's simulated network.

mod memory;
mod tcp;

pub use memory::{MemoryListener, MemoryNetwork, MemoryStream};
pub use tcp::{TcpOptions, TcpTransport, TcpTransportListener};

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream of an established transport connection.
pub trait TransportStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Our end's address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The remote end's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
}

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The streams it accepts.
    type Stream: TransportStream;

    /// The next incoming connection and the remote's address.
    ///
    /// Errors: what the transport reports (`accept(2)` errors for TCP, e.g. too many open
    /// files); the listener stays usable.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address it is bound to (with the port the system chose for port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// How the node reaches the network. Cheap to clone; clones share the same network.
pub trait Transport: Clone + fmt::Debug + Send + Sync + 'static {
    /// The streams it makes.
    type Stream: TransportStream;
    /// Its listeners.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener on `addr` (port 0: any free port), with room for `backlog`
    /// connections waiting to be accepted.
    ///
    /// Errors: the address is in use or not ours.
    fn bind(
        &self,
        addr: SocketAddr,
        backlog: u32,
    ) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Connects to `remote`, from `local` (any port) when given, else from whatever
    /// address the transport picks.
    ///
    /// Errors: refused, unreachable, or `local` cannot be used.
    fn connect(
        &self,
        local: Option<IpAddr>,
        remote: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}
