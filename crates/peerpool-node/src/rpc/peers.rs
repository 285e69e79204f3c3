//! `/network/peers`: the known peers and their infos, and the operator's actions on one
//! (BEHAVIOUR.md §10), in octez's JSON (`P2p_peer.Info`: `score`, `trusted`,
//! `conn_metadata?`, `peer_metadata`, `state` (`accepted|running|disconnected`),
//! `reachable_at?`, `stat`, the `last_*` as `[id_point, date]`).

use super::{metadata_json, parse_peer, RpcError, S};
use crate::metadata::OctezPeerMetadata;
use crate::node_cmd::BinaryNode;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use peerpool_proto::pool::{IdPoint, PeerInfo, PeerMeta, PeerState, Time};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

fn state_name(s: &PeerState) -> &'static str {
    match s {
        PeerState::Accepted { .. } => "accepted",
        PeerState::Running { .. } => "running",
        PeerState::Disconnected => "disconnected",
    }
}

/// octez's `P2p_peer.Info` JSON of `p` on `node` (its connection's metadata and traffic
/// when connected).
pub(super) async fn peer_json(node: &BinaryNode, p: &PeerInfo<OctezPeerMetadata>) -> Value {
    let connection = node.connection(&p.peer_id());
    let stat = connection
        .as_ref()
        .map(|c| c.scheduler().stat())
        .unwrap_or_default();
    let mut o = Map::new();
    o.insert("score".into(), json!(p.metadata.score()));
    o.insert("trusted".into(), json!(p.trusted));
    if let Some(c) = &connection {
        o.insert("conn_metadata".into(), metadata_json(&c.info().metadata));
    }
    o.insert(
        "peer_metadata".into(),
        serde_json::to_value(&p.metadata).unwrap_or(Value::Null),
    );
    o.insert("state".into(), json!(state_name(&p.state())));
    if let Some(at) = p.current_point() {
        o.insert("reachable_at".into(), json!(at));
    }
    o.insert(
        "stat".into(),
        serde_json::to_value(stat).unwrap_or(Value::Null),
    );
    let stamped = |x: Option<(IdPoint, Time)>| x.map(|(at, t)| json!([at, t.to_rfc3339()]));
    for (key, value) in [
        (
            "last_failed_connection",
            stamped(p.last_failed_connection()),
        ),
        (
            "last_rejected_connection",
            stamped(p.last_rejected_connection()),
        ),
        (
            "last_established_connection",
            stamped(p.last_established_connection()),
        ),
        ("last_disconnection", stamped(p.last_disconnection())),
        ("last_seen", stamped(p.last_seen())),
        ("last_miss", stamped(p.last_miss())),
    ] {
        if let Some(v) = value {
            o.insert(key.into(), v);
        }
    }
    Value::Object(o)
}

#[derive(Debug, Deserialize)]
struct Filter {
    filter: Option<String>,
}

#[utoipa::path(
    get,
    path = "/network/peers",
    operation_id = "peers",
    tag = "network",
    params(("filter" = Option<String>, Query, description = "accepted, running, disconnected; several separated by commas")),
    responses((status = 200, description = "Known peers: [[peer_id, info]]"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn list(State(r): S, Query(q): Query<Filter>) -> Result<Json<Value>, RpcError> {
    // `?filter=` is repeatable in octez; here one value or several separated by commas.
    let wanted: Vec<String> = q
        .filter
        .map(|f| f.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for w in &wanted {
        if !["accepted", "running", "disconnected"].contains(&w.as_str()) {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filter",
                format!("filter {w:?}: accepted, running or disconnected"),
            ));
        }
    }
    let mut out = Vec::new();
    for p in r.node.peers().await {
        if wanted.is_empty() || wanted.iter().any(|w| w == state_name(&p.state())) {
            out.push(json!([
                p.peer_id().to_string(),
                peer_json(&r.node, &p).await
            ]));
        }
    }
    Ok(Json(Value::Array(out)))
}

#[utoipa::path(
    get,
    path = "/network/peers/{peer_id}",
    operation_id = "peer",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)")),
    responses((status = 200, description = "One peer (P2p_peer.Info)"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn info(State(r): S, Path(peer): Path<String>) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    match r.node.peer_info(peer).await {
        Some(p) => Ok(Json(peer_json(&r.node, &p).await)),
        None => Err(RpcError::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!("{peer} is not known"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    acl: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/network/peers/{peer_id}",
    operation_id = "patch_peer",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)")),
    responses((status = 200, description = "Peer info after {acl?: ban|trust|open}"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn patch(
    State(r): S,
    Path(peer): Path<String>,
    body: String,
) -> Result<Json<Value>, RpcError> {
    let peer_id = parse_peer(&peer)?;
    let patch: Patch = serde_json::from_str(&body).map_err(|e| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{{\"acl\"?}}: {e}"),
        )
    })?;
    match patch.acl.as_deref() {
        None => {}
        Some("ban") => r.node.ban_peer(peer_id).await,
        Some("trust") => r.node.trust_peer(peer_id).await,
        Some("open") => r.node.open_peer(peer_id).await,
        Some(other) => {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "invalid_acl",
                format!("acl {other:?}: ban, trust or open"),
            ))
        }
    }
    info(State(r), Path(peer)).await
}

/// The routes, to merge into the RPC's router.
pub(super) fn routes() -> OpenApiRouter<super::Rpc> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(info, patch))
}
