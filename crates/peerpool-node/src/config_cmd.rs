//! `peerpool config init` writes a commented default configuration (TOML); `peerpool
//! config show` prints the effective one (defaults, then `--config`, then the flags), as
//! JSON that `--config` reads back.

use crate::config_file;
use crate::node_cmd::{apply_flags, NodeArgs};
use clap::Subcommand;
use peerpool::NodeConfig;
use peerpool_proto::identity::{Identity, PowTarget};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `peerpool config` commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented default configuration.
    Init {
        /// Where (refuses to overwrite).
        #[arg(long, default_value = "peerpool.toml")]
        output: PathBuf,
    },
    /// Print the effective configuration: defaults, then `--config`, then the flags.
    Show(Box<NodeArgs>),
}

/// The commented default configuration: every key with its unit and default.
pub const DEFAULT_TOML: &str = r#"# peerpool node configuration (octez's config.json keys; JSON works too).
# Every value below is the default. Units are in the comments.

# data-dir = "~/.peerpool-node"        # identity.json and peers.json live here

[p2p]
listen-addr = "[::]:9732"               # ADDR:PORT to listen on
# advertised-net-port = 9732            # port announced to peers; default: the listening one
# discovery-addr = "255.255.255.255"    # local discovery (ADDR[:PORT], port 10732); off
# bootstrap-peers = ["host:9732"]       # trusted points, "host:port[#peer_id]", resolved at start
expected-proof-of-work = 26.0           # difficulty required from peers, [0, 256]
private-mode = false                    # trusted points and peers only
disable-mempool = false                 # announced in our connection metadata
disable-peer-discovery = false          # ignore Bootstrap/Advertise, never send them

[p2p.greylisting-config]                # backoff of a point after a failed connection
factor = 1.2                            # delay multiplier per failure, [1, 1000]
initial-delay = 1                       # s
disconnection-delay = 60                # s, wait after a running connection ends
increase-cap = 172800                   # s, largest delay

[p2p.limits]
connection-timeout = 10                 # s, an outgoing TCP connect plus handshake
authentication-timeout = 5              # s, a whole incoming handshake
min-connections = 10
# expected-connections = 50            # default: 50, or halfway between min and max
max-connections = 100
backlog = 1024                          # pending accepts (octez: 20)
max-incoming-connections = 20           # incoming handshakes in flight
# max-download-speed = 1024             # KiB/s, global; no cap when absent or null
# max-upload-speed = 1024               # KiB/s, global
read-buffer-size = 16384                # bytes per socket read
read-queue-size = 8388608               # bytes read ahead, per connection
write-queue-size = 8388608              # bytes queued to write, per connection
incoming-message-queue-size = 16777216  # bytes of received messages waiting, per connection
outgoing-message-queue-size = 16777216  # bytes of messages waiting to be sent, per connection
incoming-app-message-queue-size = 10    # received messages waiting, per connection
max-known-points = [400, 300]           # [max, kept after a GC]
max-known-peer-ids = [400, 300]         # [max, kept after a GC]
peer-greylist-size = 1023               # peer ids
ip-greylist-size-in-kilobytes = 2048    # KiB
ip-greylist-cleanup-delay = 86400       # s
maintenance-idle-time = 120             # s between maintenance rounds; null: no maintenance
swap-linger = 30                        # s between swaps; null: no swaps
binary-chunks-size = 65535              # bytes per encrypted chunk, [19, 65535]

[peerpool.connection-manager]
# low-water = 68                        # trim down to this (default: maintenance max_target)
# high-water = 84                       # trim above this (default: maintenance max_threshold)
grace-period = 60                       # s a new connection is not trimmed
# protection-budget = 34                # most protected peers (default: low-water / 2)
# max-incoming-per-netgroup = 6         # per /16 or /32 (default: max(2, max-connections / 16))

[peerpool.peers-file]
save-interval = 300                     # s between saves of peers.json; null: only at exit
"#;

