//! `--config FILE` (issue 10 §1): octez's node configuration file, JSON or TOML by
//! extension, with the `p2p` keys of BEHAVIOUR.md §9 and our own `peerpool` section.
//!
//! An octez node's whole `config.json` loads unchanged: its top-level `data-dir` is
//! honoured, the sections peerpool has no use for (`rpc`, `shell`, `log`, …) and keys it
//! does not know are returned in [`FileConfig::ignored`] for the log. Every value is checked
//! here, once; a bad one is an error naming the key, the value and what is allowed. Keys
//! are read in octez's kebab-case or with underscores (`greylisting_config`).
//!
//! octez quirks fixed: a `limits` object without `connection-timeout` means 10 s (octez
//! falls back to the authentication timeout, 5 s); known-table sizes left out keep their
//! bounded defaults.

use peerpool::NodeConfig;
use peerpool_proto::identity::{PeerId, PowTarget};
use peerpool_proto::point::parse_point_with_peer_id;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

mod reader;
use reader::{kind, socket_addr, Obj};

/// Why a configuration file cannot be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not JSON / TOML, or the extension is neither.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value has the wrong type.
    #[error("{key}: expected {expected}, found {found}")]
    Type {
        /// The key, dotted.
        key: String,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// A value is out of its range.
    #[error("{key} = {value}: {allowed}")]
    Range {
        /// The key, dotted.
        key: String,
        /// The value found.
        value: String,
        /// The allowed range.
        allowed: String,
    },
}

/// A bootstrap peer as written: `host:port` (or `addr:port`), with an optional `#peer_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// `host:port` as written.
    pub host_port: String,
    /// The expected peer id, if given.
    pub peer_id: Option<PeerId>,
}

/// What a configuration file says (only what it sets).
#[derive(Debug, Default)]
pub struct FileConfig {
    /// Top-level `data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `p2p.listen-addr`.
    pub listen_addr: Option<SocketAddr>,
    /// `p2p.discovery-addr`.
    pub discovery_addr: Option<SocketAddr>,
    /// `p2p.advertised-net-port`.
    pub advertised_port: Option<u16>,
    /// `p2p.bootstrap-peers` (resolved at start).
    pub bootstrap_peers: Option<Vec<BootstrapPeer>>,
    /// `p2p.expected-proof-of-work`.
    pub expected_pow: Option<f64>,
    /// Everything else, applied by [`FileConfig::apply`].
    settings: Vec<Setting>,
    /// Sections and keys read but not used, dotted (for one log line).
    pub ignored: Vec<String>,
}

/// One setting to apply to a [`NodeConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setting {
    PrivateMode(bool),
    DisableMempool(bool),
    DisablePeerDiscovery(bool),
    ConnectionTimeout(Duration),
    AuthenticationTimeout(Duration),
    MinConnections(usize),
    ExpectedConnections(usize),
    MaxConnections(usize),
    Backlog(u32),
    MaxIncomingHandshakes(usize),
    MaxDownloadSpeed(Option<u64>),
    MaxUploadSpeed(Option<u64>),
    ReadBufferSize(usize),
    ReadQueueSize(usize),
    WriteQueueSize(usize),
    IncomingMessageQueueSize(usize),
    OutgoingMessageQueueSize(usize),
    IncomingAppMessageQueueSize(usize),
    MaxKnownPoints(usize, usize),
    MaxKnownPeerIds(usize, usize),
    PeerGreylistSize(usize),
    IpGreylistSizeKib(usize),
    IpGreylistCleanupDelay(Duration),
    MaintenanceIdleTime(Option<Duration>),
    SwapLinger(Option<Duration>),
    BinaryChunksSize(usize),
    ReconnectionFactor(f64),
    ReconnectionInitialDelay(Duration),
    ReconnectionDisconnectionDelay(Duration),
    ReconnectionIncreaseCap(Duration),
    LowWater(usize),
    HighWater(usize),
    GracePeriod(Duration),
    ProtectionBudget(usize),
    MaxIncomingPerNetgroup(usize),
    PeersFileInterval(Option<Duration>),
}

const DAY: f64 = 86_400.0;
const YEAR: f64 = 365.0 * DAY;

/// Reads `path` (`.json` or `.toml`).
///
/// Errors: [`ConfigFileError`] naming the file, or the key, its value and what is allowed.
pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    let syntax = |message: String| ConfigFileError::Syntax {
        path: path.to_owned(),
        message,
    };
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        Some("toml") => {
            let t: toml::Table = toml::from_str(&text).map_err(|e| syntax(e.to_string()))?;
            serde_json::to_value(t).map_err(|e| syntax(e.to_string()))?
        }
        _ => return Err(syntax("a configuration file ends in .json or .toml".into())),
    };
    parse(&value).map_err(|e| match e {
        ConfigFileError::Syntax { message, .. } => syntax(message),
        other => other,
    })
}

