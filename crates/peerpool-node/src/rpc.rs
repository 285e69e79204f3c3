//! The admin RPC (issue 10 §3, a first part): octez's `/network` routes (BEHAVIOUR.md §10)
//! with the same verbs, query parameters and JSON shapes, built on the node's public API.
//!
//! Served so far: `GET /network/self`, `GET /network/stat`, `GET /network/connections`,
//! `GET|DELETE /network/connections/<peer_id>`, `PUT /network/points/<point>?timeout=<s>`,
//! `GET /network/peers/<peer_id>/banned`, `GET /network/points/<point>/banned`,
//! `DELETE /network/greylist`, and the `/network/log` event stream (one JSON event per
//! line, octez's `{"event": "<snake_name>", …}`); plus `/network/connmgr/...` for the
//! connection manager (`connmgr`). Errors are JSON `{"kind", "message"}`: 400 for a
//! malformed peer id, point or parameter, 404 for an unknown connection or peer, 409 for a
//! protection beyond the budget, 502 for a failed connect.
//!
//! Points: `GET /network/points?filter=`, `GET|PATCH /network/points/<point>` (`points`).
//!
//! Peers: `GET /network/peers?filter=`, `GET|PATCH /network/peers/<peer_id>` (`peers`).
//!
//! Also `GET /network/full_stat`.
//!
//! Logs: `GET /network/{peers/<peer_id>,points/<point>}/log[?monitor]` (`logs`).
//!
//! And `GET /network/greylist/{peers,ips}`.
//!
//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' `utoipa::path`
//! annotations.

mod connmgr;
mod logs;
mod peers;
mod points;

use crate::node_cmd::BinaryNode;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use peerpool::ConnectionInfo;
use peerpool_proto::connection_message::{ConnectionMetadata, NetworkVersion};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use serde_json::{json, Value};
use std::net::SocketAddr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// An RPC error: its HTTP status, a kind and a message.
#[derive(Debug)]
pub struct RpcError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl RpcError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        RpcError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "kind": self.kind, "message": self.message })),
        )
            .into_response()
    }
}

pub(crate) fn parse_peer(text: &str) -> Result<PeerId, RpcError> {
    text.parse().map_err(|e| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "invalid_peer_id",
            format!("{text:?}: {e}"),
        )
    })
}

pub(crate) fn parse_point(text: &str) -> Result<Point, RpcError> {
    text.parse().map_err(|e| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "invalid_point",
            format!("{text:?}: {e}"),
        )
    })
}

fn version_json(v: &NetworkVersion) -> Value {
    json!({
        "chain_name": v.chain_name,
        "distributed_db_version": v.distributed_db_version,
        "p2p_version": v.p2p_version,
    })
}

pub(crate) fn metadata_json(m: &ConnectionMetadata) -> Value {
    json!({ "disable_mempool": m.disable_mempool, "private_node": m.private_node })
}

/// octez's `P2p_connection.Info` JSON.
fn connection_json(c: &ConnectionInfo, local: &ConnectionMetadata) -> Value {
    // octez's `P2p_connection.Id`: the address as IPv6 (IPv4-mapped), the port if known.
    let id_point = json!(peerpool_proto::pool::IdPoint {
        addr: c.remote_addr.ip(),
        port: c.listening_point.map(|p| p.port()),
    });
    json!({
        "incoming": c.direction == Direction::Incoming,
        "peer_id": c.peer_id.to_string(),
        "id_point": id_point,
        "remote_socket_port": c.remote_addr.port(),
        "announced_version": version_json(&c.announced_version),
        "private": c.metadata.private_node,
        "local_metadata": metadata_json(local),
        "remote_metadata": metadata_json(&c.metadata),
    })
}

/// What the handlers share: the node, our own connection metadata, the last trims.
pub(crate) struct Rpc {
    node: BinaryNode,
    local: ConnectionMetadata,
    trims: std::sync::Arc<connmgr::Trims>,
}

impl Clone for Rpc {
    fn clone(&self) -> Self {
        Rpc {
            node: self.node.clone(),
            local: self.local,
            trims: self.trims.clone(),
        }
    }
}

pub(crate) type S = State<Rpc>;

#[utoipa::path(
    get,
    path = "/network/self",
    operation_id = "self",
    tag = "network",
    responses((status = 200, description = "Our peer id"))
)]
async fn self_id(State(r): S) -> Json<Value> {
    Json(json!(r.node.peer_id().to_string()))
}

