//! `peerpool node`: a node on a Tezos-family P2P network. Flag names follow octez-node.

use crate::identity_cmd;
use crate::limits::{self, NofileLimit};
use crate::metadata::OctezPeerMetadata;
use clap::Args;
use peerpool::persist::StoreError;
use peerpool::{EventError, Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::{parse_point_with_peer_id, Point};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// `peerpool node` options.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// octez's node configuration file (`.json` or `.toml`): its `p2p` section, its
    /// `data-dir`, and our `peerpool` section; the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default `[::]:9732`).
    #[arg(long)]
    pub net_addr: Option<SocketAddr>,
    /// Port announced to peers when it differs from the listening one (behind a port
    /// mapping).
    #[arg(long)]
    pub advertised_net_port: Option<u16>,
    /// A peer to connect to, `addr:port` or `addr:port#peer_id` (repeatable).
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(Point, Option<PeerId>)>,
    /// Chain name announced and required from peers.
    #[arg(long, default_value = "TEZOS_MAINNET")]
    pub chain_name: String,
    /// Proof-of-work difficulty required from peers and for a new identity (default 26).
    #[arg(long)]
    pub expected_pow: Option<f64>,
    /// Ignore the configuration file's `bootstrap-peers`.
    #[arg(long)]
    pub no_bootstrap_peers: bool,
    /// Data directory (identity.json is created there on first start; default: the
    /// configuration file's `data-dir`, else `~/.peerpool-node`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Private mode: only trusted points and peers (`--peer`), in both directions; our
    /// address is not advertised.
    #[arg(long)]
    pub private_mode: bool,
    /// Global download cap, KiB/s (as octez's config); none by default.
    #[arg(long)]
    pub max_download_speed: Option<u64>,
    /// Global upload cap, KiB/s (as octez's config); none by default.
    #[arg(long)]
    pub max_upload_speed: Option<u64>,
    /// Connections to keep, as octez: min N/2, expected N, max 3N/2 (default: octez's
    /// 10/50/100).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: Option<u16>,
    /// Do not run the maintenance (the node dials only when told to).
    #[arg(long)]
    pub disable_p2p_maintenance: bool,
    /// Neither send nor answer swap requests.
    #[arg(long)]
    pub disable_p2p_swap: bool,
    /// Local discovery: announce ourselves to, and listen for announcements on, this
    /// address (`ADDR` or `ADDR:PORT`, default port 10732; an IPv4 broadcast address on a
    /// local network). Off when not given.
    #[arg(long, value_parser = parse_discovery_addr)]
    pub discovery_addr: Option<SocketAddr>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (off unless set).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the admin RPC (octez's `/network` routes) on this address, e.g.
    /// `127.0.0.1:8732` (off unless set).
    #[arg(long)]
    pub rpc_addr: Option<SocketAddr>,
    /// Test traffic: broadcast a message of 64 to 1024 random bytes this often, e.g.
    /// `1s` (for `peerpool soak`; off unless set).
    #[arg(long, hide = true, value_parser = crate::sandbox::parse_duration)]
    pub gossip_every: Option<Duration>,
}

fn parse_discovery_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, peerpool_proto::discovery::DEFAULT_DISCOVERY_PORT))
        .map_err(|_| format!("invalid discovery address {s:?} (ADDR or ADDR:PORT)"))
}

fn parse_peer(s: &str) -> Result<(Point, Option<PeerId>), String> {
    parse_point_with_peer_id(s).map_err(|e| e.to_string())
}

/// The node the binary runs: raw application messages, octez peer metadata.
pub type BinaryNode = Node<RawMessage, OctezPeerMetadata>;

/// Starts a task that reads every application message (counting them), so application
/// queues never stay full in a node that has no application on top. It ends when the
/// node stops.
pub fn spawn_app_drain(node: BinaryNode) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while node.recv_any().await.is_some() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    received
}