/// Reads a configuration already parsed into JSON.
///
/// Errors: as [`load`].
pub fn parse(value: &Value) -> Result<FileConfig, ConfigFileError> {
    let Value::Object(top) = value else {
        return Err(ConfigFileError::Type {
            key: "(top level)".into(),
            expected: "an object",
            found: kind(value),
        });
    };
    let mut root = Obj::new("", top);
    let mut out = FileConfig {
        data_dir: root.string("data-dir")?.map(PathBuf::from),
        ..FileConfig::default()
    };
    let mut s = Vec::new();
    if let Some(mut p2p) = root.object("p2p")? {
        if let Some(a) = p2p.string("listen-addr")? {
            out.listen_addr = Some(socket_addr(&p2p, "listen-addr", a, 9732)?);
        }
        out.advertised_port = p2p
            .uint("advertised-net-port", 1, 65_535)?
            .map(|p| u16::try_from(p).unwrap_or(u16::MAX));
        if let Some(a) = p2p.string("discovery-addr")? {
            let port = peerpool_proto::discovery::DEFAULT_DISCOVERY_PORT;
            out.discovery_addr = Some(socket_addr(&p2p, "discovery-addr", a, port)?);
        }
        if let Some(v) = p2p.get("bootstrap-peers") {
            let Value::Array(list) = v else {
                return Err(p2p.type_error(
                    "bootstrap-peers",
                    "a list of \"host:port[#peer_id]\"",
                    v,
                ));
            };
            let mut peers = Vec::new();
            for item in list {
                let Value::String(text) = item else {
                    return Err(p2p.type_error("bootstrap-peers", "a list of strings", item));
                };
                let (host_port, peer_id) = match text.split_once('#') {
                    Some((h, id)) => {
                        let id = id.parse::<PeerId>().map_err(|e| {
                            p2p.range(
                                "bootstrap-peers",
                                format!("{text:?}"),
                                format!("host:port#peer_id: {e}"),
                            )
                        })?;
                        (h.to_owned(), Some(id))
                    }
                    None => (text.clone(), None),
                };
                peers.push(BootstrapPeer { host_port, peer_id });
            }
            out.bootstrap_peers = Some(peers);
        }
        out.expected_pow = p2p.float("expected-proof-of-work", 0.0, 256.0)?;
        if let Some(b) = p2p.bool("private-mode")? {
            s.push(Setting::PrivateMode(b));
        }
        if let Some(b) = p2p.bool("disable-mempool")? {
            s.push(Setting::DisableMempool(b));
        }
        if let Some(b) = p2p.bool("disable-peer-discovery")? {
            s.push(Setting::DisablePeerDiscovery(b));
        }
        if let Some(mut g) = p2p.object("greylisting-config")? {
            if let Some(f) = g.float("factor", 1.0, 1000.0)? {
                s.push(Setting::ReconnectionFactor(f));
            }
            if let Some(d) = g.seconds("initial-delay", false, YEAR)? {
                s.push(Setting::ReconnectionInitialDelay(d));
            }
            if let Some(d) = g.seconds("disconnection-delay", true, YEAR)? {
                s.push(Setting::ReconnectionDisconnectionDelay(d));
            }
            if let Some(d) = g.seconds("increase-cap", false, YEAR)? {
                s.push(Setting::ReconnectionIncreaseCap(d));
            }
            out.ignored.extend(g.unused());
        }
        if let Some(mut l) = p2p.object("limits")? {
            read_limits(&mut l, &mut s)?;
            out.ignored.extend(l.unused());
        }
        out.ignored.extend(p2p.unused());
    }
    if let Some(mut ours) = root.object("peerpool")? {
        if let Some(mut cm) = ours.object("connection-manager")? {
            if let Some(x) = cm.usize("low-water", 1, 1 << 20)? {
                s.push(Setting::LowWater(x));
            }
            if let Some(x) = cm.usize("high-water", 1, 1 << 20)? {
                s.push(Setting::HighWater(x));
            }
            if let Some(d) = cm.seconds("grace-period", true, DAY)? {
                s.push(Setting::GracePeriod(d));
            }
            if let Some(x) = cm.usize("protection-budget", 0, 1 << 20)? {
                s.push(Setting::ProtectionBudget(x));
            }
            if let Some(x) = cm.usize("max-incoming-per-netgroup", 1, 1 << 20)? {
                s.push(Setting::MaxIncomingPerNetgroup(x));
            }
            out.ignored.extend(cm.unused());
        }
        if let Some(mut pf) = ours.object("peers-file")? {
            if let Some(x) = pf.nullable_seconds("save-interval", DAY)? {
                s.push(Setting::PeersFileInterval(x));
            }
            out.ignored.extend(pf.unused());
        }
        out.ignored.extend(ours.unused());
    }
    out.ignored.extend(root.unused());
    out.settings = s;
    Ok(out)
}

