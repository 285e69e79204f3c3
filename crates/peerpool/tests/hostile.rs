//! Hostile peers, end to end over real sockets (issue 11). One test per hostile
//! behaviour; each runs a node under test with an 8 MiB buffer budget while honest peers
//! keep exchanging messages with it, and checks that:
//!
//! - the honest peers keep their throughput (round trips per second before and during
//!   the attack, printed; during at least a tenth of before) and no honest message waits
//!   long for its echo;
//! - memory stays bounded: the node's buffered bytes (sampled every 2 ms) within its
//!   message share, and the process's peak RSS (`VmHWM`, reset at the start of each test)
//!   within a generous growth bound;
//! - the offender is closed or greylisted as BEHAVIOUR.md §5 says (and only then);
//! - nothing panics anywhere in the process, the node's invariants hold, the honest
//!   connections are all still up, and the node accepts a newcomer at the end.
//!
//! The tests take a lock, so they run one at a time even in parallel runs and each one's
//! figures are its own. The figures: `cargo test -p peerpool --release --test hostile --
//! --nocapture --test-threads=1` (docs/RELIABILITY.md §2).
//!
//! Bad input on a single connection (a chunk declaring 65535 bytes then EOF, a message
//! longer than the envelope bound, bad MACs, garbage handshakes) is in `bad_input.rs`;
//! these are the remaining cases and the load versions (many connections at once).
#![allow(clippy::unwrap_used)]

mod common;

#[path = "hostile/backpressure.rs"]
mod backpressure;
#[path = "hostile/bench.rs"]
mod bench;
#[path = "hostile/connections.rs"]
mod connections;
#[path = "hostile/control.rs"]
mod control;
#[path = "hostile/events.rs"]
mod events;
#[path = "hostile/framing.rs"]
mod framing;
#[path = "hostile/logs.rs"]
mod logs;
#[path = "hostile/raw.rs"]
mod raw;