/// Broadcasts a message of 64 to 1024 random bytes every `every` until the node stops.
fn spawn_gossip(node: BinaryNode, every: Duration) {
    use rand::Rng;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !node.is_stopped() {
            tick.tick().await;
            let len = rand::rng().random_range(64..=1024);
            let body: Vec<u8> = (0..len).map(|_| rand::rng().random()).collect();
            node.broadcast(&RawMessage { tag: 0x7f01, body }, |_| false);
        }
    });
}

/// The least time between two saves of the peers file made for new connections.
pub const SAVE_ON_CONNECT_GAP: Duration = Duration::from_secs(1);

/// Saves the peers file soon after each new connection, at most once per `gap` (the
/// connections established during a gap are saved together after it), so that a node
/// killed without a shutdown (SIGKILL, a crash, a power loss) finds the peers it was
/// connected to when it restarts; the periodic save (`peers-file.save-interval`) keeps the
/// rest of what it learns. Ends when the node stops.
pub fn spawn_save_on_connect(node: BinaryNode, gap: Duration) {
    let mut events = node.events();
    tokio::spawn(async move {
        let mut pending = false;
        loop {
            if !pending {
                // A lag may have hidden a new connection: save then too.
                match events.recv().await {
                    Ok(NodeEvent::ConnectionEstablished { .. }) | Err(EventError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
            match node.save_peers().await {
                Ok(()) => debug!("peers file saved after a new connection"),
                Err(StoreError::Stopped) => return,
                // The saver is already writing; the next new connection saves again.
                Err(StoreError::Busy) => {}
                Err(e) => warn!(error = %e, "peers file not saved after a new connection"),
            }
            tokio::time::sleep(gap).await;
            pending = false;
            while let Some(event) = events.try_recv() {
                match event {
                    Ok(NodeEvent::ConnectionEstablished { .. }) | Err(EventError::Lagged(_)) => {
                        pending = true
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    });
}

/// Listens for Ctrl-C and SIGTERM (what service managers and containers send) from the
/// moment it is called; the future completes when either arrives, and both stop the node
/// the same way. Call it before announcing the node: a signal sent on the announcement
/// must find the handlers installed, not the default action (the process ends without a
/// shutdown).
pub fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            match handlers {
                (Ok(mut interrupt), Ok(mut term)) => {
                    tokio::select! {
                        biased;
                        _ = interrupt.recv() => {}
                        _ = term.recv() => info!("SIGTERM received"),
                    }
                }
                (Ok(mut interrupt), Err(e)) => {
                    error!(error = %e, "cannot wait for SIGTERM; Ctrl-C only");
                    interrupt.recv().await;
                }
                (Err(e), _) => error!(error = %e, "cannot wait for Ctrl-C"),
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot wait for Ctrl-C");
        }
    }
}

/// Runs the node until Ctrl-C or SIGTERM, then shuts it down (saving the peers file).
/// `nofile` is the open-file limit the binary raised at start
/// ([`limits::raise_nofile_limit`]): `max_connections` is kept within what it allows.
pub async fn run(args: NodeArgs, nofile: std::io::Result<NofileLimit>) -> ExitCode {
    let file = match args
        .config
        .as_deref()
        .map(crate::config_file::load)
        .transpose()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pow = args
        .expected_pow
        .or(file.as_ref().and_then(|f| f.expected_pow))
        .unwrap_or(26.0);
    let target = match PowTarget::new(pow) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.as_ref().and_then(|f| f.data_dir.clone()))
        .unwrap_or_else(crate::default_data_dir);
    let identity = match identity_cmd::load_or_create(&data_dir, &target) {
        Ok(id) => Arc::new(id),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Defaults, then the file, then the flags given.
    let mut config = NodeConfig::new(identity.clone(), &args.chain_name);
    config.listen_addr = Some(SocketAddr::from(([0u16; 8], 9732)));
    config.peers_file = Some(data_dir.join("peers.json"));
    if let Some(f) = &file {
        f.apply(&mut config);
        if !f.ignored.is_empty() {
            info!(ignored = ?f.ignored, "configuration keys peerpool does not use");
        }
    }
    config.pow_target = target;
    apply_flags(&args, &mut config);
    let max_connections = match &nofile {
        Ok(limit) => {
            let cap = limits::cap_connections(&mut config, limit.soft);
            limits::log_start(limit, &cap);
            cap.effective
        }
        Err(e) => {
            warn!(error = %e, "open-file limit unknown: max_connections as configured");
            config.pool.max_connections
        }
    };
    let discovery = args
        .discovery_addr
        .or(file.as_ref().and_then(|f| f.discovery_addr));
    config.discovery =
        discovery.map(|a| peerpool::discovery::DiscoveryConfig::new(a.ip(), a.port()));
    let local_metadata = config.metadata;
    let config = match config.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match BinaryNode::start(config).await {
        Ok(n) => n,
        Err(e) => {
            error!(error = %e, "cannot start the node");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Listening before the announcement: whoever waits for it may signal at once.
    let stop = stop_signal();
    info!(peer_id = %identity.peer_id, listen = ?node.local_addr(), chain = %args.chain_name, "node started");
    spawn_app_drain(node.clone());
    spawn_save_on_connect(node.clone(), SAVE_ON_CONNECT_GAP);
    if let Some(every) = args.gossip_every {
        spawn_gossip(node.clone(), every);
    }
    limits::spawn_refusal_log(&node, max_connections, Duration::from_secs(60));
    if let Some(addr) = args.rpc_addr {
        match crate::rpc::serve(addr, node.clone(), local_metadata).await {
            Ok(bound) => info!(addr = %bound, "RPC at http://{bound}/network"),
            Err(e) => {
                error!(error = %e, %addr, "cannot serve the RPC");
                eprintln!("error: cannot serve the RPC on {addr}: {e}");
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(addr) = args.metrics_addr {
        match crate::metrics::serve(addr, node.clone()).await {
            Ok(bound) => info!(addr = %bound, "metrics at http://{bound}/metrics"),
            Err(e) => {
                error!(error = %e, %addr, "cannot serve metrics");
                eprintln!("error: cannot serve metrics on {addr}: {e}");
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
    }
    for (point, expected) in &args.peers {
        node.add_peer(*point, *expected).await;
    }
    let bootstrap = file.as_ref().and_then(|f| f.bootstrap_peers.clone());
    if let (Some(peers), false) = (bootstrap, args.no_bootstrap_peers) {
        let (resolved, failed) = crate::config_file::resolve(&peers).await;
        for (host, why) in failed {
            tracing::warn!(%host, reason = %why, "bootstrap peer skipped: it does not resolve");
        }
        for (point, expected) in resolved {
            node.add_peer(point, expected).await;
        }
    }
    node.activate().await;
    stop.await;
    info!("shutting down");
    node.shutdown().await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// The flags that override the configuration file, applied to `config`.
pub fn apply_flags(args: &NodeArgs, config: &mut NodeConfig) {
    if let Some(a) = args.net_addr {
        config.listen_addr = Some(a);
    }
    if let Some(p) = args.advertised_net_port {
        config.advertised_port = Some(p);
    }
    if args.private_mode {
        config.pool.private_mode = true;
    }
    if let Some(k) = args.max_download_speed {
        config.io_scheduler.max_download_speed = Some(k.saturating_mul(1024));
    }
    if let Some(k) = args.max_upload_speed {
        config.io_scheduler.max_upload_speed = Some(k.saturating_mul(1024));
    }
    if let Some(n) = args.connections {
        config.set_connections(usize::from(n));
    }
    if args.disable_p2p_maintenance {
        config.policy.maintenance.enabled = false;
    }
    if args.disable_p2p_swap {
        config.policy.swap_linger = None;
    }
}