fn read_limits(l: &mut Obj<'_>, s: &mut Vec<Setting>) -> Result<(), ConfigFileError> {
    // octez: a missing connection-timeout falls back to the authentication timeout; here
    // it stays 10 s.
    if let Some(d) = l.seconds("connection-timeout", false, DAY)? {
        s.push(Setting::ConnectionTimeout(d));
    }
    if let Some(d) = l.seconds("authentication-timeout", false, DAY)? {
        s.push(Setting::AuthenticationTimeout(d));
    }
    if let Some(x) = l.usize("min-connections", 0, 65_535)? {
        s.push(Setting::MinConnections(x));
    }
    if let Some(x) = l.usize("expected-connections", 0, 65_535)? {
        s.push(Setting::ExpectedConnections(x));
    }
    if let Some(x) = l.usize("max-connections", 1, 65_535)? {
        s.push(Setting::MaxConnections(x));
    }
    if let Some(x) = l.uint("backlog", 1, 65_535)? {
        s.push(Setting::Backlog(u32::try_from(x).unwrap_or(u32::MAX)));
    }
    if let Some(x) = l.usize("max-incoming-connections", 1, 65_535)? {
        s.push(Setting::MaxIncomingHandshakes(x));
    }
    // KiB/s; null means no cap.
    for (key, make) in [
        (
            "max-download-speed",
            Setting::MaxDownloadSpeed as fn(Option<u64>) -> Setting,
        ),
        ("max-upload-speed", Setting::MaxUploadSpeed),
    ] {
        match l.get(key) {
            None => {}
            Some(Value::Null) => s.push(make(None)),
            Some(_) => {
                let kib = l.uint(key, 1, 1 << 40)?;
                s.push(make(kib.map(|k| k.saturating_mul(1024))));
            }
        }
    }
    if let Some(x) = l.usize("read-buffer-size", 1024, 1 << 26)? {
        s.push(Setting::ReadBufferSize(x));
    }
    if let Some(x) = l.usize("read-queue-size", 1024, 1 << 32)? {
        s.push(Setting::ReadQueueSize(x));
    }
    if let Some(x) = l.usize("write-queue-size", 1024, 1 << 32)? {
        s.push(Setting::WriteQueueSize(x));
    }
    if let Some(x) = l.usize("incoming-message-queue-size", 1024, 1 << 32)? {
        s.push(Setting::IncomingMessageQueueSize(x));
    }
    if let Some(x) = l.usize("outgoing-message-queue-size", 1024, 1 << 32)? {
        s.push(Setting::OutgoingMessageQueueSize(x));
    }
    if let Some(x) = l.usize("incoming-app-message-queue-size", 1, 1 << 20)? {
        s.push(Setting::IncomingAppMessageQueueSize(x));
    }
    if let Some((a, b)) = l.pair("max-known-points")? {
        s.push(Setting::MaxKnownPoints(a, b));
    }
    if let Some((a, b)) = l.pair("max-known-peer-ids")? {
        s.push(Setting::MaxKnownPeerIds(a, b));
    }
    if let Some(x) = l.usize("peer-greylist-size", 1, 1 << 24)? {
        s.push(Setting::PeerGreylistSize(x));
    }
    if let Some(x) = l.usize("ip-greylist-size-in-kilobytes", 1, 1 << 20)? {
        s.push(Setting::IpGreylistSizeKib(x));
    }
    if let Some(d) = l.seconds("ip-greylist-cleanup-delay", false, YEAR)? {
        s.push(Setting::IpGreylistCleanupDelay(d));
    }
    // Read for compatibility; octez uses it only as the default of the above.
    let _ = l.seconds("greylist-timeout", false, YEAR)?;
    if let Some(x) = l.nullable_seconds("maintenance-idle-time", DAY)? {
        s.push(Setting::MaintenanceIdleTime(x));
    }
    if let Some(x) = l.nullable_seconds("swap-linger", DAY)? {
        s.push(Setting::SwapLinger(x));
    }
    if let Some(x) = l.usize("binary-chunks-size", 19, 65_535)? {
        s.push(Setting::BinaryChunksSize(x));
    }
    Ok(())
}