#[utoipa::path(
    get,
    path = "/network/stat",
    operation_id = "stat",
    tag = "network",
    responses((status = 200, description = "Global traffic (P2p_stat)"))
)]
async fn stat(State(r): S) -> Result<Json<Value>, RpcError> {
    let io = r.node.stats().await.io;
    serde_json::to_value(io)
        .map(Json)
        .map_err(|e| RpcError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding", e.to_string()))
}

#[utoipa::path(
    get,
    path = "/network/connections",
    operation_id = "connections",
    tag = "network",
    responses((status = 200, description = "Every connection (P2p_connection.Info)"))
)]
async fn connections(State(r): S) -> Json<Value> {
    let list: Vec<Value> = r
        .node
        .connection_infos()
        .iter()
        .map(|c| connection_json(c, &r.local))
        .collect();
    Json(Value::Array(list))
}

#[utoipa::path(
    get,
    path = "/network/connections/{peer_id}",
    operation_id = "connection",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)")),
    responses((status = 200, description = "One connection"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn connection(State(r): S, Path(peer): Path<String>) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    r.node
        .connection_infos()
        .iter()
        .find(|c| c.peer_id == peer)
        .map(|c| Json(connection_json(c, &r.local)))
        .ok_or_else(|| {
            RpcError::new(
                StatusCode::NOT_FOUND,
                "not_connected",
                format!("no connection with {peer}"),
            )
        })
}

#[utoipa::path(
    delete,
    path = "/network/connections/{peer_id}",
    operation_id = "disconnect",
    tag = "network",
    params(
        ("peer_id" = String, Path, description = "A peer id, b58check (id…)"),
        ("wait" = Option<String>, Query, description = "Answer once the connection has closed (its queued messages sent)")
    ),
    responses((status = 200, description = "Disconnected"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn disconnect(
    State(r): S,
    Path(peer): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    let Some(connection) = r.node.connection(&peer) else {
        return Err(RpcError::new(
            StatusCode::NOT_FOUND,
            "not_connected",
            format!("no connection with {peer}"),
        ));
    };
    // A Disconnect message goes out after what is queued, then the connection closes;
    // with `?wait` the answer comes once it has.
    r.node.disconnect(peer).await;
    if q.wait.is_some() {
        connection.closed().await;
    }
    Ok(Json(json!({})))
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

#[utoipa::path(
    get,
    path = "/network/peers/{peer_id}/banned",
    operation_id = "peer_banned",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)")),
    responses((status = 200, description = "Whether the peer is banned (false if trusted)"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn peer_banned(State(r): S, Path(peer): Path<String>) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    Ok(Json(json!(r.node.is_peer_banned(peer).await)))
}

#[utoipa::path(
    get,
    path = "/network/points/{point}/banned",
    operation_id = "point_banned",
    tag = "network",
    params(("point" = String, Path, description = "A point, ADDR:PORT or [ADDR6]:PORT")),
    responses((status = 200, description = "Whether the address is banned (false if trusted)"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn point_banned(State(r): S, Path(point): Path<String>) -> Result<Json<Value>, RpcError> {
    // Blacklisted or greylisted IP; false for a trusted point; the port is ignored.
    let point = parse_point(&point)?;
    let trusted = r.node.point_info(point).await.is_some_and(|i| i.trusted);
    Ok(Json(json!(
        !trusted && r.node.is_addr_banned(point.ip()).await
    )))
}

#[utoipa::path(
    delete,
    path = "/network/greylist",
    operation_id = "clear_greylist",
    tag = "network",
    responses((status = 200, description = "All four access lists cleared"))
)]
async fn clear_greylist(State(r): S) -> Json<Value> {
    r.node.acl_clear().await;
    Json(json!({}))
}

/// `GET /network/full_stat`: octez's `{stat, incoming_connections, outgoing_connections,
/// peers: [[id, info]], points: [[point, info]]}`.
#[utoipa::path(
    get,
    path = "/network/full_stat",
    operation_id = "full_stat",
    tag = "network",
    responses((status = 200, description = "Stat, connections, peers and points"))
)]
async fn full_stat(State(r): S) -> Result<Json<Value>, RpcError> {
    let Json(stat) = stat(State(r.clone())).await?;
    let (incoming, outgoing): (Vec<_>, Vec<_>) = r
        .node
        .connection_infos()
        .into_iter()
        .partition(|c| c.direction == Direction::Incoming);
    let conns = |list: Vec<ConnectionInfo>| -> Vec<Value> {
        list.iter().map(|c| connection_json(c, &r.local)).collect()
    };
    let mut peers = Vec::new();
    for p in r.node.peers().await {
        peers.push(json!([
            p.peer_id().to_string(),
            peers::peer_json(&r.node, &p).await
        ]));
    }
    let mut points = r.node.points().await;
    points.sort_by_key(peerpool_proto::pool::PointInfo::point);
    let points: Vec<Value> = points
        .iter()
        .map(|p| json!([p.point().to_string(), points::point_json(p)]))
        .collect();
    Ok(Json(json!({
        "stat": stat,
        "incoming_connections": conns(incoming),
        "outgoing_connections": conns(outgoing),
        "peers": peers,
        "points": points,
    })))
}

/// `GET /network/log`: the pool's events as they happen, one JSON object per line.
#[utoipa::path(
    get,
    path = "/network/log",
    operation_id = "log",
    tag = "network",
    responses((status = 200, description = "A stream of pool events, one JSON object per line"))
)]
async fn log(State(r): S) -> Response {
    let events = r.node.events();
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await {
                Ok(peerpool::NodeEvent::Pool(e)) => {
                    let mut line = serde_json::to_vec(&e).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::convert::Infallible>(line), events));
                }
                Ok(_) | Err(peerpool::EventError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /network/greylist/peers`: the greylisted peer ids.
#[utoipa::path(
    get,
    path = "/network/greylist/peers",
    operation_id = "greylist_peers",
    tag = "network",
    responses((status = 200, description = "Greylisted peer ids"))
)]
async fn greylist_peers(State(r): S) -> Json<Value> {
    let ids: Vec<String> = r
        .node
        .greylisted_peers()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    Json(json!(ids))
}

/// `GET /network/greylist/ips`: `{ips, not_reliable_since}` as octez.
#[utoipa::path(
    get,
    path = "/network/greylist/ips",
    operation_id = "greylist_ips",
    tag = "network",
    responses((status = 200, description = "Greylisted IPs: {ips, not_reliable_since}"))
)]
async fn greylist_ips(State(r): S) -> Json<Value> {
    let (ips, since) = r.node.greylisted_ips().await;
    Json(json!({
        "ips": ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "not_reliable_since": since.map(|t| t.to_rfc3339()),
    }))
}

/// `GET /network/audit`: the node's broken invariants, `[]` when all hold (peerpool's:
/// connections within the maximum, no point or peer Running without a connection, no
/// stuck attempt, no dial to a greylisted address; see `Node::audit`). The soak runs poll
/// it every second.
#[utoipa::path(
    get,
    path = "/network/audit",
    operation_id = "audit",
    tag = "network",
    responses((status = 200, description = "Broken invariants, one sentence each; [] when all hold"))
)]
async fn audit(State(r): S) -> Json<Value> {
    Json(json!(r.node.audit().await))
}

async fn not_found() -> RpcError {
    RpcError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The RPC's routes for `node`, whose own connection metadata is `local`.
pub fn router(node: BinaryNode, local: ConnectionMetadata) -> Router {
    let trims = std::sync::Arc::new(connmgr::Trims::default());
    connmgr::spawn_recorder(&node, trims.clone());
    let (router, mut api) = OpenApiRouter::new()
        .routes(routes!(self_id))
        .routes(routes!(stat))
        .routes(routes!(connections))
        .routes(routes!(connection, disconnect))
        .routes(routes!(peer_banned))
        .routes(routes!(point_banned))
        .routes(routes!(clear_greylist))
        .routes(routes!(greylist_peers))
        .routes(routes!(greylist_ips))
        .routes(routes!(log))
        .routes(routes!(full_stat))
        .routes(routes!(audit))
        .merge(connmgr::routes())
        .merge(points::routes())
        .merge(peers::routes())
        .merge(logs::routes())
        .split_for_parts();
    api.info.title = "peerpool admin RPC".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    api.info.description = Some("octez's /network routes and peerpool's /network/connmgr".into());
    let document = std::sync::Arc::new(api);
    router
        .route(
            "/openapi.json",
            get(move || {
                let d = document.clone();
                async move { Json((*d).clone()) }
            }),
        )
        .fallback(not_found)
        .with_state(Rpc { node, local, trims })
}

/// Serves the RPC for `node` on `addr`; returns the bound address.
///
/// Errors: the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    node: BinaryNode,
    local: ConnectionMetadata,
) -> std::io::Result<SocketAddr> {
    let app = router(node, local);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "RPC server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pool;
