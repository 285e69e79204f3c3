//! A connection policy driven by operations (dials, handshakes, failures, closes, control
//! messages, time, bans, trust, greylists, tags, protection, decaying tags, trims), with
//! the runtime's part played by the harness: every `Close` action is reported closed at
//! once, every `Dial` becomes an attempt in flight. After each operation
//! [`Harness::check`] asserts the invariants the public API lets one see.

use peerpool_proto::connection_message::{ConnectionMetadata, NackMotive, NetworkVersion};
use peerpool_proto::connmgr::{Bump, ConnManagerEvent, Decay, ProtectionRule};
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{
    Action, AttemptFailure, AuthenticatedPeer, ClosedBy, ConnectionId, ConnectionPolicy,
    ControlMessage, DisconnectReason, PolicyEvent,
};
use peerpool_proto::pool::peers_file::{parse_peers_file, serialize_peers_file};
use peerpool_proto::pool::{PeerState, PointState, Time};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use crate::ops::{BumpSpec, DecaySpec, Failure, Op};

/// Peer `n` of the harness (never our own id).
pub fn peer(n: u8) -> PeerId {
    PeerId([n % 24; 16])
}

/// Address `n`: IPv4 spread over four /16 netgroups, a few IPv6 and loopback addresses.
pub fn ip(n: u8) -> IpAddr {
    match n % 32 {
        30 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        31 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n))),
        k => IpAddr::V4(Ipv4Addr::new(10, k % 4, 0, k)),
    }
}

/// Point `n`: address `n`, port 9732 (or another port for odd `n / 32`).
pub fn point(n: u8) -> Point {
    Point::new(
        ip(n),
        if (n / 32).is_multiple_of(2) {
            9732
        } else {
            9733
        },
    )
}

/// A policy and what the runtime around it would know.
#[derive(Debug)]
pub struct Harness {
    /// The policy under test.
    pub policy: ConnectionPolicy<()>,
    /// The time of the last input.
    pub now: Time,
    /// Attempts in flight, oldest first.
    attempts: Vec<ConnectionId>,
    /// Victims of trims and evictions seen since the last check.
    victims: Vec<PeerId>,
}

impl Harness {
    /// A harness around `policy`, activated at `now`.
    pub fn new(mut policy: ConnectionPolicy<()>, now: Time) -> Self {
        policy.activate(now);
        let mut h = Harness {
            policy,
            now,
            attempts: Vec::new(),
            victims: Vec::new(),
        };
        h.settle();
        h
    }