impl FileConfig {
    /// Applies the file's settings to `c` (the node's other settings, and the CLI's
    /// overrides, are applied around it by the caller).
    pub fn apply(&self, c: &mut NodeConfig) {
        if let Some(pow) = self.expected_pow.and_then(|p| PowTarget::new(p).ok()) {
            c.pow_target = pow;
        }
        if self.listen_addr.is_some() {
            c.listen_addr = self.listen_addr;
        }
        if self.advertised_port.is_some() {
            c.advertised_port = self.advertised_port;
        }
        for s in &self.settings {
            match *s {
                Setting::PrivateMode(b) => c.pool.private_mode = b,
                Setting::DisableMempool(b) => c.metadata.disable_mempool = b,
                Setting::DisablePeerDiscovery(b) => c.policy.peer_discovery = !b,
                Setting::ConnectionTimeout(d) => c.connection_timeout = d,
                Setting::AuthenticationTimeout(d) => c.authentication_timeout = d,
                Setting::MinConnections(x) => c.pool.min_connections = x,
                Setting::ExpectedConnections(x) => {
                    c.policy.maintenance.expected_connections = Some(x);
                }
                Setting::MaxConnections(x) => c.pool.max_connections = x,
                Setting::Backlog(x) => c.backlog = x,
                Setting::MaxIncomingHandshakes(x) => c.policy.max_incoming_handshakes = x,
                Setting::MaxDownloadSpeed(x) => c.io_scheduler.max_download_speed = x,
                Setting::MaxUploadSpeed(x) => c.io_scheduler.max_upload_speed = x,
                Setting::ReadBufferSize(x) => c.io_scheduler.read_buffer_size = x,
                Setting::ReadQueueSize(x) => c.io_scheduler.read_queue_size = x,
                Setting::WriteQueueSize(x) => c.io_scheduler.write_queue_size = x,
                Setting::IncomingMessageQueueSize(x) => c.queues.incoming_app_bytes = x,
                Setting::OutgoingMessageQueueSize(x) => c.queues.outgoing_app_bytes = x,
                Setting::IncomingAppMessageQueueSize(x) => c.queues.incoming_app_messages = x,
                Setting::MaxKnownPoints(a, b) => c.pool.max_known_points = (a, b),
                Setting::MaxKnownPeerIds(a, b) => c.pool.max_known_peer_ids = (a, b),
                Setting::PeerGreylistSize(x) => c.pool.acl.peer_greylist_size = x,
                Setting::IpGreylistSizeKib(x) => c.pool.acl.ip_greylist_size_in_kilobytes = x,
                Setting::IpGreylistCleanupDelay(d) => c.pool.acl.ip_greylist_cleanup_delay = d,
                Setting::MaintenanceIdleTime(None) => c.policy.maintenance.enabled = false,
                Setting::MaintenanceIdleTime(Some(d)) => c.policy.maintenance.idle_time = d,
                Setting::SwapLinger(x) => c.policy.swap_linger = x,
                // octez's binary_chunks_size is the whole chunk: 2-byte length and
                // 16-byte tag included.
                Setting::BinaryChunksSize(x) => c.chunk_payload_bytes = x.saturating_sub(18),
                Setting::ReconnectionFactor(f) => c.pool.reconnection.factor = f,
                Setting::ReconnectionInitialDelay(d) => c.pool.reconnection.initial_delay = d,
                Setting::ReconnectionDisconnectionDelay(d) => {
                    c.pool.reconnection.disconnection_delay = d;
                }
                Setting::ReconnectionIncreaseCap(d) => c.pool.reconnection.increase_cap = d,
                Setting::LowWater(x) => c.policy.conn_manager.low_water = Some(x),
                Setting::HighWater(x) => c.policy.conn_manager.high_water = Some(x),
                Setting::GracePeriod(d) => c.policy.conn_manager.grace_period = d,
                Setting::ProtectionBudget(x) => c.policy.conn_manager.protection_budget = Some(x),
                Setting::MaxIncomingPerNetgroup(x) => {
                    c.policy.conn_manager.max_incoming_per_netgroup = Some(x);
                }
                Setting::PeersFileInterval(x) => c.policy.peers_file_interval = x,
            }
        }
    }
}

/// Resolves the bootstrap peers (DNS for host names); one that does not resolve is
/// returned in the second list, never an error.
pub async fn resolve(
    peers: &[BootstrapPeer],
) -> (
    Vec<(peerpool_proto::point::Point, Option<PeerId>)>,
    Vec<(String, String)>,
) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for p in peers {
        if let Ok((point, _)) = parse_point_with_peer_id(&p.host_port) {
            ok.push((point, p.peer_id));
            continue;
        }
        // A host name; octez's default port when none is given.
        let with_port = if p.host_port.contains(':') {
            p.host_port.clone()
        } else {
            format!("{}:9732", p.host_port)
        };
        match tokio::net::lookup_host(with_port).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => ok.push((peerpool_proto::point::Point::from(a), p.peer_id)),
                None => failed.push((p.host_port.clone(), "no address".to_owned())),
            },
            Err(e) => failed.push((p.host_port.clone(), e.to_string())),
        }
    }
    (ok, failed)
}

#[cfg(test)]
mod tests;
