//! `/network/points`: the known points and their infos, and the operator's actions on one
//! (BEHAVIOUR.md §10), in octez's JSON (`P2p_point.Info`: `trusted`, `greylisted_until`
//! (left out at the epoch), `state {event_kind, p2p_peer_id?}`, `p2p_peer_id?`, the
//! `last_*` dates, a peer's as `[peer_id, date]`, `expected_peer_id?`).

use super::{parse_peer, parse_point, RpcError, S};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use peerpool_proto::identity::PeerId;
use peerpool_proto::pool::{PointInfo, PointState, Time};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

fn state_name(s: &PointState) -> &'static str {
    match s {
        PointState::Requested => "requested",
        PointState::Accepted { .. } => "accepted",
        PointState::Running { .. } => "running",
        PointState::Disconnected => "disconnected",
    }
}

fn peer_of(s: &PointState) -> Option<PeerId> {
    match s {
        PointState::Accepted { peer_id } | PointState::Running { peer_id } => Some(*peer_id),
        _ => None,
    }
}

/// octez's `P2p_point.Info` JSON.
pub(super) fn point_json(p: &PointInfo) -> Value {
    let state = p.state();
    let mut o = Map::new();
    o.insert("trusted".into(), json!(p.trusted));
    if let Some(t) = p.greylisted_until().filter(|t| *t > Time::EPOCH) {
        o.insert("greylisted_until".into(), json!(t.to_rfc3339()));
    }
    let mut st = json!({ "event_kind": state_name(&state) });
    if let Some(peer) = peer_of(&state) {
        st["p2p_peer_id"] = json!(peer.to_string());
        o.insert("p2p_peer_id".into(), json!(peer.to_string()));
    }
    o.insert("state".into(), st);
    let date = |t: Time| json!(t.to_rfc3339());
    let stamped = |(peer, t): (PeerId, Time)| json!([peer.to_string(), t.to_rfc3339()]);
    if let Some(t) = p.last_failed_connection() {
        o.insert("last_failed_connection".into(), date(t));
    }
    if let Some(x) = p.last_rejected_connection() {
        o.insert("last_rejected_connection".into(), stamped(x));
    }
    if let Some(x) = p.last_established_connection() {
        o.insert("last_established_connection".into(), stamped(x));
    }
    if let Some(x) = p.last_disconnection() {
        o.insert("last_disconnection".into(), stamped(x));
    }
    if let Some(x) = p.last_seen() {
        o.insert("last_seen".into(), stamped(x));
    }
    if let Some(t) = p.last_miss() {
        o.insert("last_miss".into(), date(t));
    }
    if let Some(e) = p.expected_peer_id {
        o.insert("expected_peer_id".into(), json!(e.to_string()));
    }
    Value::Object(o)
}

#[derive(Debug, Deserialize)]
struct Filter {
    filter: Option<String>,
}

#[utoipa::path(
    get,
    path = "/network/points",
    operation_id = "points",
    tag = "network",
    params(("filter" = Option<String>, Query, description = "requested, accepted, running, disconnected; several separated by commas")),
    responses((status = 200, description = "Known points: [[point, info]]"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn list(State(r): S, Query(q): Query<Filter>) -> Result<Json<Value>, RpcError> {
    // `?filter=` is repeatable in octez; here one value or several separated by commas.
    let wanted: Vec<String> = q
        .filter
        .map(|f| f.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for w in &wanted {
        if !["requested", "accepted", "running", "disconnected"].contains(&w.as_str()) {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filter",
                format!("filter {w:?}: requested, accepted, running or disconnected"),
            ));
        }
    }
    let mut points = r.node.points().await;
    points.sort_by_key(PointInfo::point);
    let list = points
        .iter()
        .filter(|p| wanted.is_empty() || wanted.iter().any(|w| w == state_name(&p.state())))
        .map(|p| json!([p.point().to_string(), point_json(p)]))
        .collect();
    Ok(Json(Value::Array(list)))
}

#[utoipa::path(
    get,
    path = "/network/points/{point}",
    operation_id = "point",
    tag = "network",
    params(("point" = String, Path, description = "A point, ADDR:PORT or [ADDR6]:PORT")),
    responses((status = 200, description = "One point (P2p_point.Info)"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn info(State(r): S, Path(point): Path<String>) -> Result<Json<Value>, RpcError> {
    let point = parse_point(&point)?;
    r.node
        .point_info(point)
        .await
        .map(|p| Json(point_json(&p)))
        .ok_or_else(|| {
            RpcError::new(
                StatusCode::NOT_FOUND,
                "unknown_point",
                format!("{point} is not known"),
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    acl: Option<String>,
    peer_id: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/network/points/{point}",
    operation_id = "patch_point",
    tag = "network",
    params(("point" = String, Path, description = "A point, ADDR:PORT or [ADDR6]:PORT")),
    responses((status = 200, description = "Point info after {acl?: ban|trust|open, peer_id?}"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn patch(
    State(r): S,
    Path(point): Path<String>,
    body: String,
) -> Result<Json<Value>, RpcError> {
    let point = parse_point(&point)?;
    let patch: Patch = serde_json::from_str(&body).map_err(|e| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{{\"acl\"?, \"peer_id\"?}}: {e}"),
        )
    })?;
    let peer = patch.peer_id.as_deref().map(parse_peer).transpose()?;
    let acl = match patch.acl.as_deref() {
        None => None,
        Some(a @ ("ban" | "trust" | "open")) => Some(a.to_owned()),
        Some(other) => {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "invalid_acl",
                format!("acl {other:?}: ban, trust or open"),
            ))
        }
    };
    // octez: the expected peer id first, then the ACL.
    if let Some(peer) = peer {
        r.node.set_expected_peer_id(point, peer).await;
    }
    match acl.as_deref() {
        Some("ban") => r.node.ban_point(point).await,
        Some("trust") => r.node.trust_point(point).await,
        Some("open") => r.node.open_point(point).await,
        _ => {}
    }
    info(State(r), Path(point.to_string())).await
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    timeout: Option<String>,
}

#[utoipa::path(
    put,
    path = "/network/points/{point}",
    operation_id = "connect",
    tag = "network",
    params(("point" = String, Path, description = "A point, ADDR:PORT or [ADDR6]:PORT"), ("timeout" = Option<f64>, Query, description = "Seconds, default 10")),
    responses((status = 200, description = "Connected"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 502, description = "The connection failed: {kind, message}"))
)]
async fn connect(
    State(r): S,
    Path(point): Path<String>,
    Query(q): Query<ConnectQuery>,
) -> Result<Json<Value>, RpcError> {
    let point = parse_point(&point)?;
    // octez's default: 10 s.
    let secs = match q.timeout.as_deref() {
        None => 10.0,
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
            .ok_or_else(|| {
                RpcError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_timeout",
                    format!("timeout {t:?}: seconds in (0, 86400]"),
                )
            })?,
    };
    r.node
        .connect_with_timeout(point, None, Some(Duration::from_secs_f64(secs)))
        .await
        .map(|_| Json(json!({})))
        .map_err(|e| RpcError::new(StatusCode::BAD_GATEWAY, "connection_failed", e.to_string()))
}

/// The routes, to merge into the RPC's router.
pub(super) fn routes() -> OpenApiRouter<super::Rpc> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(info, patch, connect))
}
