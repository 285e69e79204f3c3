//! The point and peer routes over real HTTP: lists, filters, details, PATCH changes, their
//! logs (listed and monitored), and `full_stat`.

use super::*;
use crate::test_support::{link, node, request};

async fn send_json(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn points_are_listed_filtered_shown_and_patched() {
    let a = node(51).await;
    let b = node(52).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    // a dials b: b's point is running; a knows another point, disconnected.
    let b_point = Point::from(b.local_addr().unwrap());
    a.connect(b_point, None).await.unwrap();
    let other: Point = "127.0.0.77:9732".parse().unwrap();
    a.add_peer(other, None).await;

    let (s, body) = request(rpc, "GET", "/network/points").await;
    assert_eq!(s, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    let entry = list
        .iter()
        .find(|e| e[0] == b_point.to_string())
        .unwrap_or_else(|| panic!("{body}"));
    let info = &entry[1];
    assert_eq!(info["state"]["event_kind"], "running");
    assert_eq!(info["state"]["p2p_peer_id"], b.peer_id().to_string());
    assert_eq!(info["p2p_peer_id"], b.peer_id().to_string());
    assert_eq!(info["trusted"], false);
    assert!(info["last_established_connection"][1].is_string(), "{info}");
    assert!(
        info.get("greylisted_until").is_none(),
        "left out at the epoch: {info}"
    );

    let (s, body) = request(rpc, "GET", "/network/points?filter=running").await;
    assert_eq!(s, 200);
    let running: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(running.len(), 1, "{body}");
    let (s, body) = request(rpc, "GET", "/network/points?filter=disconnected").await;
    let disconnected: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        disconnected.iter().any(|e| e[0] == other.to_string()),
        "{s} {body}"
    );
    assert_eq!(
        request(rpc, "GET", "/network/points?filter=sleeping")
            .await
            .0,
        400
    );

    let (s, body) = request(rpc, "GET", &format!("/network/points/{other}")).await;
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["trusted"], true, "added with --peer: trusted");
    assert_eq!(info["state"], json!({ "event_kind": "disconnected" }));
    assert_eq!(
        request(rpc, "GET", "/network/points/127.0.0.99:1").await.0,
        404
    );
    assert_eq!(request(rpc, "GET", "/network/points/nowhere").await.0, 400);

    // PATCH: the expected peer id, then the ACL.
    let c = node(53).await;
    let body = format!("{{\"acl\": \"open\", \"peer_id\": \"{}\"}}", c.peer_id());
    let (s, body) = send_json(rpc, "PATCH", &format!("/network/points/{other}"), &body).await;
    assert_eq!(s, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["trusted"], false, "opened: {info}");
    assert_eq!(info["expected_peer_id"], c.peer_id().to_string());
    let (s, _) = send_json(
        rpc,
        "PATCH",
        &format!("/network/points/{other}"),
        "{\"acl\": \"ban\"}",
    )
    .await;
    assert_eq!(s, 200);
    let (_, body) = request(rpc, "GET", &format!("/network/points/{other}/banned")).await;
    assert_eq!(body, "true");
    let (s, body) = send_json(
        rpc,
        "PATCH",
        &format!("/network/points/{other}"),
        "{\"acl\": \"maybe\"}",
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = send_json(
        rpc,
        "PATCH",
        &format!("/network/points/{other}"),
        "{\"color\": 1}",
    )
    .await;
    assert_eq!(s, 400);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn peers_are_listed_filtered_shown_and_patched() {
    let a = node(61).await;
    let b = node(62).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    link(&a, &b).await;
    let b_id = b.peer_id().to_string();
    let (s, body) = request(rpc, "GET", "/network/peers").await;
    assert_eq!(s, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    let entry = list
        .iter()
        .find(|e| e[0] == b_id.as_str())
        .unwrap_or_else(|| panic!("{body}"));
    let info = &entry[1];
    assert_eq!(info["state"], "running");
    assert_eq!(info["trusted"], false);
    assert_eq!(info["score"], 1.0);
    assert_eq!(info["conn_metadata"]["private_node"], false);
    assert_eq!(info["reachable_at"]["addr"], "::ffff:127.0.0.1");
    assert!(info["stat"]["total_recv"].is_string(), "{info}");
    assert!(
        info["last_established_connection"][0]["addr"].is_string(),
        "{info}"
    );
    assert!(info.get("peer_metadata").is_some());
    let (_, body) = request(rpc, "GET", "/network/peers?filter=disconnected").await;
    let none: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(none.iter().all(|e| e[0] != b_id.as_str()));
    assert_eq!(
        request(rpc, "GET", "/network/peers?filter=asleep").await.0,
        400
    );
    let (s, body) = request(rpc, "GET", &format!("/network/peers/{b_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["state"],
        "running"
    );
    let unknown = node(63).await;
    let (s, _) = request(rpc, "GET", &format!("/network/peers/{}", unknown.peer_id())).await;
    assert_eq!(s, 404);
    // Trust, then ban (which closes the connection).
    let (s, body) = send_json(
        rpc,
        "PATCH",
        &format!("/network/peers/{b_id}"),
        "{\"acl\": \"trust\"}",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["trusted"],
        true
    );
    let mut events = a.events();
    let (s, body) = send_json(
        rpc,
        "PATCH",
        &format!("/network/peers/{b_id}"),
        "{\"acl\": \"ban\"}",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["trusted"],
        false
    );
    while a.connection(&b.peer_id()).is_some() {
        let _ = events.recv().await;
    }
    let (_, body) = request(rpc, "GET", &format!("/network/peers/{b_id}/banned")).await;
    assert_eq!(body, "true");
    let (s, _) = send_json(
        rpc,
        "PATCH",
        &format!("/network/peers/{b_id}"),
        "{\"acl\": \"later\"}",
    )
    .await;
    assert_eq!(s, 400);
    for n in [a, b, unknown] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn full_stat_gathers_stat_connections_peers_and_points() {
    let a = node(71).await;
    let b = node(72).await;
    let c = node(73).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    link(&a, &b).await; // incoming at a
    a.connect(Point::from(c.local_addr().unwrap()), None)
        .await
        .unwrap(); // outgoing at a
    let (s, body) = request(rpc, "GET", "/network/full_stat").await;
    assert_eq!(s, 200, "{body}");
    let full: Value = serde_json::from_str(&body).unwrap();
    assert!(full["stat"]["total_sent"].is_string());
    assert_eq!(
        full["incoming_connections"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        full["outgoing_connections"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        full["incoming_connections"][0]["peer_id"],
        b.peer_id().to_string()
    );
    assert_eq!(
        full["outgoing_connections"][0]["peer_id"],
        c.peer_id().to_string()
    );
    assert_eq!(full["peers"].as_array().map(Vec::len), Some(2), "{body}");
    assert!(full["points"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p[0] == Point::from(c.local_addr().unwrap()).to_string()));
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn peer_and_point_logs_list_and_monitor() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = node(81).await;
    let b = node(82).await;
    let c = node(83).await;
    let rpc = serve(
        "127.0.0.1:0".parse().unwrap(),
        a.clone(),
        ConnectionMetadata::default(),
    )
    .await
    .unwrap();
    let b_point = Point::from(b.local_addr().unwrap());
    a.connect(b_point, None).await.unwrap();
    let (s, body) = request(rpc, "GET", &format!("/network/points/{b_point}/log")).await;
    assert_eq!(s, 200, "{body}");
    let log: Vec<Value> = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = log
        .iter()
        .filter_map(|e| e[1]["event_kind"].as_str())
        .collect();
    assert!(kinds.contains(&"outgoing_request"), "{body}");
    assert!(kinds.contains(&"connection_established"), "{body}");
    assert!(log[0][0].is_string(), "a date first: {body}");
    let (s, body) = request(rpc, "GET", &format!("/network/peers/{}/log", b.peer_id())).await;
    assert_eq!(s, 200, "{body}");
    let log: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        log.iter().any(|e| e["kind"] == "connection_established"),
        "{body}"
    );
    assert!(
        log[0]["timestamp"].is_string() && log[0]["addr"].is_string(),
        "{body}"
    );
    assert_eq!(
        request(rpc, "GET", "/network/points/127.0.0.99:1/log")
            .await
            .0,
        404
    );

    // Monitor c's point: nothing yet known of it, so add it, then connect.
    let c_point = Point::from(c.local_addr().unwrap());
    a.add_peer(c_point, None).await;
    let mut s = tokio::net::TcpStream::connect(rpc).await.unwrap();
    let req = format!("GET /network/points/{c_point}/log?monitor HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    a.connect(c_point, None).await.unwrap();
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&seen).contains("connection_established") {
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
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
