//! `/network/connmgr/...`: the connection manager over the RPC (issue 10 §3): a peer's
//! tags and protections, tagging and protecting, a trim on demand, and the last trims and
//! evictions with the rule that chose each.

use super::{parse_peer, RpcError, S};
use crate::metrics::rule_label;
use crate::node_cmd::BinaryNode;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use peerpool::NodeEvent;
use peerpool_proto::connmgr::{ConnManagerError, ConnManagerEvent, ProtectionRule, Victim};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How many trims and evictions `/network/connmgr/trims` remembers.
const REMEMBERED: usize = 100;

/// The last trims and evictions, newest last.
#[derive(Debug, Default)]
pub(super) struct Trims(Mutex<VecDeque<Value>>);

impl Trims {
    fn push(&self, v: Value) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == REMEMBERED {
                q.pop_front();
            }
            q.push_back(v);
        }
    }

    fn list(&self) -> Vec<Value> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn victim_json(kind: &str, v: &Victim) -> Value {
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(peerpool_proto::pool::Time::from_unix)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    json!({
        "time": at,
        "kind": kind,
        "connection": v.id.0,
        "peer_id": v.peer_id.to_string(),
        "rule": rule_label(&v.rule),
        "explanation": v.rule.to_string(),
        "overrode": v.overrode.as_ref().map(protection_json),
    })
}

fn protection_json(r: &ProtectionRule) -> Value {
    match r {
        ProtectionRule::Tag(t) => json!({ "rule": "tag", "tag": t }),
        ProtectionRule::Trusted => json!({ "rule": "trusted" }),
        ProtectionRule::Netgroup => json!({ "rule": "netgroup" }),
        ProtectionRule::LowRoundTrip => json!({ "rule": "low_round_trip" }),
        ProtectionRule::RecentlyUseful => json!({ "rule": "recently_useful" }),
        ProtectionRule::LongestUptime => json!({ "rule": "longest_uptime" }),
        ProtectionRule::Grace => json!({ "rule": "grace" }),
    }
}

fn manager_error(e: ConnManagerError) -> RpcError {
    let status = match e {
        ConnManagerError::ProtectionBudget { .. } => StatusCode::CONFLICT,
        ConnManagerError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    RpcError::new(status, "conn_manager", e.to_string())
}

/// Remembers `node`'s trims and evictions until it stops.
pub(super) fn spawn_recorder(node: &BinaryNode, trims: Arc<Trims>) {
    let mut events = node.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NodeEvent::ConnManager(ConnManagerEvent::Trimmed(v))) => {
                    trims.push(victim_json("trimmed", &v));
                }
                Ok(NodeEvent::ConnManager(ConnManagerEvent::Evicted { victim, .. })) => {
                    trims.push(victim_json("evicted", &victim));
                }
                Ok(_) | Err(peerpool::EventError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
}

#[utoipa::path(
    get,
    path = "/network/connmgr/peers/{peer_id}",
    operation_id = "connmgr_peer",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)")),
    responses((status = 200, description = "Tags, value, connections and protections"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 404, description = "Unknown: {kind, message}"))
)]
async fn tag_info(State(r): S, Path(peer): Path<String>) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    let info = r.node.conn_manager().tag_info(peer).await.ok_or_else(|| {
        RpcError::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!("the manager does not know {peer}"),
        )
    })?;
    Ok(Json(json!({
        "first_seen": info.first_seen.to_rfc3339(),
        "value": info.value,
        "tags": info.tags,
        "conns": info.conns.iter().map(|(id, t)| json!([id.0, t.to_rfc3339()])).collect::<Vec<_>>(),
        "protected_by": info.protected_by.iter().map(protection_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
struct Weight {
    weight: Option<String>,
}

#[utoipa::path(
    put,
    path = "/network/connmgr/peers/{peer_id}/tags/{tag}",
    operation_id = "connmgr_tag",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)"), ("tag" = String, Path, description = "The tag"), ("weight" = i64, Query, description = "The tag's value")),
    responses((status = 200, description = "Tagged"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn tag(
    State(r): S,
    Path((peer, tag)): Path<(String, String)>,
    Query(q): Query<Weight>,
) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    let text = q.weight.unwrap_or_default();
    let weight: i64 = text.parse().map_err(|_| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "invalid_weight",
            format!("weight {text:?}: an integer"),
        )
    })?;
    r.node
        .conn_manager()
        .tag_peer(peer, &tag, weight)
        .await
        .map_err(manager_error)?;
    Ok(Json(json!({})))
}

#[utoipa::path(
    delete,
    path = "/network/connmgr/peers/{peer_id}/tags/{tag}",
    operation_id = "connmgr_untag",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)"), ("tag" = String, Path, description = "The tag")),
    responses((status = 200, description = "Untagged"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn untag(
    State(r): S,
    Path((peer, tag)): Path<(String, String)>,
) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    r.node.conn_manager().untag_peer(peer, &tag).await;
    Ok(Json(json!({})))
}

#[utoipa::path(
    put,
    path = "/network/connmgr/peers/{peer_id}/protection/{tag}",
    operation_id = "connmgr_protect",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)"), ("tag" = String, Path, description = "The tag")),
    responses((status = 200, description = "Protected"), (status = 400, description = "Malformed parameter: {kind, message}"), (status = 409, description = "Beyond the protection budget"))
)]
async fn protect(
    State(r): S,
    Path((peer, tag)): Path<(String, String)>,
) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    r.node
        .conn_manager()
        .protect(peer, &tag)
        .await
        .map_err(manager_error)?;
    Ok(Json(json!({})))
}

#[utoipa::path(
    delete,
    path = "/network/connmgr/peers/{peer_id}/protection/{tag}",
    operation_id = "connmgr_unprotect",
    tag = "network",
    params(("peer_id" = String, Path, description = "A peer id, b58check (id…)"), ("tag" = String, Path, description = "The tag")),
    responses((status = 200, description = "{still_protected}"), (status = 400, description = "Malformed parameter: {kind, message}"))
)]
async fn unprotect(
    State(r): S,
    Path((peer, tag)): Path<(String, String)>,
) -> Result<Json<Value>, RpcError> {
    let peer = parse_peer(&peer)?;
    let still = r.node.conn_manager().unprotect(peer, &tag).await;
    Ok(Json(json!({ "still_protected": still })))
}

#[utoipa::path(
    post,
    path = "/network/connmgr/trim",
    operation_id = "connmgr_trim",
    tag = "network",
    responses((status = 200, description = "{closing}: connections asked to close"))
)]
async fn trim(State(r): S) -> Json<Value> {
    Json(json!({ "closing": r.node.conn_manager().trim_open_conns().await }))
}

#[utoipa::path(
    get,
    path = "/network/connmgr/trims",
    operation_id = "connmgr_trims",
    tag = "network",
    responses((status = 200, description = "The last trims and evictions with their rules"))
)]
async fn trims(State(r): S) -> Json<Value> {
    Json(Value::Array(r.trims.list()))
}

/// The routes, to merge into the RPC's router.
pub(super) fn routes() -> OpenApiRouter<super::Rpc> {
    OpenApiRouter::new()
        .routes(routes!(tag_info))
        .routes(routes!(tag, untag))
        .routes(routes!(protect, unprotect))
        .routes(routes!(trim))
        .routes(routes!(trims))
}
