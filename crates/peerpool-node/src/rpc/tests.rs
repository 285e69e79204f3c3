//! Every route over real HTTP against running nodes, success and error cases.

use super::*;
use crate::test_support::{link, node, node_with, request};

#[tokio::test]
async fn every_network_route_answers_as_octez_does() {
    let a = node(11).await;
    let b = node(12).await;
    let c = node(13).await;
    let local = ConnectionMetadata::default();
    let rpc = serve("127.0.0.1:0".parse().unwrap(), a.clone(), local)
        .await
        .unwrap();
    link(&a, &b).await;
    let b_id = b.peer_id().to_string();

    // self, stat
    let (s, body) = request(rpc, "GET", "/network/self").await;
    assert_eq!((s, body), (200, format!("\"{}\"", a.peer_id())));
    let (s, body) = request(rpc, "GET", "/network/stat").await;
    assert_eq!(s, 200);
    let stat: Value = serde_json::from_str(&body).unwrap();
    for key in [
        "total_sent",
        "total_recv",
        "current_inflow",
        "current_outflow",
    ] {
        assert!(stat.get(key).is_some(), "{key} in {body}");
    }
    assert!(
        stat["total_sent"].is_string(),
        "int64 as a string, as octez: {body}"
    );

    // connections
    let (s, body) = request(rpc, "GET", "/network/connections").await;
    assert_eq!(s, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1);
    let conn = &list[0];
    assert_eq!(conn["incoming"], true);
    assert_eq!(conn["peer_id"], b_id.as_str());
    assert_eq!(
        conn["id_point"]["addr"], "::ffff:127.0.0.1",
        "IPv6, as octez"
    );
    assert_eq!(
        conn["id_point"]["port"],
        b.local_addr().unwrap().port(),
        "the announced listening port"
    );
    assert!(conn["remote_socket_port"].is_u64());
    assert_eq!(conn["announced_version"]["chain_name"], "TEST");
    assert_eq!(conn["private"], false);
    assert_eq!(conn["local_metadata"]["disable_mempool"], false);
    assert_eq!(conn["remote_metadata"]["private_node"], false);
    let (s, body) = request(rpc, "GET", &format!("/network/connections/{b_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), *conn);
    let c_id = c.peer_id().to_string();
    let (s, body) = request(rpc, "GET", &format!("/network/connections/{c_id}")).await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "not_connected"
    );
    let (s, body) = request(rpc, "GET", "/network/connections/not-a-peer-id").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "invalid_peer_id"
    );

    // connect a point (PUT), then disconnect (DELETE)
    let c_point = Point::from(c.local_addr().unwrap());
    let (s, body) = request(rpc, "PUT", &format!("/network/points/{c_point}?timeout=5")).await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    assert!(a.connection(&c.peer_id()).is_some());
    let (s, body) = request(rpc, "PUT", "/network/points/127.0.0.1:1?timeout=2").await;
    assert_eq!(s, 502, "nothing listens on port 1: {body}");
    let (s, _) = request(
        rpc,
        "PUT",
        &format!("/network/points/{c_point}?timeout=soon"),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = request(rpc, "PUT", "/network/points/nowhere").await;
    assert_eq!(s, 400);
    let mut events = a.events();
    let (s, body) = request(rpc, "DELETE", &format!("/network/connections/{c_id}?wait")).await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    while a.connection(&c.peer_id()).is_some() {
        let _ = events.recv().await;
    }
    let (s, _) = request(rpc, "DELETE", &format!("/network/connections/{c_id}")).await;
    assert_eq!(s, 404, "no longer connected");

    // banned, greylist
    let (s, body) = request(rpc, "GET", &format!("/network/peers/{b_id}/banned")).await;
    assert_eq!((s, body.as_str()), (200, "false"));
    a.ban_peer(c.peer_id()).await;
    let (s, body) = request(rpc, "GET", &format!("/network/peers/{c_id}/banned")).await;
    assert_eq!((s, body.as_str()), (200, "true"));
    a.greylist_addr("127.0.0.9".parse().unwrap()).await;
    let (s, body) = request(rpc, "GET", "/network/points/127.0.0.9:9732/banned").await;
    assert_eq!((s, body.as_str()), (200, "true"));
    let (s, body) = request(rpc, "GET", "/network/greylist/ips").await;
    assert_eq!(s, 200);
    let ips: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ips["ips"], json!(["127.0.0.9"]), "{body}");
    assert!(ips["not_reliable_since"].is_null());
    a.greylist_peer(b.peer_id()).await;
    let (s, body) = request(rpc, "GET", "/network/greylist/peers").await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!([b_id.clone()]))
    );
    let (s, body) = request(rpc, "DELETE", "/network/greylist").await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    let (s, body) = request(rpc, "GET", "/network/points/127.0.0.9:9732/banned").await;
    assert_eq!((s, body.as_str()), (200, "false"));
    let (s, body) = request(rpc, "GET", &format!("/network/peers/{c_id}/banned")).await;
    assert_eq!((s, body.as_str()), (200, "false"), "all four lists cleared");

    // unknown route
    let (s, body) = request(rpc, "GET", "/network/nothing").await;
    assert_eq!(s, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "not_found"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn the_log_streams_pool_events_as_they_happen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = node(21).await;
    let b = node(22).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(rpc).await.unwrap();
    s.write_all(b"GET /network/log HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The response head arrives first: then the stream is subscribed.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    link(&a, &b).await;
    let wanted = "{\"event\":\"connection_established\"";
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&seen).contains(wanted) {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        true
    })
    .await;
    assert_eq!(found, Ok(true), "{}", String::from_utf8_lossy(&seen));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_connection_manager_routes_tag_protect_trim_and_explain() {
    let a = node(31).await;
    let b = node(32).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    link(&a, &b).await;
    let b_id = b.peer_id().to_string();
    let base = format!("/network/connmgr/peers/{b_id}");
    let (s, body) = request(rpc, "PUT", &format!("{base}/tags/score?weight=42")).await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    let (s, _) = request(rpc, "PUT", &format!("{base}/tags/score?weight=lots")).await;
    assert_eq!(s, 400);
    let (s, body) = request(rpc, "PUT", &format!("{base}/protection/app")).await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    let (s, body) = request(rpc, "GET", &base).await;
    assert_eq!(s, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["value"], 42);
    assert_eq!(info["tags"]["score"], 42);
    assert_eq!(info["conns"].as_array().map(Vec::len), Some(1));
    assert!(info["protected_by"]
        .as_array()
        .unwrap()
        .contains(&json!({ "rule": "tag", "tag": "app" })));
    let (s, body) = request(rpc, "DELETE", &format!("{base}/protection/app")).await;
    assert_eq!((s, body.as_str()), (200, "{\"still_protected\":false}"));
    let (s, body) = request(rpc, "DELETE", &format!("{base}/tags/score")).await;
    assert_eq!((s, body.as_str()), (200, "{}"));
    let (s, body) = request(rpc, "GET", &base).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["value"],
        0,
        "{s} {body}"
    );
    let unknown = a.peer_id().to_string();
    let (s, _) = request(rpc, "GET", &format!("/network/connmgr/peers/{unknown}")).await;
    assert_eq!(s, 404);
    // One connection, below the low watermark: a trim closes nothing; the list is empty.
    let (s, body) = request(rpc, "POST", "/network/connmgr/trim").await;
    assert_eq!((s, body.as_str()), (200, "{\"closing\":0}"));
    let (s, body) = request(rpc, "GET", "/network/connmgr/trims").await;
    assert_eq!((s, body.as_str()), (200, "[]"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_last_trims_are_listed_with_their_rule() {
    // Max 3, high 2, low 1: a third connection is trimmed at once (down to high: all are
    // young, so grace is overridden only that far).
    let a = node_with(41, |c| {
        c.pool.min_connections = 1;
        c.pool.max_connections = 3;
        c.policy.maintenance.expected_connections = Some(2);
        c.policy.max_incoming_connections = Some(3);
        c.policy.conn_manager.low_water = Some(1);
        c.policy.conn_manager.high_water = Some(2);
    })
    .await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    let mut events = a.events();
    let peers = [node(42).await, node(43).await, node(44).await];
    let point = Point::from(a.local_addr().unwrap());
    for p in &peers {
        let _ = p.connect(point, None).await;
    }
    loop {
        if let Ok(peerpool::NodeEvent::ConnManager(
            peerpool_proto::connmgr::ConnManagerEvent::Trimmed(_),
        )) = events.recv().await
        {
            break;
        }
    }
    // The RPC's recorder hears the same event on its own subscription.
    let list = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let (_, body) = request(rpc, "GET", "/network/connmgr/trims").await;
            let list: Vec<Value> = serde_json::from_str(&body).unwrap();
            if !list.is_empty() {
                return list;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["kind"], "trimmed");
    assert!(list[0]["rule"].is_string());
    assert!(
        list[0]["overrode"]["rule"].is_string(),
        "young: a shield overridden"
    );
    a.shutdown().await;
    for p in peers {
        p.shutdown().await;
    }
}

/// A request with a JSON body.
#[tokio::test]
async fn the_openapi_document_lists_every_route_the_rpc_serves() {
    let a = node(91).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    let (s, body) = request(rpc, "GET", "/openapi.json").await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths = doc["paths"].as_object().unwrap();
    let methods = |p: &str| -> Vec<String> {
        let mut m: Vec<String> = paths[p].as_object().unwrap().keys().cloned().collect();
        m.sort();
        m
    };
    assert_eq!(methods("/network/connections/{peer_id}"), ["delete", "get"]);
    assert_eq!(methods("/network/points/{point}"), ["get", "patch", "put"]);
    assert_eq!(methods("/network/peers/{peer_id}"), ["get", "patch"]);
    assert_eq!(
        methods("/network/connmgr/peers/{peer_id}/protection/{tag}"),
        ["delete", "put"]
    );
    assert_eq!(paths.len(), 23, "{:?}", paths.keys().collect::<Vec<_>>());
    // Every parameterless GET in the document is served (not the fallback's 404).
    for (path, ops) in paths {
        if path.contains('{') || ops.get("get").is_none() || path == "/network/log" {
            continue;
        }
        let (s, body) = request(rpc, "GET", path).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    // A healthy node breaks no invariant.
    let (s, body) = request(rpc, "GET", "/network/audit").await;
    assert_eq!((s, body.as_str()), (200, "[]"));
    a.shutdown().await;
}
