//! [`Cluster`]: many real nodes on the in-memory network in one paused, single-threaded
//! tokio runtime. Time is virtual and jumps to the next timer when every task waits, so a
//! minute of a few hundred nodes costs well under a second; with the nodes seeded and the
//! runtime single-threaded, a scenario replays the same way each time. Faster than turmoil
//! for large counts (no per-step scan of every link), at the price of a simpler network
//! (no latency, no loss): use it for protocol scenarios, turmoil for network faults.
//!
//! Build one inside a `#[tokio::test(start_paused = true)]` (current-thread) test, or with
//! [`Cluster::runtime`].

use crate::scenario::{address, identity, PORT};
use peerpool::clock::{FixedClock, WallClock};
use peerpool::persist::MemoryStore;
use peerpool::transport::MemoryNetwork;
use peerpool::{Node, NodeConfig, StartError};
use peerpool_proto::identity::{PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The wall clock of a cluster: a fixed date plus tokio's (virtual) elapsed time, so a
/// node started later reads a later date.
#[derive(Debug)]
struct VirtualWall {
    start: Duration,
    origin: tokio::time::Instant,
}

impl WallClock for VirtualWall {
    fn since_epoch(&self) -> Duration {
        self.start + self.origin.elapsed()
    }
}

/// One node of a cluster.
#[derive(Debug)]
pub struct Member {
    /// Its handle.
    pub node: Node<RawMessage>,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its peers file, kept across restarts.
    pub store: MemoryStore,
}

impl Member {
    /// Its listening point.
    pub fn point(&self) -> Point {
        Point::from(self.addr)
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }
}

/// Real nodes on an in-memory network (see the module doc).
#[derive(Debug)]
pub struct Cluster {
    seed: u64,
    net: MemoryNetwork,
    wall: Arc<VirtualWall>,
    members: Vec<Member>,
}

impl Cluster {
    /// An empty cluster; `seed` seeds every node's identity and RNG.
    pub fn new(seed: u64) -> Self {
        Cluster {
            seed,
            net: MemoryNetwork::new(),
            wall: Arc::new(VirtualWall {
                start: FixedClock(Duration::from_secs(crate::scenario::EPOCH_SECS)).since_epoch(),
                origin: tokio::time::Instant::now(),
            }),
            members: Vec::new(),
        }
    }

    /// A single-threaded runtime with a paused clock, to run a cluster from a plain test.
    ///
    /// Errors: the runtime could not be built.
    pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
    }

    /// The default configuration of node `i`: its address and seeded identity, no proof
    /// of work, chain `SIMNET`, a sandbox's short backoffs.
    pub fn config(&self, i: usize) -> NodeConfig {
        let mut c = NodeConfig::new(identity(self.seed, i), "SIMNET");
        c.listen_addr = Some(SocketAddr::new(address(i), PORT));
        // invariant: 0 is a valid difficulty.
        c.pow_target = PowTarget::new(0.0).unwrap_or_else(|_| unreachable!());
        c.seed = Some(self.seed.wrapping_add(i as u64 + 1));
        c.pool.reconnection.increase_cap = Duration::from_secs(10);
        c.pool.reconnection.disconnection_delay = Duration::from_secs(5);
        c.close_timeout = Duration::from_secs(1);
        c.event_capacity = 4096;
        c
    }

    /// Starts the next node with its default configuration changed by `adjust`, and
    /// activates it. Returns its index.
    ///
    /// Errors: the configuration is invalid or the node could not start.
    pub async fn spawn(
        &mut self,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Result<usize, Box<dyn std::error::Error>> {
        let i = self.members.len();
        let mut config = self.config(i);
        adjust(&mut config);
        let store = MemoryStore::new();
        let node = self.start(config, store.clone()).await?;
        let addr = node.local_addr().ok_or("a cluster node must listen")?;
        node.activate().await;
        self.members.push(Member { node, addr, store });
        Ok(i)
    }

    async fn start(
        &self,
        config: NodeConfig,
        store: MemoryStore,
    ) -> Result<Node<RawMessage>, Box<dyn std::error::Error>> {
        let node = Node::<RawMessage>::builder(config.validate()?)
            .transport(self.net.clone())
            .store(Arc::new(store))
            .clock(self.wall.clone())
            .start()
            .await
            .map_err(|e: StartError| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok(node)
    }

    /// Node `i`.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Every node.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Node `i`'s handle.
    pub fn node(&self, i: usize) -> &Node<RawMessage> {
        &self.members[i].node
    }

    /// Every node's connection count now.
    pub fn connections(&self) -> Vec<usize> {
        self.members
            .iter()
            .map(|m| m.node.connections().len())
            .collect()
    }

    /// Whether node `a` has a connection with node `b`.
    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.node(a).connection(&self.member(b).peer_id()).is_some()
    }

    /// Lets `d` of virtual time pass.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Lets virtual time pass, looking every `step`, until `done` holds or `limit` has
    /// passed; returns the virtual time it took, or `None` at the limit.
    pub async fn run_until(
        &self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            if done(self) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(step).await;
        }
    }

    /// Restarts node `i` on its data (peers file) after a clean shutdown, with its default
    /// configuration changed by `adjust`.
    ///
    /// Errors: as [`Cluster::spawn`].
    pub async fn restart(
        &mut self,
        i: usize,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.members[i].node.shutdown().await;
        let mut config = self.config(i);
        adjust(&mut config);
        let store = self.members[i].store.clone();
        let node = self.start(config, store).await?;
        node.activate().await;
        self.members[i].node = node;
        Ok(())
    }

    /// Crashes node `i`: its address leaves the network (its peers see their connections
    /// break, with no Disconnect), the node stops, and what it did not save is lost: on
    /// [`Cluster::recover`] it finds the peers file it last saved before the crash.
    pub async fn crash(&mut self, i: usize) {
        let saved = self.members[i].store.contents();
        self.net.unplug(self.members[i].addr.ip());
        self.members[i].node.shutdown().await;
        self.members[i].store = saved.map(MemoryStore::with_contents).unwrap_or_default();
    }

    /// Restarts node `i` after [`Cluster::crash`], on what it had saved, with its default
    /// configuration changed by `adjust`.
    ///
    /// Errors: as [`Cluster::spawn`].
    pub async fn recover(
        &mut self,
        i: usize,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.net.plug(self.members[i].addr.ip());
        let mut config = self.config(i);
        adjust(&mut config);
        let store = self.members[i].store.clone();
        let node = self.start(config, store).await?;
        node.activate().await;
        self.members[i].node = node;
        Ok(())
    }

    /// Splits nodes `a` from nodes `b` until [`Cluster::heal`]: their connections break
    /// and new ones across the split get no answer.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let ips = |side: &[usize]| -> Vec<std::net::IpAddr> {
            side.iter().map(|i| self.members[*i].addr.ip()).collect()
        };
        self.net.partition(&ips(a), &ips(b));
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// Shuts every node down.
    pub async fn shutdown(&self) {
        for m in &self.members {
            m.node.shutdown().await;
        }
    }
}