    fn pick(list: &[ConnectionId], i: u8) -> Option<ConnectionId> {
        (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
    }

    fn conns(&self) -> Vec<ConnectionId> {
        self.policy.connections().map(|c| c.id).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Applies `op`, plays the runtime's part, and checks the invariants.
    pub fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Connect(n, trusted) => {
                if let Ok(id) = self.policy.connect(now, point(n), None, trusted) {
                    self.attempts.push(id);
                }
            }
            Op::Incoming(n, port) => {
                let addr = SocketAddr::new(ip(n), port);
                if let Ok(id) = self.policy.handle_incoming(now, addr) {
                    self.attempts.push(id);
                }
            }
            Op::Authenticate(i, p, port, other_chain, private) => {
                if let Some(id) = Self::pick(&self.attempts, i) {
                    let chain = if other_chain {
                        "OTHER"
                    } else {
                        crate::config::CHAIN
                    };
                    let auth = AuthenticatedPeer {
                        peer_id: peer(p),
                        announced_port: port,
                        announced_version: NetworkVersion {
                            chain_name: chain.to_owned(),
                            distributed_db_version: 2,
                            p2p_version: 1,
                        },
                        metadata: ConnectionMetadata {
                            disable_mempool: false,
                            private_node: private,
                        },
                    };
                    let _ = self.policy.handle_authenticated(now, id, &auth);
                }
            }
            Op::Establish(i) => {
                if let Some(id) = Self::pick(&self.attempts, i) {
                    self.attempts.retain(|a| *a != id);
                    let _ = self.policy.handle_established(now, id);
                }
            }
            Op::Fail(i, how) => {
                if let Some(id) = Self::pick(&self.attempts, i) {
                    self.attempts.retain(|a| *a != id);
                    self.policy.handle_attempt_failed(now, id, failure(how));
                }
            }
            Op::Close(i, by) => {
                if let Some(id) = Self::pick(&self.conns(), i) {
                    let by =
                        [ClosedBy::Us, ClosedBy::Peer, ClosedBy::PeerFault][usize::from(by % 3)];
                    self.policy.handle_closed(now, id, by);
                }
            }
            Op::Control(i, kind, n) => {
                if let Some(id) = Self::pick(&self.conns(), i) {
                    let m = match kind % 4 {
                        0 => ControlMessage::Bootstrap,
                        1 => ControlMessage::Advertise(
                            (0..n % 8).map(|k| point(n.wrapping_add(k))).collect(),
                        ),
                        2 => ControlMessage::SwapRequest(point(n), peer(n)),
                        _ => ControlMessage::SwapAck(point(n), peer(n)),
                    };
                    self.policy.handle_control(now, id, m);
                }
            }
            Op::Tick(s) => {
                self.advance(Duration::from_secs(u64::from(s)));
                self.policy.handle_timeout(self.now);
            }
            Op::Leap(k) => {
                self.now = match k % 4 {
                    0 => self.now.saturating_add(Duration::from_secs(365 * 86_400)),
                    1 => self.now.max(Time::MAX_RFC3339),
                    2 => self.now.saturating_add(Duration::from_secs(u64::MAX / 2)),
                    _ => Time::from_unix(Duration::MAX),
                };
                self.policy.handle_timeout(self.now);
            }
            Op::Timeouts => self.run_timeouts(8),
            Op::BanPeer(n) => self.policy.ban_peer(now, &peer(n)),
            Op::BanPoint(n) => self.policy.ban_point(now, &point(n)),
            Op::TrustPoint(n) => self.policy.trust_point(now, point(n)),
            Op::TrustPeer(n) => self.policy.trust_peer(now, peer(n)),
            Op::OpenPoint(n) => self.policy.open_point(now, &point(n)),
            Op::OpenPeer(n) => self.policy.open_peer(now, &peer(n)),
            Op::GreylistPeer(n) => self.policy.greylist_peer(now, &peer(n)),
            Op::GreylistAddr(n) => self.policy.greylist_addr(now, ip(n)),
            Op::ClearGreylist => self.policy.clear_greylist(),
            Op::AclClear => self.policy.acl_clear(),
            Op::Disconnect(n) => self.policy.disconnect(now, &peer(n)),
            Op::Expect(n, p) => self.policy.set_expected_peer_id(now, point(n), peer(p)),
            Op::Discovered(n) => self.policy.handle_discovered(now, point(n)),
            Op::AddTrusted(n, p) => self.policy.add_trusted_point(now, point(n), p.map(peer)),
            Op::AddMine(n) => self.policy.add_my_point(point(n)),
            Op::Maintain => self.policy.maintain(now),
            Op::TearDown => self.policy.tear_down(now),
            Op::SaveLoad => self.save_load(),
            Op::Shutdown => self.policy.shutdown(now),
            _ => self.manager_op(op),
        }
        self.settle();
        self.check_after(op);
        self.check();
    }

    fn manager_op(&mut self, op: &Op) {
        let now = self.now;
        let tag = |t: u8| format!("t{}", t % 4);
        match *op {
            Op::Tag(p, t, w) => {
                let _ = self
                    .policy
                    .with_conn_manager(now, |m, now| m.tag_peer(now, peer(p), &tag(t), w));
            }
            Op::Untag(p, t) => self
                .policy
                .with_conn_manager(now, |m, now| m.untag_peer(now, &peer(p), &tag(t))),
            Op::Protect(p, t) => {
                let _ = self
                    .policy
                    .with_conn_manager(now, |m, now| m.protect(now, peer(p), &tag(t)));
            }
            Op::Unprotect(p, t) => {
                let _ = self
                    .policy
                    .with_conn_manager(now, |m, now| m.unprotect(now, &peer(p), &tag(t)));
            }
            Op::RegisterDecaying(t, interval_ms, decay, bump) => {
                let decay = match decay {
                    DecaySpec::None => Decay::None,
                    DecaySpec::Fixed(d) => Decay::Fixed(d),
                    DecaySpec::Linear(c) => Decay::Linear(c),
                    DecaySpec::Expire(ms) => {
                        Decay::ExpireWhenInactive(Duration::from_millis(u64::from(ms)))
                    }
                    DecaySpec::Halve => Decay::Custom(std::sync::Arc::new(|v| v / 2)),
                };
                let bump = match bump {
                    BumpSpec::Sum => Bump::SumUnbounded,
                    BumpSpec::Bounded(min, max) => Bump::SumBounded { min, max },
                    BumpSpec::Overwrite => Bump::Overwrite,
                    BumpSpec::Max => Bump::Custom(std::sync::Arc::new(|v, d| v.max(d))),
                };
                let interval = Duration::from_millis(u64::from(interval_ms));
                let _ = self.policy.with_conn_manager(now, |m, now| {
                    m.register_decaying_tag(now, &format!("d{}", t % 3), interval, decay, bump)
                });
            }
            Op::Bump(p, t, delta) => {
                let _ = self.policy.with_conn_manager(now, |m, now| {
                    m.bump(now, peer(p), &format!("d{}", t % 3), delta)
                });
            }
            Op::Rtt(p, ms) => self.policy.with_conn_manager(now, |m, _| {
                m.record_rtt(&peer(p), Duration::from_millis(u64::from(ms)));
            }),
            Op::Useful(p) => self
                .policy
                .with_conn_manager(now, |m, now| m.record_useful(now, &peer(p))),
            Op::TagInfo(p) => {
                let _ = self
                    .policy
                    .with_conn_manager(now, |m, now| m.tag_info(now, &peer(p)));
            }
            Op::Trim => {
                let _ = self.policy.trim_open_conns(now);
            }
            _ => {}
        }
    }

