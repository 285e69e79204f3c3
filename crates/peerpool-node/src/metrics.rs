//! `/metrics` in the Prometheus text format (issue 10 §4), built on the node's public API
//! only: octez's P2P metric set (BEHAVIOUR.md §10) under a `peerpool_p2p_` prefix, and the
//! connection manager's counters.
//!
//! Gauges are read from the node when a scrape comes (`sample`); counters follow the
//! node's events (`count`). The recorder is this module's own (`metrics`'
//! `with_local_recorder`), not the process-wide one, so several nodes or tests can each
//! have theirs.
//!

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use peerpool::{Node, NodeEvent, PeerMetadata};
use peerpool_proto::connmgr::{ConnManagerEvent, VictimRule};
use peerpool_proto::handshake::Direction;
use peerpool_proto::message::AppMessage;
use peerpool_proto::policy::Refusal;
use peerpool_proto::pool::{P2pEvent, PeerState, PointState, Time};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Every victim rule's label.
const RULES: [&str; 6] = [
    "duplicate",
    "lowest_value",
    "crowded_netgroup",
    "inbound",
    "youngest",
    "last",
];

pub(crate) fn rule_label(rule: &VictimRule) -> &'static str {
    match rule {
        VictimRule::Duplicate => RULES[0],
        VictimRule::LowestValue => RULES[1],
        VictimRule::CrowdedNetgroup(_) => RULES[2],
        VictimRule::Inbound => RULES[3],
        VictimRule::Youngest => RULES[4],
        VictimRule::Last => RULES[5],
    }
}

/// Every reason an incoming connection is refused before its handshake.
const REFUSALS: [&str; 6] = [
    "banned_or_greylisted",
    "too_many_connections",
    "too_many_incoming_handshakes",
    "too_many_handshakes_from_addr",
    "too_many_handshakes_from_netgroup",
    "not_active",
];

fn refusal_label(r: &Refusal) -> &'static str {
    match r {
        Refusal::Pool(_) => REFUSALS[0],
        Refusal::TooManyConnections => REFUSALS[1],
        Refusal::TooManyIncomingHandshakes => REFUSALS[2],
        Refusal::TooManyHandshakesFromAddr => REFUSALS[3],
        Refusal::TooManyHandshakesFromNetgroup(_) => REFUSALS[4],
        _ => REFUSALS[5],
    }
}

