//! The rust-libp2p stack: TCP (`TCP_NODELAY`) + Noise (XX, X25519) + Yamux, with one
//! substream from `libp2p-stream` for the data, each swarm in its own task. "Established"
//! is the dialer's `ConnectionEstablished` (Noise and Yamux negotiated); a cycle ends when
//! both swarms have reported the connection closed.

use crate::{Concurrent, Cycles, Transfer, MESSAGE_BYTES};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/compare/1");

/// Per peer: connections established and closed so far.
type Counts = HashMap<PeerId, (u64, u64)>;

enum Command {
    Dial(Multiaddr, oneshot::Sender<PeerId>),
    Disconnect(PeerId),
}

/// A swarm running in its own task, driven by commands.
struct Swarm {
    peer_id: PeerId,
    commands: mpsc::UnboundedSender<Command>,
    counts: watch::Receiver<Counts>,
    control: libp2p_stream::Control,
    listen: Option<Multiaddr>,
}

impl Swarm {
    async fn start(listen: bool) -> Swarm {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("the transport builds")
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .expect("the behaviour builds")
            // Idle connections stay open (the default closes them after 0 s).
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        let mut listen_addr = None;
        if listen {
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr"))
                .expect("listen");
            while listen_addr.is_none() {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    listen_addr = Some(address);
                }
            }
        }
        let (commands, mut rx) = mpsc::unbounded_channel();
        let (counts_tx, counts) = watch::channel(Counts::new());
        tokio::spawn(async move {
            let mut dials: HashMap<ConnectionId, oneshot::Sender<PeerId>> = HashMap::new();
            loop {
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(Command::Dial(addr, reply)) => {
                            let opts = DialOpts::unknown_peer_id().address(addr).build();
                            let id = opts.connection_id();
                            swarm.dial(opts).expect("dial");
                            dials.insert(id, reply);
                        }
                        Some(Command::Disconnect(peer)) => {
                            let _ = swarm.disconnect_peer_id(peer);
                        }
                        None => break,
                    },
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                            counts_tx.send_modify(|c| c.entry(peer_id).or_default().0 += 1);
                            if let Some(reply) = dials.remove(&connection_id) {
                                let _ = reply.send(peer_id);
                            }
                        }
                        SwarmEvent::ConnectionClosed { peer_id, .. } => {
                            counts_tx.send_modify(|c| c.entry(peer_id).or_default().1 += 1);
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            panic!("libp2p dial failed: {error}");
                        }
                        _ => {}
                    },
                }
            }
        });
        Swarm {
            peer_id,
            commands,
            counts,
            control,
            listen: listen_addr,
        }
    }

    /// Dials and returns the peer once the connection is established.
    async fn dial(&self, addr: Multiaddr) -> PeerId {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr, tx))
            .expect("swarm task");
        rx.await.expect("dial answered")
    }

    async fn wait(&self, peer: PeerId, n: u64, closed: bool) {
        let mut counts = self.counts.clone();
        counts
            .wait_for(|c| {
                let (e, x) = c.get(&peer).copied().unwrap_or_default();
                (if closed { x } else { e }) >= n
            })
            .await
            .expect("the swarm task ended");
    }

    fn addr(&self) -> Multiaddr {
        self.listen.clone().expect("a listening swarm")
    }
}

/// Opens a substream from `dialer` to `peer` and returns both ends once the listener has
/// accepted it (one byte crosses it: the protocol negotiation may wait for data).
async fn substream(
    dialer: &Swarm,
    peer: PeerId,
    incoming: &mut libp2p_stream::IncomingStreams,
) -> (libp2p::Stream, libp2p::Stream) {
    let mut out = dialer
        .control
        .clone()
        .open_stream(peer, PROTOCOL)
        .await
        .expect("open stream");
    out.write_all(&[1]).await.expect("write");
    out.flush().await.expect("flush");
    let (_, mut input) = incoming.next().await.expect("accepted stream");
    let mut b = [0u8; 1];
    input.read_exact(&mut b).await.expect("read");
    (out, input)
}