    /// Attempts in flight, as the harness knows them.
    pub fn attempts(&self) -> usize {
        self.attempts.len()
    }

    /// The scripted run of the configuration targets: points learnt, dials that fail
    /// again and again (one point every round, with every kind of failure), connections
    /// that come and go, greylists cleared, and time moving on and leaping far forward.
    pub fn stress(&mut self, rounds: u8) {
        const KINDS: [Failure; 7] = [
            Failure::Connect,
            Failure::Timeout,
            Failure::Garbage,
            Failure::Closed,
            Failure::RefusedByUs,
            Failure::Nacked(3, 3),
            Failure::Aborted,
        ];
        for n in 0..8 {
            self.apply(&Op::Discovered(n));
        }
        for r in 0..rounds {
            self.apply(&Op::Connect(0, false));
            self.apply(&Op::Connect(r % 8, r % 3 == 0));
            self.apply(&Op::Timeouts);
            let mut k = usize::from(r);
            while self.attempts() > 0 && k < usize::from(r) + 64 {
                self.apply(&Op::Fail(0, KINDS[k % KINDS.len()]));
                k += 1;
            }
            if r % 4 == 0 {
                self.apply(&Op::Connect(8 + r % 8, false));
                if let Some(i) = self.attempts().checked_sub(1) {
                    let i = u8::try_from(i).unwrap_or(0);
                    self.apply(&Op::Authenticate(i, 8 + r % 8, Some(9732), false, false));
                    self.apply(&Op::Establish(i));
                }
                self.apply(&Op::Tick(60));
                self.apply(&Op::Close(0, r));
            }
            if r % 8 == 7 {
                self.apply(&Op::ClearGreylist);
            }
            self.apply(&Op::Tick(u16::from(r) * 97));
            if r % 32 == 31 {
                self.apply(&Op::Leap(r / 32));
            }
        }
        self.apply(&Op::SaveLoad);
    }

