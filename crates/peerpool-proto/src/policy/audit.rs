//! The invariants every state of the policy keeps, checked on demand: by the property
//! tests after every input, and by the soak runs (issue 11) on live nodes, where a broken
//! one is reported instead of panicking.

use super::ConnectionPolicy;
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{PeerMeta, PeerState, PointState};
use std::fmt;

/// One broken invariant, found by [`ConnectionPolicy::audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// More connections (closing ones not counted) than `max_connections`.
    TooManyConnections {
        /// Connections not being closed.
        open: usize,
        /// The pool's `max_connections`.
        max: usize,
    },
    /// More incoming handshakes in flight than `max_incoming_handshakes`.
    TooManyIncomingHandshakes {
        /// In flight.
        in_flight: usize,
        /// The cap.
        max: usize,
    },
    /// The attempt counters disagree with the attempts table.
    AttemptCounters {
        /// Incoming plus outgoing counters.
        counted: usize,
        /// Attempts in the table.
        attempts: usize,
    },
    /// The count of open incoming connections differs from the table's.
    IncomingCounter {
        /// The running count.
        counted: usize,
        /// Recounted over the connections.
        connections: usize,
    },
    /// A point Requested or Accepted that no attempt owns (it would stay stuck).
    PointWithoutAttempt(Point),
    /// A point Running with no connection to its peer.
    PointRunningWithoutConnection(Point),
    /// A peer Accepted that no attempt owns.
    PeerWithoutAttempt(PeerId),
    /// A peer Running with no connection.
    PeerRunningWithoutConnection(PeerId),
    /// The peer index and the connections table disagree.
    PeerIndex(PeerId),
    /// The pool counts another number of running connections than the policy holds.
    PoolConnections {
        /// The pool's count.
        pool: usize,
        /// The policy's.
        policy: usize,
    },
    /// Dials handed to the runtime towards a banned or greylisted address, since start.
    DialsToBannedAddresses(u64),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TooManyConnections { open, max } => {
                write!(f, "{open} connections open, above the maximum {max}")
            }
            Violation::TooManyIncomingHandshakes { in_flight, max } => {
                write!(f, "{in_flight} incoming handshakes, above the cap {max}")
            }
            Violation::AttemptCounters { counted, attempts } => {
                write!(f, "{counted} attempts counted, {attempts} in the table")
            }
            Violation::IncomingCounter {
                counted,
                connections,
            } => write!(
                f,
                "{counted} open incoming connections counted, {connections} in the table"
            ),
            Violation::PointWithoutAttempt(p) => write!(f, "point {p} in progress with no attempt"),
            Violation::PointRunningWithoutConnection(p) => {
                write!(f, "point {p} Running with no connection")
            }
            Violation::PeerWithoutAttempt(p) => write!(f, "peer {p} Accepted with no attempt"),
            Violation::PeerRunningWithoutConnection(p) => {
                write!(f, "peer {p} Running with no connection")
            }
            Violation::PeerIndex(p) => write!(f, "peer {p}: index and connections disagree"),
            Violation::PoolConnections { pool, policy } => {
                write!(f, "the pool counts {pool} connections, the policy {policy}")
            }
            Violation::DialsToBannedAddresses(n) => {
                write!(f, "{n} dials to banned or greylisted addresses")
            }
        }
    }
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    /// Every broken invariant of the current state; empty when all hold. Costs a pass
    /// over the points, peers and connections.
    pub fn audit(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        let pool = &self.pool;
        let open = self.connections.len() - self.closing.len();
        let max = pool.config().max_connections;
        if open > max {
            found.push(Violation::TooManyConnections { open, max });
        }
        let max = self.config.max_incoming_handshakes;
        if self.incoming_in_flight > max {
            found.push(Violation::TooManyIncomingHandshakes {
                in_flight: self.incoming_in_flight,
                max,
            });
        }
        let counted = self.incoming_in_flight + self.dialing;
        if counted != self.attempts.len() {
            found.push(Violation::AttemptCounters {
                counted,
                attempts: self.attempts.len(),
            });
        }
        let connections = self.incoming_open_recounted();
        if self.incoming_open != connections {
            found.push(Violation::IncomingCounter {
                counted: self.incoming_open,
                connections,
            });
        }
        let owned = |owner: Option<&super::ConnectionId>| {
            owner.is_some_and(|o| self.attempts.contains_key(o))
        };
        for info in pool.points() {
            match info.state() {
                PointState::Requested | PointState::Accepted { .. } => {
                    if !owned(self.point_owner.get(&info.point())) {
                        found.push(Violation::PointWithoutAttempt(info.point()));
                    }
                }
                PointState::Running { peer_id } => {
                    let connected = self
                        .connections
                        .values()
                        .any(|c| c.view.point == Some(info.point()) && c.view.peer_id == peer_id);
                    if !connected {
                        found.push(Violation::PointRunningWithoutConnection(info.point()));
                    }
                }
                PointState::Disconnected => {}
            }
        }
        for info in pool.peers() {
            match info.state() {
                PeerState::Accepted { .. } => {
                    if !owned(self.pending.get(&info.peer_id())) {
                        found.push(Violation::PeerWithoutAttempt(info.peer_id()));
                    }
                }
                PeerState::Running { .. } => {
                    if !self.by_peer.contains_key(&info.peer_id()) {
                        found.push(Violation::PeerRunningWithoutConnection(info.peer_id()));
                    }
                }
                PeerState::Disconnected => {}
            }
        }
        for (peer_id, id) in &self.by_peer {
            if self.connections.get(id).map(|c| c.view.peer_id) != Some(*peer_id) {
                found.push(Violation::PeerIndex(*peer_id));
            }
        }
        if self.by_peer.len() != self.connections.len() {
            // A connection whose peer the index misses.
            for c in self.connections.values() {
                if self.by_peer.get(&c.view.peer_id) != Some(&c.view.id) {
                    found.push(Violation::PeerIndex(c.view.peer_id));
                }
            }
        }
        if pool.active_connections() != self.connections.len() {
            found.push(Violation::PoolConnections {
                pool: pool.active_connections(),
                policy: self.connections.len(),
            });
        }
        if self.banned_dials > 0 {
            found.push(Violation::DialsToBannedAddresses(self.banned_dials));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{point, policy_with, pool_config, t};
    use super::super::{Action, PolicyConfig};
    use super::Violation;

    #[test]
    fn a_fresh_and_a_working_policy_pass() {
        let mut p = policy_with(pool_config(), PolicyConfig::default(), 100);
        assert!(p.audit().is_empty());
        p.connect(t(1), point(1), None, false).unwrap();
        while p.poll_action().is_some() {}
        assert!(p.audit().is_empty(), "{:?}", p.audit());
    }

    #[test]
    fn a_dial_handed_out_to_a_greylisted_address_is_reported() {
        let mut p = policy_with(pool_config(), PolicyConfig::default(), 100);
        p.connect(t(1), point(1), None, false).unwrap();
        // Greylisted after the decision, before the runtime took the Dial: a dial to a
        // greylisted address leaves the policy.
        p.greylist_addr(t(1), point(1).ip());
        let mut dials = 0;
        while let Some(a) = p.poll_action() {
            dials += usize::from(matches!(a, Action::Dial { .. }));
        }
        assert_eq!(dials, 1);
        assert!(p.audit().contains(&Violation::DialsToBannedAddresses(1)));
    }

    #[test]
    fn corrupted_tables_are_reported() {
        let mut p = policy_with(pool_config(), PolicyConfig::default(), 100);
        p.connect(t(1), point(1), None, false).unwrap();
        p.dialing += 1;
        assert!(p.audit().iter().any(|v| matches!(
            v,
            Violation::AttemptCounters {
                counted: 2,
                attempts: 1
            }
        )));
        p.dialing -= 1;
        p.incoming_open += 1;
        assert!(p.audit().contains(&Violation::IncomingCounter {
            counted: 1,
            connections: 0
        }));
        p.incoming_open -= 1;
        // The attempt that owns the Requested point disappears.
        p.attempts.clear();
        p.dialing = 0;
        assert!(p
            .audit()
            .contains(&Violation::PointWithoutAttempt(point(1))));
    }
}