async fn cycle(listener: &Swarm, dialer: &Swarm, k: u64) -> f64 {
    let start = Instant::now();
    let peer = dialer.dial(listener.addr()).await;
    let established = start.elapsed().as_secs_f64();
    listener.wait(dialer.peer_id, k + 1, false).await;
    dialer
        .commands
        .send(Command::Disconnect(peer))
        .expect("swarm task");
    dialer.wait(peer, k + 1, true).await;
    listener.wait(dialer.peer_id, k + 1, true).await;
    established
}

/// One connection and one substream, `bytes` in 64 KiB writes one way.
pub async fn throughput(bytes: u64) -> Transfer {
    let listener = Swarm::start(true).await;
    let dialer = Swarm::start(false).await;
    let mut incoming = listener.control.clone().accept(PROTOCOL).expect("accept");
    let peer = dialer.dial(listener.addr()).await;
    let (mut out, mut input) = substream(&dialer, peer, &mut incoming).await;
    let count = bytes.div_ceil(MESSAGE_BYTES as u64);
    let (start, cpu) = (Instant::now(), crate::measure::cpu_time());
    let sender = tokio::spawn(async move {
        let block = vec![0x5au8; MESSAGE_BYTES];
        for _ in 0..count {
            out.write_all(&block).await.expect("write");
        }
        out.flush().await.expect("flush");
        out
    });
    let mut buf = vec![0u8; MESSAGE_BYTES];
    for _ in 0..count {
        input.read_exact(&mut buf).await.expect("read");
    }
    let t = Transfer::since(start, cpu, count * MESSAGE_BYTES as u64);
    drop(sender.await.expect("sender"));
    t
}

/// `n` cycles from one dialer.
pub async fn sequential(n: usize) -> Cycles {
    let listener = Swarm::start(true).await;
    let dialer = Swarm::start(false).await;
    let start = Instant::now();
    let mut established = Vec::with_capacity(n);
    for k in 0..n as u64 {
        established.push(cycle(&listener, &dialer, k).await);
    }
    Cycles::since(start, established)
}

/// `dialers` dialers at once, `each` cycles each.
pub async fn concurrent(dialers: usize, each: usize) -> Concurrent {
    let listener = Arc::new(Swarm::start(true).await);
    let mut swarms = Vec::new();
    for _ in 0..dialers {
        swarms.push(Arc::new(Swarm::start(false).await));
    }
    let start = Instant::now();
    let tasks: Vec<_> = swarms
        .iter()
        .map(|d| {
            let (l, d) = (listener.clone(), d.clone());
            tokio::spawn(async move {
                for k in 0..each as u64 {
                    cycle(&l, &d, k).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("dialer");
    }
    Concurrent::since(start, dialers * each)
}

/// Resident bytes before and after the idle connections of a full mesh of `nodes` swarms
/// (`nodes·(nodes−1)/2` connections, both ends in this process; the swarms are started
/// before the first measure). With `substream`, each connection also holds one open
/// substream, as a connection that carries messages does.
pub async fn idle_memory(nodes: usize, substream: bool) -> (u64, u64) {
    let mut mesh = Vec::with_capacity(nodes);
    let mut incoming = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let s = Swarm::start(true).await;
        incoming.push(s.control.clone().accept(PROTOCOL).expect("accept"));
        mesh.push(s);
    }
    let mut streams = Vec::new();
    let before = crate::settled_rss();
    for i in 0..nodes {
        for j in i + 1..nodes {
            let (a, b) = (&mesh[i], &mesh[j]);
            let peer = a.dial(b.addr()).await;
            b.wait(a.peer_id, 1, false).await;
            if substream {
                let (out, input) = self::substream(a, peer, &mut incoming[j]).await;
                streams.push(out);
                streams.push(input);
            }
        }
    }
    let after = crate::settled_rss();
    drop(streams);
    (before, after)
}
