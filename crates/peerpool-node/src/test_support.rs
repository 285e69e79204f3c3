//! What the binary's tests share: test nodes on 127.0.0.1 and a minimal HTTP client.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use crate::node_cmd::BinaryNode;
use peerpool::{NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PowTarget};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A started, active node on 127.0.0.1 (no proof of work, no maintenance).
pub async fn node(seed: u64) -> BinaryNode {
    node_with(seed, |_| {}).await
}

/// [`node`] with its configuration changed by `adjust`.
pub async fn node_with(seed: u64, adjust: impl FnOnce(&mut NodeConfig)) -> BinaryNode {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let identity = Identity::generate(&PowTarget::new(0.0).unwrap(), &mut rng);
    let mut c = NodeConfig::new(std::sync::Arc::new(identity), "TEST");
    c.listen_addr = Some("127.0.0.1:0".parse().unwrap());
    c.pow_target = PowTarget::new(0.0).unwrap();
    c.policy.bootstrap_on_connect = false;
    c.policy.maintenance.enabled = false;
    adjust(&mut c);
    let n = BinaryNode::start(c.validate().unwrap()).await.unwrap();
    n.activate().await;
    n
}

/// `b` connects to `a`; returns once `a` has the connection too (no sleeping).
pub async fn link(a: &BinaryNode, b: &BinaryNode) {
    let mut events = a.events();
    let point = peerpool_proto::point::Point::from(a.local_addr().unwrap());
    b.connect(point, None).await.unwrap();
    while a.connection(&b.peer_id()).is_none() {
        if let Ok(NodeEvent::ConnectionEstablished { .. }) = events.recv().await {}
    }
}

/// One HTTP/1.1 request; returns the status code and the body.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}
