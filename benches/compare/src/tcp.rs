//! The baseline: plain tokio TCP on 127.0.0.1 (`TCP_NODELAY`), no encryption, no framing.
//! "Established" is a connect plus one round trip (one byte echoed), the least any
//! authenticated handshake needs; a cycle ends when each side has seen the other close.

use crate::{Concurrent, Cycles, Transfer, MESSAGE_BYTES};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener that echoes one byte, then waits for the dialer to close and closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {
                    // Until the dialer's FIN; dropping the stream then closes ours.
                    let _ = s.read(&mut b).await;
                }
            });
        }
    });
    addr
}

/// One cycle; returns the time to established (connect + one round trip).
async fn cycle(addr: SocketAddr) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut b = [1u8; 1];
    s.write_all(&b).await.expect("write");
    s.read_exact(&mut b).await.expect("echo");
    let established = start.elapsed().as_secs_f64();
    s.shutdown().await.expect("shutdown");
    // The server's FIN: it has seen ours and closed.
    let n = s.read(&mut b).await.expect("read");
    assert_eq!(n, 0, "the server sent more than its echo");
    established
}

/// One connection, `bytes` in 64 KiB writes one way.
pub async fn throughput(bytes: u64) -> Transfer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (mut client, (mut server, _)) = (client.expect("connect"), server.expect("accept"));
    client.set_nodelay(true).expect("nodelay");
    server.set_nodelay(true).expect("nodelay");
    let count = bytes.div_ceil(MESSAGE_BYTES as u64);
    let (start, cpu) = (Instant::now(), crate::measure::cpu_time());
    let sender = tokio::spawn(async move {
        let block = vec![0x5au8; MESSAGE_BYTES];
        for _ in 0..count {
            client.write_all(&block).await.expect("write");
        }
    });
    let mut buf = vec![0u8; MESSAGE_BYTES];
    for _ in 0..count {
        server.read_exact(&mut buf).await.expect("read");
    }
    let t = Transfer::since(start, cpu, count * MESSAGE_BYTES as u64);
    sender.await.expect("sender");
    t
}

/// `n` cycles from one dialer.
pub async fn sequential(n: usize) -> Cycles {
    let addr = echo_server().await;
    let start = Instant::now();
    let mut established = Vec::with_capacity(n);
    for _ in 0..n {
        established.push(cycle(addr).await);
    }
    Cycles::since(start, established)
}

/// `dialers` dialers at once, `each` cycles each.
pub async fn concurrent(dialers: usize, each: usize) -> Concurrent {
    let addr = echo_server().await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..dialers)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..each {
                    cycle(addr).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("dialer");
    }
    Concurrent::since(start, dialers * each)
}

/// Resident bytes before and after `nodes·(nodes−1)/2` idle connected socket pairs in
/// this process (the same count as the other stacks' meshes).
pub async fn idle_memory(nodes: usize) -> (u64, u64) {
    let n = crate::mesh_connections(nodes);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let mut accepted = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    let before = crate::settled_rss();
    for _ in 0..n {
        let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let c = c.expect("connect");
        c.set_nodelay(true).expect("nodelay");
        clients.push(c);
        accepted.push(s.expect("accept").0);
    }
    let after = crate::settled_rss();
    assert_eq!(accepted.len(), clients.len());
    (before, after)
}
