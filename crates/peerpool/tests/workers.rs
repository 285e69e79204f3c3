//! The welcome worker and local discovery over real sockets on 127.0.0.x.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::discovery::DiscoveryConfig;
use peerpool::NodeEvent;
use peerpool_proto::policy::Refusal;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// A slowloris of 300 silent connections from one netgroup (127.0/16) holds at most its
/// share of the handshake slots; an honest peer from another netgroup (127.1/16) still
/// completes its handshake while they wait for their authentication timeout. octez's only
/// cap, handshakes in flight from anywhere, would lock it out.
#[tokio::test]
async fn a_slowloris_from_one_netgroup_leaves_room_for_an_honest_peer_from_another() {
    let mut cn = config(1, "127.0.0.1");
    cn.authentication_timeout = Duration::from_secs(30);
    let node = start(cn).await;
    let mut events = node.handle.events();
    let mut silent = Vec::new();
    for i in 0..300u32 {
        let ip = format!("127.0.{}.{}", 1 + i / 200, 2 + i % 200);
        silent.push(connect_from(&ip, node.addr).await.unwrap());
    }
    // The node refused what exceeds the caps, per address and per netgroup.
    let refused = wait_for(&mut events, |e| match e {
        NodeEvent::IncomingRefused {
            reason: Refusal::TooManyHandshakesFromNetgroup(_),
            ..
        } => Some(()),
        _ => None,
    });
    refused.await;
    // An honest peer from 127.1.0.0/16 connects and is established.
    let honest = start(config(2, "127.1.0.7")).await;
    let peer = honest
        .handle
        .connect(peerpool_proto::point::Point::from(node.addr), None)
        .await
        .unwrap();
    assert_eq!(peer, node.handle.peer_id());
    assert_exchange(&honest.handle, &node.handle, 0x10).await;
    drop(silent);
}

/// Two nodes that know nothing of each other find each other by local discovery and
/// connect (their maintenance wants one connection).
#[tokio::test]
async fn local_discovery_brings_two_nodes_together() {
    // Each announces to the other's discovery socket (loopback has no broadcast).
    let ports = [free_udp_port(), free_udp_port()];
    let mut nodes = Vec::new();
    for (i, ip) in ["127.0.0.2", "127.0.0.3"].into_iter().enumerate() {
        let mut c = config(10 + i as u64, ip);
        c.pool.min_connections = 1;
        c.policy.maintenance.enabled = true;
        c.policy.maintenance.looking_for_peers = Duration::from_millis(100);
        c.policy.maintenance.looking_for_peers_max = Duration::from_millis(200);
        let other = ["127.0.0.3", "127.0.0.2"][i];
        c.discovery = Some(DiscoveryConfig {
            bind: format!("{ip}:{}", ports[i]).parse().unwrap(),
            target: format!("{other}:{}", ports[1 - i]).parse().unwrap(),
            ..DiscoveryConfig::new(ip.parse().unwrap(), ports[i])
        });
        nodes.push(start(c).await);
    }
    let mut events = nodes[0].handle.events();
    let peer = nodes[1].handle.peer_id();
    wait_connected(&nodes[0].handle, &mut events, peer).await;
    assert!(nodes[0]
        .handle
        .known_points()
        .await
        .contains(&peerpool_proto::point::Point::from(nodes[1].addr)));
}

/// A UDP port free now on 127.0.0.1 (bound and released).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