    /// Runs the policy's deadlines as a runtime would, at most `rounds` of them; each
    /// must move the deadline past `now` (no busy loop).
    pub fn run_timeouts(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let Some(at) = self.policy.poll_timeout() else {
                return;
            };
            self.now = self.now.max(at);
            self.policy.handle_timeout(self.now);
            self.settle();
            if let Some(next) = self.policy.poll_timeout() {
                assert!(
                    next > self.now || self.now == Time::from_unix(Duration::MAX),
                    "deadline {next:?} not after {:?} once handled",
                    self.now
                );
            }
        }
    }

    /// The peers file round trip: what the policy saves parses again, to the same
    /// records, and loads.
    pub fn save_load(&mut self) {
        let records = self.policy.peer_records();
        let text = serialize_peers_file(&records).expect("records serialize");
        let back = parse_peers_file::<()>(&text).expect("a saved peers file loads");
        let again = serialize_peers_file(&back).expect("records serialize");
        assert_eq!(text, again, "a peers file changes when loaded and saved");
        let _ = self.policy.load_peer_records(self.now, back);
    }

    /// Plays the runtime: dials become attempts, closes are reported closed, until the
    /// policy has nothing more to say. Remembers the victims of trims and evictions.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let Some(action) = self.policy.poll_action() else {
                return;
            };
            match action {
                Action::Dial { id, .. } => self.attempts.push(id),
                Action::Close { id, reason } => {
                    if matches!(
                        reason,
                        DisconnectReason::TooManyConnections | DisconnectReason::Evicted
                    ) {
                        if let Some(c) = self.policy.connections().find(|c| c.id == id) {
                            self.victims.push(c.peer_id);
                        }
                    }
                    self.policy.handle_closed(self.now, id, ClosedBy::Us);
                }
                Action::Event(PolicyEvent::ConnManager(ConnManagerEvent::Trimmed(v)))
                | Action::Event(PolicyEvent::ConnManager(ConnManagerEvent::Evicted {
                    victim: v,
                    ..
                })) => {
                    assert!(
                        !matches!(
                            v.overrode,
                            Some(ProtectionRule::Tag(_) | ProtectionRule::Trusted)
                        ),
                        "a trim overrode a protection that must hold: {v:?}"
                    );
                }
                _ => {}
            }
        }
        panic!("the policy keeps producing actions");
    }

    /// Checks specific to the operation just applied.
    fn check_after(&mut self, op: &Op) {
        let p = &self.policy;
        match *op {
            Op::BanPeer(n) => assert!(
                p.connection_of(&peer(n)).is_none(),
                "a banned peer is still connected"
            ),
            Op::BanPoint(n) => assert!(
                p.connections().all(|c| c.remote_addr.ip() != point(n).ip()),
                "a banned address is still connected"
            ),
            Op::GreylistAddr(n) => {
                let addr = SocketAddr::new(ip(n), 40_000);
                let r = self.policy.handle_incoming(self.now, addr);
                assert!(r.is_err(), "a greylisted address was let in: {r:?}");
            }
            _ => {}
        }
    }

    /// The invariants of every state.
    pub fn check(&mut self) {
        let p = &self.policy;
        let pool = p.pool();
        let live = p.connection_count();
        assert!(live <= pool.config().max_connections, "{live} connections");
        assert_eq!(pool.active_connections(), live, "pool and policy disagree");
        assert_eq!(
            p.attempts_in_flight(),
            p.dialing() + p.incoming_in_flight(),
            "attempt counters"
        );
        assert!(p.incoming_in_flight() <= p.config().max_incoming_handshakes);
        if p.conn_manager().is_active() {
            assert_eq!(p.conn_manager().connection_count(), live, "manager's count");
        }
        assert!(p.conn_manager().protected_peers() <= p.conn_manager().limits().budget);
        let mut pending = 0;
        for info in pool.points() {
            match info.state() {
                PointState::Requested | PointState::Accepted { .. } => pending += 1,
                PointState::Running { peer_id } => assert!(
                    p.connections()
                        .any(|c| c.point == Some(info.point()) && c.peer_id == peer_id),
                    "point {} running without a connection",
                    info.point()
                ),
                PointState::Disconnected => {}
            }
        }
        assert!(pending <= p.attempts_in_flight(), "points stuck in flight");
        let mut admitted = 0;
        for info in pool.peers() {
            match info.state() {
                PeerState::Accepted { .. } => admitted += 1,
                PeerState::Running { .. } => assert!(
                    p.connection_of(&info.peer_id()).is_some(),
                    "peer running without a connection"
                ),
                PeerState::Disconnected => {}
            }
        }
        assert!(admitted <= p.attempts_in_flight(), "peers stuck accepted");
        for c in p.connections() {
            assert!(
                !pool.acl().peer_blacklist().any(|b| *b == c.peer_id),
                "a blacklisted peer is connected"
            );
        }
        for v in std::mem::take(&mut self.victims) {
            let trusted = pool.peer(&v).is_some_and(|i| i.trusted);
            assert!(
                !self.policy.conn_manager().is_protected(&v, None) && !trusted,
                "a protected or trusted peer was trimmed"
            );
        }
    }
}

fn failure(f: Failure) -> AttemptFailure {
    match f {
        Failure::Connect => AttemptFailure::Connect,
        Failure::Timeout => AttemptFailure::Timeout,
        Failure::Garbage => AttemptFailure::Garbage,
        Failure::Myself => AttemptFailure::Myself,
        Failure::Nacked(m, n) => AttemptFailure::Nacked {
            motive: NackMotive::from_code(i16::from(m % 8)),
            points: (0..n % 12).map(|k| point(n.wrapping_add(k))).collect(),
        },
        Failure::Closed => AttemptFailure::Closed,
        Failure::RefusedByUs => AttemptFailure::RefusedByUs,
        Failure::NoCommonProtocol => AttemptFailure::NoCommonProtocol,
        Failure::Aborted => AttemptFailure::Aborted,
    }
}