/// A node's metrics: a Prometheus recorder of its own.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with every counter at 0 (so a scrape names them all from the start).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let m = Metrics { recorder, handle };
        m.record(|| {
            for result in ["success", "failure", "ignored"] {
                counter!("peerpool_p2p_swaps_total", "result" => result).absolute(0);
            }
            for rule in RULES {
                counter!("peerpool_p2p_connmgr_trims_total", "rule" => rule).absolute(0);
                counter!("peerpool_p2p_connmgr_evictions_total", "rule" => rule).absolute(0);
            }
            counter!("peerpool_p2p_connmgr_refusals_total", "reason" => "netgroup_full")
                .absolute(0);
            for reason in REFUSALS {
                counter!("peerpool_p2p_incoming_refusals_total", "reason" => reason).absolute(0);
            }
        });
        m
    }

    fn record(&self, f: impl FnOnce()) {
        with_local_recorder(&self.recorder, f);
    }

    /// Reads the gauges from `node` now.
    pub async fn sample<M: AppMessage, P: PeerMetadata>(&self, node: &Node<M, P>) {
        let conns = node.connection_infos();
        let incoming = conns
            .iter()
            .filter(|c| c.direction == Direction::Incoming)
            .count();
        let private = conns.iter().filter(|c| c.metadata.private_node).count();
        let peers = node.peers().await;
        let count_peers =
            |f: fn(&PeerState) -> bool| peers.iter().filter(|p| f(&p.state())).count();
        let points = node.points().await;
        let count_points =
            |f: fn(&PointState) -> bool| points.iter().filter(|p| f(&p.state())).count();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(Time::from_unix)
            .unwrap_or(Time::EPOCH);
        let greylisted = points
            .iter()
            .filter(|p| p.greylisted_until().is_some_and(|t| t > now))
            .count();
        let trusted = points.iter().filter(|p| p.trusted).count();
        let stats = node.stats().await;
        let protected = node.conn_manager().protected_peers().await;
        let (received, outgoing) = (node.buffered_bytes(), node.outgoing_budget_in_use());
        #[allow(clippy::cast_precision_loss)] // counts and byte totals far below 2^53
        self.record(|| {
            gauge!("peerpool_p2p_connections_active").set(conns.len() as f64);
            gauge!("peerpool_p2p_connections_incoming").set(incoming as f64);
            gauge!("peerpool_p2p_connections_outgoing").set((conns.len() - incoming) as f64);
            gauge!("peerpool_p2p_connections_private").set(private as f64);
            gauge!("peerpool_p2p_peers_accepted")
                .set(count_peers(|s| matches!(s, PeerState::Accepted { .. })) as f64);
            gauge!("peerpool_p2p_peers_running")
                .set(count_peers(|s| matches!(s, PeerState::Running { .. })) as f64);
            gauge!("peerpool_p2p_peers_disconnected")
                .set(count_peers(|s| matches!(s, PeerState::Disconnected)) as f64);
            gauge!("peerpool_p2p_points_trusted").set(trusted as f64);
            gauge!("peerpool_p2p_points_greylisted").set(greylisted as f64);
            gauge!("peerpool_p2p_points_accepted")
                .set(count_points(|s| matches!(s, PointState::Accepted { .. })) as f64);
            gauge!("peerpool_p2p_points_running")
                .set(count_points(|s| matches!(s, PointState::Running { .. })) as f64);
            gauge!("peerpool_p2p_points_disconnected")
                .set(count_points(|s| matches!(s, PointState::Disconnected)) as f64);
            gauge!("peerpool_p2p_io_scheduler_total_sent").set(stats.io.total_sent as f64);
            gauge!("peerpool_p2p_io_scheduler_total_recv").set(stats.io.total_recv as f64);
            gauge!("peerpool_p2p_io_scheduler_current_inflow")
                .set(f64::from(stats.io.current_inflow));
            gauge!("peerpool_p2p_io_scheduler_current_outflow")
                .set(f64::from(stats.io.current_outflow));
            gauge!("peerpool_p2p_connmgr_protected_peers").set(protected as f64);
            // Memory held for connections, against its node-wide bounds.
            gauge!("peerpool_p2p_buffer_received_bytes").set(received as f64);
            gauge!("peerpool_p2p_buffer_outgoing_budget_bytes").set(outgoing as f64);
            counter!("peerpool_p2p_messages_received_total").absolute(stats.messages_received);
            counter!("peerpool_p2p_messages_sent_total").absolute(stats.messages_sent);
        });
    }

    /// Counts what `event` says (swaps, trims and evictions by rule, refusals by reason).
    pub fn count(&self, event: &NodeEvent) {
        self.record(|| match event {
            NodeEvent::Pool(P2pEvent::SwapSuccess { .. }) => {
                counter!("peerpool_p2p_swaps_total", "result" => "success").increment(1);
            }
            NodeEvent::Pool(P2pEvent::SwapFailure { .. }) => {
                counter!("peerpool_p2p_swaps_total", "result" => "failure").increment(1);
            }
            NodeEvent::Pool(P2pEvent::SwapRequestIgnored { .. }) => {
                counter!("peerpool_p2p_swaps_total", "result" => "ignored").increment(1);
            }
            NodeEvent::ConnManager(ConnManagerEvent::Trimmed(v)) => {
                counter!("peerpool_p2p_connmgr_trims_total", "rule" => rule_label(&v.rule))
                    .increment(1);
            }
            NodeEvent::ConnManager(ConnManagerEvent::Evicted { victim, .. }) => {
                counter!("peerpool_p2p_connmgr_evictions_total", "rule" => rule_label(&victim.rule))
                    .increment(1);
            }
            NodeEvent::IncomingRefused { reason, .. } => {
                counter!("peerpool_p2p_incoming_refusals_total", "reason" => refusal_label(reason))
                    .increment(1);
            }
            NodeEvent::ConnManager(ConnManagerEvent::NetgroupFull { .. }) => {
                counter!("peerpool_p2p_connmgr_refusals_total", "reason" => "netgroup_full")
                    .increment(1);
            }
            _ => {}
        });
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Counts `node`'s events into `metrics` until the node stops.
pub fn spawn_counter<M: AppMessage, P: PeerMetadata>(node: &Node<M, P>, metrics: Arc<Metrics>) {
    let mut events = node.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => metrics.count(&e),
                // A lagging counter undercounts; it goes on.
                Err(peerpool::EventError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
}

type Shared<M, P> = (Node<M, P>, Arc<Metrics>);

async fn scrape<M: AppMessage, P: PeerMetadata>(
    State((node, metrics)): State<Shared<M, P>>,
) -> impl IntoResponse {
    metrics.sample(&node).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// Serves `GET /metrics` for `node` on `addr`; returns the bound address.
///
/// Errors: the address cannot be bound.
pub async fn serve<M: AppMessage, P: PeerMetadata>(
    addr: SocketAddr,
    node: Node<M, P>,
) -> std::io::Result<SocketAddr> {
    let metrics = Arc::new(Metrics::new());
    spawn_counter(&node, metrics.clone());
    let app = Router::new()
        .route("/metrics", get(scrape::<M, P>))
        .with_state((node, metrics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a panic is the failure report
    use super::*;
    use crate::test_support::{link, node, request};
    use std::collections::BTreeSet;

    /// The names a scrape gives, against the golden list (a renamed or lost metric fails).
    #[tokio::test]
    async fn a_scrape_names_every_metric_of_the_golden_list_and_counts_connections() {
        let a = node(1).await;
        let b = node(2).await;
        let addr = serve("127.0.0.1:0".parse().unwrap(), a.clone())
            .await
            .unwrap();
        link(&a, &b).await;
        let (status, text) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let names: BTreeSet<String> = text
            .lines()
            .filter(|l| l.starts_with("peerpool_p2p_"))
            .map(|l| l.split([' ', '{']).next().unwrap_or_default().to_owned())
            .collect();
        let golden: BTreeSet<String> = include_str!("../tests/golden/metrics_names.txt")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(names, golden);
        assert!(text.contains("peerpool_p2p_connections_active 1"), "{text}");
        assert!(
            text.contains("peerpool_p2p_connections_incoming 1"),
            "{text}"
        );
        assert!(text.contains("peerpool_p2p_peers_running 1"), "{text}");
        // b says something to a: a counts one more message received.
        let before = a.stats().await.messages_received;
        b.send(
            &a.peer_id(),
            &peerpool_proto::message::RawMessage {
                tag: 0x7f00,
                body: vec![1],
            },
        )
        .await
        .unwrap();
        let _ = a.recv_any().await;
        let (_, text) = request(addr, "GET", "/metrics").await;
        assert!(
            text.contains(&format!(
                "peerpool_p2p_messages_received_total {}",
                before + 1
            )),
            "{text}"
        );
        assert!(
            text.contains("peerpool_p2p_swaps_total{result=\"success\"} 0"),
            "{text}"
        );
        assert_eq!(request(addr, "GET", "/nope").await.0, 404);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn events_count_by_rule_and_result() {
        use peerpool_proto::connmgr::Victim;
        use peerpool_proto::identity::PeerId;
        use peerpool_proto::policy::ConnectionId;
        let m = Metrics::new();
        let victim = Victim {
            id: ConnectionId(1),
            peer_id: PeerId([1; 16]),
            rule: VictimRule::Youngest,
            overrode: None,
        };
        m.count(&NodeEvent::ConnManager(ConnManagerEvent::Trimmed(
            victim.clone(),
        )));
        m.count(&NodeEvent::ConnManager(ConnManagerEvent::Trimmed(victim)));
        m.count(&NodeEvent::IncomingRefused {
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            reason: Refusal::TooManyHandshakesFromAddr,
        });
        m.count(&NodeEvent::Pool(P2pEvent::SwapFailure {
            source: PeerId([2; 16]),
        }));
        let text = m.render();
        assert!(
            text.contains("peerpool_p2p_connmgr_trims_total{rule=\"youngest\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("peerpool_p2p_swaps_total{result=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "peerpool_p2p_incoming_refusals_total{reason=\"too_many_handshakes_from_addr\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("peerpool_p2p_swaps_total{result=\"success\"} 0"),
            "{text}"
        );
    }
}
