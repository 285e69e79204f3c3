//! The peerpool runtime: tokio tasks, sockets and timers around the pure core
//! (`peerpool-proto`), and the API a node embeds.
//!
//! # Layout
//!
//! - [`node`]: the facade, [`Node`]: build, activate, send and receive, connect, query,
//!   events, shutdown. Start here.
//! - [`config`]: [`NodeConfig`], plain data checked once into a [`ValidConfig`].
//! - [`error`]: typed errors ([`ConnectError`], [`SendError`], [`StartError`] …).
//! - [`event`]: [`NodeEvent`] and the [`Events`] subscription.
//! - [`transport`]: the transport seam: tokio TCP, an in-memory network for tests.
//! - [`clock`]: the injected wall clock, advanced by `tokio::time`.
//! - [`persist`]: where the peers file lives (file or memory store) and its atomic save.
//! - [`connection`]: one established connection: reader and writer tasks, bounded queues.
//! - [`budget`]: [`budget::ByteBudget`], the node-wide cap on buffered bytes.
//! - [`io_scheduler`]: the I/O scheduler every connection's bytes pass through: global and
//!   per-connection caps, fair shares, bounded read/write queues, statistics
//!   (BEHAVIOUR.md §6).
//! - [`discovery`]: local discovery over UDP: announces the node, reports the points it
//!   hears of (BEHAVIOUR.md §8).
//! - [`socket`]: the handshake over a byte stream (drives the pure handshake machine).
//! - [`scheduled_stream`]: a scheduled connection as an `AsyncRead + AsyncWrite` stream.
//! - private: `owner` (the task that holds the node's state and applies the connection
//!   policy's actions), `attempt` (the I/O of one connection attempt, polled by the
//!   owner), `welcome` (the accept loop), `inbox` (incoming application queues, served
//!   in turn).
//!
//! Every decision (admission, tie-break, greylisting, whom to dial) is the pure
//! connection policy's, `peerpool_proto::policy`; this crate performs I/O and applies it.
//!
//! # Embedding a node
//!
//! An application brings its message type (an [`AppMessage`](peerpool_proto::message::AppMessage):
//! tags, encoding, a size bound) and, if it wants, its own peer metadata; the facade does
//! the rest. Here two nodes on an in-memory network exchange a text message (over TCP,
//! `Node::start(config)` is all it takes):
//!
//! ```
//! use peerpool::transport::MemoryNetwork;
//! use peerpool::{Node, NodeConfig};
//! use peerpool_proto::encoding::DecodeError;
//! use peerpool_proto::identity::{Identity, PowTarget};
//! use peerpool_proto::message::AppMessage;
//! use peerpool_proto::point::Point;
//! use std::sync::Arc;
//!
//! /// The application's message: a line of text, tag 0x1000.
//! #[derive(Debug, PartialEq)]
//! struct Say(String);
//!
//! impl AppMessage for Say {
//!     const MAX_SIZE: usize = 64 * 1024;
//!     fn encode(&self, out: &mut Vec<u8>) {
//!         out.extend_from_slice(&0x1000u16.to_be_bytes());
//!         out.extend_from_slice(self.0.as_bytes());
//!     }
//!     fn decode(tag: u16, body: &[u8]) -> Result<Self, DecodeError> {
//!         match tag {
//!             0x1000 => String::from_utf8(body.to_vec())
//!                 .map(Say)
//!                 .map_err(|_| DecodeError::InvalidUtf8("say")),
//!             tag => Err(DecodeError::UnknownTag { what: "message", tag }),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemoryNetwork::new();
//! let config = |ip: &str| -> Result<_, Box<dyn std::error::Error>> {
//!     let pow = PowTarget::new(0.0)?;
//!     let identity = Identity::generate(&pow, &mut rand::rng());
//!     let mut config = NodeConfig::new(Arc::new(identity), "MY_CHAIN");
//!     config.listen_addr = Some(format!("{ip}:9732").parse()?);
//!     config.pow_target = pow;
//!     Ok(config.validate()?)
//! };
//! let alice = Node::<Say>::builder(config("10.0.0.1")?).transport(net.clone()).start().await?;
//! let bob = Node::<Say>::builder(config("10.0.0.2")?).transport(net.clone()).start().await?;
//! alice.activate().await;
//! bob.activate().await;
//!
//! let bob_id = alice.connect(Point::new("10.0.0.2".parse()?, 9732), None).await?;
//! alice.send(&bob_id, &Say("hello".into())).await?;
//! let got = bob.recv_any().await.ok_or("bob stopped")?;
//! assert_eq!((got.peer_id, got.message), (alice.peer_id(), Say("hello".into())));
//!
//! alice.shutdown().await;
//! bob.shutdown().await;
//! assert_eq!(alice.live_tasks() + bob.live_tasks(), 0);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod budget;
pub mod clock;
pub mod config;
pub mod conn_manager;
pub mod connection;
pub mod discovery;
pub mod error;
pub mod event;
pub mod io_scheduler;
pub mod node;
pub mod persist;
pub mod scheduled_stream;
pub mod socket;
pub mod transport;

mod attempt;
mod builder;
mod inbox;
mod notify;
mod owner;
mod shared;
mod welcome;

pub use builder::NodeBuilder;
pub use config::{ConfigError, NodeConfig, ValidConfig};
pub use conn_manager::ConnManagerHandle;
pub use connection::{CloseReason, Connection, ConnectionInfo, MessageTotals, QueueConfig};
pub use error::{ConnectError, DisconnectError, SendError, StartError, TrySendError};
pub use event::{EventError, Events, NodeEvent};
pub use inbox::Received;
pub use node::{Broadcast, Node, NodeStats, PeerMetadata};
