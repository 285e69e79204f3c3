//! A peer's or a point's event log (`GET /network/{peers/<peer_id>,points/<point>}/log`,
//! BEHAVIOUR.md §10-11): the last events (a ring of 100) as a JSON list, or with
//! `?monitor` a stream: the backlog, then each new event as it happens, one JSON value per
//! line. Peer events are octez's `{kind, timestamp, addr, port?}`; point events
//! `[timestamp, {event_kind, p2p_peer_id?}]`.

use super::{parse_peer, parse_point, RpcError, S};
use crate::node_cmd::BinaryNode;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use peerpool::NodeEvent;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::pool::{PointEvent, PointEventKind};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Whose log.
#[derive(Debug, Clone, Copy)]
enum Target {
    Peer(PeerId),
    Point(Point),
}

fn point_event_json(e: &PointEvent) -> Value {
    let (kind, peer) = match e.kind {
        PointEventKind::OutgoingRequest => ("outgoing_request", None),
        PointEventKind::AcceptingRequest { peer_id } => ("accepting_request", Some(peer_id)),
        PointEventKind::RejectingRequest { peer_id } => ("rejecting_request", Some(peer_id)),
        PointEventKind::RequestRejected { peer_id } => ("request_rejected", peer_id),
        PointEventKind::ConnectionEstablished { peer_id } => {
            ("connection_established", Some(peer_id))
        }
        PointEventKind::Disconnection { peer_id } => ("disconnection", Some(peer_id)),
        PointEventKind::ExternalDisconnection { peer_id } => {
            ("external_disconnection", Some(peer_id))
        }
    };
    let mut body = json!({ "event_kind": kind });
    if let Some(p) = peer {
        body["p2p_peer_id"] = json!(p.to_string());
    }
    json!([e.timestamp.to_rfc3339(), body])
}

/// The target's events now, oldest first; `None` when it is not known.
async fn events(node: &BinaryNode, t: Target) -> Option<Vec<Value>> {
    match t {
        Target::Peer(id) => node.peer_info(id).await.map(|p| {
            p.events()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect()
        }),
        Target::Point(pt) => node
            .point_info(pt)
            .await
            .map(|p| p.events().map(point_event_json).collect()),
    }
}

/// The entries of `now` after `last` (all of them when `last` is gone from the ring).
fn after(now: Vec<Value>, last: Option<&Value>) -> Vec<Value> {
    match last.and_then(|l| now.iter().rposition(|e| e == l)) {
        Some(i) => now.into_iter().skip(i + 1).collect(),
        None => now,
    }
}

#[derive(Debug, Deserialize)]
struct Monitor {
    monitor: Option<String>,
}

async fn log(r: super::Rpc, t: Target, monitor: bool) -> Result<Response, RpcError> {
    let backlog = events(&r.node, t)
        .await
        .ok_or_else(|| RpcError::new(StatusCode::NOT_FOUND, "unknown", "no such peer or point"))?;
    if !monitor {
        return Ok(Json(Value::Array(backlog)).into_response());
    }
    struct St {
        node: BinaryNode,
        events: peerpool::Events,
        pending: VecDeque<Value>,
        last: Option<Value>,
        target: Target,
    }
    let state = St {
        events: r.node.events(),
        node: r.node.clone(),
        last: backlog.last().cloned(),
        pending: backlog.into(),
        target: t,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(v) = st.pending.pop_front() {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                return Some((Ok::<_, std::convert::Infallible>(line), st));
            }
            // Wait for the pool to move, then look for new entries.
            match st.events.recv().await {
                Ok(NodeEvent::Pool(_)) | Err(peerpool::EventError::Lagged(_)) => {}
                Ok(_) => continue,
                Err(_) => return None,
            }
            let now = events(&st.node, st.target).await.unwrap_or_default();
            let new = after(now, st.last.as_ref());
            if let Some(l) = new.last() {
                st.last = Some(l.clone());
            }
            st.pending.extend(new);
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/network/peers/{peer_id}/log",
    operation_id = "peer_log",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)"), ("monitor" = Option<String>, Query, description = "Stream: the backlog, then new events")),
    responses((status = 200, description = "Peer events; with ?monitor a stream"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn peer_log(
    State(r): S,
    Path(peer): Path<String>,
    Query(q): Query<Monitor>,
) -> Result<Response, RpcError> {
    let peer = parse_peer(&peer)?;
    log(r, Target::Peer(peer), q.monitor.is_some()).await
}

#[utoipa::path(
    get,
    path = "/network/points/{point}/log",
    operation_id = "point_log",
    tag = "network",
    params(("point" = String, Path, description = "A point, ADDR:PORT or [ADDR6]:PORT"), ("monitor" = Option<String>, Query, description = "Stream: the backlog, then new events")),
    responses((status = 200, description = "Point events; with ?monitor a stream"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn point_log(
    State(r): S,
    Path(point): Path<String>,
    Query(q): Query<Monitor>,
) -> Result<Response, RpcError> {
    let point = parse_point(&point)?;
    log(r, Target::Point(point), q.monitor.is_some()).await
}

/// The routes, to merge into the RPC's router.
pub(super) fn routes() -> OpenApiRouter<super::Rpc> {
    OpenApiRouter::new()
        .routes(routes!(peer_log))
        .routes(routes!(point_log))
}
