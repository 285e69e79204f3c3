//! Every route over real HTTP against running nodes, success and error cases.

use super::*;
use crate::test_support::{link, node, request};

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
    assert_eq!(conn["id_point"]["addr"], "127.0.0.1");
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