fn secs(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

/// The effective configuration as a configuration file.
pub fn effective_json(
    c: &NodeConfig,
    data_dir: Option<&PathBuf>,
    discovery: Option<std::net::SocketAddr>,
) -> Value {
    let r = &c.pool.reconnection;
    let io = &c.io_scheduler;
    let cm = &c.policy.conn_manager;
    let mut p2p = json!({
        "listen-addr": c.listen_addr.map(|a| a.to_string()),
        "expected-proof-of-work": c.pow_target.difficulty(),
        "private-mode": c.pool.private_mode,
        "disable-mempool": c.metadata.disable_mempool,
        "disable-peer-discovery": !c.policy.peer_discovery,
        "greylisting-config": {
            "factor": r.factor,
            "initial-delay": secs(r.initial_delay),
            "disconnection-delay": secs(r.disconnection_delay),
            "increase-cap": secs(r.increase_cap),
        },
        "limits": {
            "connection-timeout": secs(c.connection_timeout),
            "authentication-timeout": secs(c.authentication_timeout),
            "min-connections": c.pool.min_connections,
            "max-connections": c.pool.max_connections,
            "backlog": c.backlog,
            "max-incoming-connections": c.policy.max_incoming_handshakes,
            "max-download-speed": io.max_download_speed.map(|b| b / 1024),
            "max-upload-speed": io.max_upload_speed.map(|b| b / 1024),
            "read-buffer-size": io.read_buffer_size,
            "read-queue-size": io.read_queue_size,
            "write-queue-size": io.write_queue_size,
            "incoming-message-queue-size": c.queues.incoming_app_bytes,
            "outgoing-message-queue-size": c.queues.outgoing_app_bytes,
            "incoming-app-message-queue-size": c.queues.incoming_app_messages,
            "max-known-points": [c.pool.max_known_points.0, c.pool.max_known_points.1],
            "max-known-peer-ids": [c.pool.max_known_peer_ids.0, c.pool.max_known_peer_ids.1],
            "peer-greylist-size": c.pool.acl.peer_greylist_size,
            "ip-greylist-size-in-kilobytes": c.pool.acl.ip_greylist_size_in_kilobytes,
            "ip-greylist-cleanup-delay": secs(c.pool.acl.ip_greylist_cleanup_delay),
            "maintenance-idle-time": c.policy.maintenance.enabled.then(|| secs(c.policy.maintenance.idle_time)),
            "swap-linger": c.policy.swap_linger.map(secs),
            "binary-chunks-size": c.chunk_payload_bytes + 18,
        },
    });
    if let Some(d) = discovery {
        p2p["discovery-addr"] = json!(d.to_string());
    }
    if let Some(p) = c.advertised_port {
        p2p["advertised-net-port"] = json!(p);
    }
    if let Some(e) = c.policy.maintenance.expected_connections {
        p2p["limits"]["expected-connections"] = json!(e);
    }
    let mut manager = json!({ "grace-period": secs(cm.grace_period) });
    for (k, v) in [
        ("low-water", cm.low_water),
        ("high-water", cm.high_water),
        ("protection-budget", cm.protection_budget),
        ("max-incoming-per-netgroup", cm.max_incoming_per_netgroup),
    ] {
        if let Some(v) = v {
            manager[k] = json!(v);
        }
    }
    let mut out = json!({
        "p2p": p2p,
        "peerpool": {
            "connection-manager": manager,
            "peers-file": { "save-interval": c.policy.peers_file_interval.map(secs) },
        },
    });
    if let Some(d) = data_dir {
        out["data-dir"] = json!(d.display().to_string());
    }
    out
}

/// The effective [`NodeConfig`] for `args` (a throwaway identity: only the settings
/// matter), with the data directory and discovery address chosen.
///
/// Errors: the configuration file's.
pub fn effective(
    args: &NodeArgs,
) -> Result<(NodeConfig, PathBuf, Option<std::net::SocketAddr>), config_file::ConfigFileError> {
    let file = args.config.as_deref().map(config_file::load).transpose()?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let zero = PowTarget::new(0.0).unwrap_or_else(|_| unreachable!("0 is a valid difficulty"));
    let identity = Identity::generate(&zero, &mut rng);
    let mut c = NodeConfig::new(Arc::new(identity), &args.chain_name);
    c.listen_addr = Some(std::net::SocketAddr::from(([0u16; 8], 9732)));
    if let Some(f) = &file {
        f.apply(&mut c);
    }
    let pow = args
        .expected_pow
        .or(file.as_ref().and_then(|f| f.expected_pow))
        .unwrap_or(26.0);
    if let Ok(t) = PowTarget::new(pow) {
        c.pow_target = t;
    }
    apply_flags(args, &mut c);
    let data_dir = args
        .data_dir
        .clone()
        .or(file.as_ref().and_then(|f| f.data_dir.clone()))
        .unwrap_or_else(crate::default_data_dir);
    let discovery = args
        .discovery_addr
        .or(file.as_ref().and_then(|f| f.discovery_addr));
    Ok((c, data_dir, discovery))
}

/// Runs `peerpool config …`.
pub fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Init { output } => {
            if output.exists() {
                eprintln!("error: {} exists; not overwriting it", output.display());
                return ExitCode::FAILURE;
            }
            match std::fs::write(&output, DEFAULT_TOML) {
                Ok(()) => {
                    println!("wrote {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", output.display());
                    ExitCode::FAILURE
                }
            }
        }
        ConfigCommand::Show(args) => match effective(&args) {
            Ok((c, dir, discovery)) => {
                let v = effective_json(&c, Some(&dir), discovery);
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a panic is the failure report
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeArgs,
    }

    fn args(argv: &[&str]) -> NodeArgs {
        let mut all = vec!["peerpool"];
        all.extend_from_slice(argv);
        Cli::parse_from(all).args
    }

    /// The fields a configuration sets, for comparisons.
    fn fields(c: &NodeConfig) -> Value {
        effective_json(c, None, None)
    }

    #[test]
    fn the_commented_default_is_the_default() {
        let toml: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        let f = config_file::parse(&serde_json::to_value(toml).unwrap()).unwrap();
        assert!(f.ignored.is_empty(), "{:?}", f.ignored);
        let (defaults, ..) = effective(&args(&[])).unwrap();
        let mut c = defaults.clone();
        f.apply(&mut c);
        assert_eq!(fields(&c), fields(&defaults));
    }

    #[test]
    fn show_reads_back_to_the_same_settings_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(
            &file,
            r#"{"p2p": {"listen-addr": "127.0.0.1:9800", "private-mode": true,
                "limits": {"max-connections": 40, "swap-linger": null, "max-download-speed": 64}}}"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let (c, ..) =
            effective(&args(&["--config", path, "--net-addr", "127.0.0.1:9900"])).unwrap();
        assert_eq!(
            c.listen_addr,
            Some("127.0.0.1:9900".parse().unwrap()),
            "the flag wins"
        );
        assert!(c.pool.private_mode, "from the file");
        assert_eq!(c.pool.max_connections, 40);
        assert_eq!(c.io_scheduler.max_download_speed, Some(64 * 1024));
        assert_eq!(c.policy.swap_linger, None);
        // What show prints, loaded again, gives the same settings.
        let shown = effective_json(&c, None, None);
        let again = dir.path().join("shown.json");
        std::fs::write(&again, serde_json::to_string(&shown).unwrap()).unwrap();
        let (d, ..) = effective(&args(&["--config", again.to_str().unwrap()])).unwrap();
        assert_eq!(fields(&d), fields(&c));
        // --connections overrides the file's bounds.
        let (e, ..) = effective(&args(&["--config", path, "--connections", "8"])).unwrap();
        assert_eq!((e.pool.min_connections, e.pool.max_connections), (4, 12));
        // A bad file is an error.
        std::fs::write(&file, r#"{"p2p": {"limits": {"max-connections": 0}}}"#).unwrap();
        let err = effective(&args(&["--config", path]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p2p.limits.max-connections = 0"), "{err}");
    }
}
