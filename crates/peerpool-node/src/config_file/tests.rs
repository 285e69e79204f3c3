#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::*;
use peerpool_proto::identity::Identity;
use serde_json::json;

fn base() -> NodeConfig {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let id = Identity::generate(&PowTarget::new(0.0).unwrap(), &mut rng);
    NodeConfig::new(std::sync::Arc::new(id), "TEZOS")
}

fn applied(v: Value) -> NodeConfig {
    let f = parse(&v).unwrap();
    let mut c = base();
    f.apply(&mut c);
    c
}

fn err(v: Value) -> String {
    parse(&v).expect_err("refused").to_string()
}

/// An octez node's `config.json` as octez writes it (other sections included).
const OCTEZ: &str = r#"{
  "data-dir": "/var/lib/tezos/node",
  "rpc": { "listen-addrs": [ "127.0.0.1:8732" ], "acl": [] },
  "p2p": {
    "expected-proof-of-work": 26,
    "bootstrap-peers": [ "boot.tzinit.org", "127.0.0.1:9733#PEER" ],
    "listen-addr": "[::]:9732",
    "limits": {
      "connection-timeout": 10, "min-connections": 10, "expected-connections": 50,
      "max-connections": 100, "max_known_points": [ 400, 300 ], "max_known_peer_ids": [ 400, 300 ],
      "maintenance-idle-time": 120, "swap-linger": 30, "greylist-timeout": 86400
    },
    "greylisting_config": { "factor": 1.2, "initial-delay": 1, "disconnection-delay": 60, "increase-cap": 172800 }
  },
  "log": { "output": "stdout" },
  "shell": { "chain_validator": { "synchronisation_threshold": 4 } },
  "network": "mainnet"
}"#;

#[test]
fn an_octez_config_json_loads_unchanged_and_names_what_it_ignores() {
    let peer = base().identity.peer_id.to_string();
    let v: Value = serde_json::from_str(&OCTEZ.replace("PEER", &peer)).unwrap();
    let f = parse(&v).unwrap();
    assert_eq!(f.data_dir, Some(PathBuf::from("/var/lib/tezos/node")));
    assert_eq!(f.listen_addr, Some("[::]:9732".parse().unwrap()));
    assert_eq!(f.expected_pow, Some(26.0));
    let peers = f.bootstrap_peers.clone().unwrap();
    assert_eq!(peers[0].host_port, "boot.tzinit.org");
    assert!(peers[1].peer_id.is_some());
    for section in ["rpc", "log", "shell", "network"] {
        assert!(f.ignored.contains(&section.to_owned()), "{:?}", f.ignored);
    }
    let mut c = base();
    f.apply(&mut c);
    assert_eq!(c.pool.max_known_points, (400, 300));
    assert_eq!(
        c.pool.reconnection.increase_cap,
        Duration::from_secs(172_800)
    );
    assert_eq!(c.policy.maintenance.idle_time, Duration::from_secs(120));
    assert!(c.validate().is_ok());
}

#[test]
fn every_limit_key_is_applied() {
    let c = applied(json!({ "p2p": {
        "private-mode": true, "disable-mempool": true, "disable-peer-discovery": true,
        "limits": {
            "connection-timeout": 7, "authentication-timeout": 3.5,
            "min-connections": 4, "expected-connections": 8, "max-connections": 12,
            "backlog": 50, "max-incoming-connections": 9,
            "max-download-speed": 100, "max-upload-speed": 200,
            "read-buffer-size": 32768, "read-queue-size": 1048576, "write-queue-size": 2097152,
            "incoming-message-queue-size": 4194304, "outgoing-message-queue-size": 3145728,
            "incoming-app-message-queue-size": 20,
            "max-known-points": [500, 400], "max-known-peer-ids": [600, 500],
            "peer-greylist-size": 511, "ip-greylist-size-in-kilobytes": 1024,
            "ip-greylist-cleanup-delay": 3600, "maintenance-idle-time": 60, "swap-linger": null,
            "binary-chunks-size": 4096
        }
    }, "peerpool": {
        "connection-manager": { "low-water": 9, "high-water": 11, "grace-period": 30,
                                "protection-budget": 2, "max-incoming-per-netgroup": 3 },
        "peers-file": { "save-interval": 60 }
    }}));
    assert!(c.pool.private_mode && c.metadata.disable_mempool && !c.policy.peer_discovery);
    assert_eq!(c.connection_timeout, Duration::from_secs(7));
    assert_eq!(c.authentication_timeout, Duration::from_millis(3500));
    assert_eq!((c.pool.min_connections, c.pool.max_connections), (4, 12));
    assert_eq!(c.policy.maintenance.expected_connections, Some(8));
    assert_eq!(c.backlog, 50);
    assert_eq!(c.policy.max_incoming_handshakes, 9);
    assert_eq!(c.io_scheduler.max_download_speed, Some(100 * 1024), "KiB/s");
    assert_eq!(c.io_scheduler.max_upload_speed, Some(200 * 1024));
    assert_eq!(c.io_scheduler.read_buffer_size, 32768);
    assert_eq!(c.io_scheduler.read_queue_size, 1_048_576);
    assert_eq!(c.io_scheduler.write_queue_size, 2_097_152);
    assert_eq!(c.queues.incoming_app_bytes, 4_194_304);
    assert_eq!(c.queues.outgoing_app_bytes, 3_145_728);
    assert_eq!(c.queues.incoming_app_messages, 20);
    assert_eq!(c.pool.max_known_points, (500, 400));
    assert_eq!(c.pool.max_known_peer_ids, (600, 500));
    assert_eq!(c.pool.acl.peer_greylist_size, 511);
    assert_eq!(c.pool.acl.ip_greylist_size_in_kilobytes, 1024);
    assert_eq!(
        c.pool.acl.ip_greylist_cleanup_delay,
        Duration::from_secs(3600)
    );
    assert_eq!(c.policy.maintenance.idle_time, Duration::from_secs(60));
    assert_eq!(c.policy.swap_linger, None, "null turns swaps off");
    assert_eq!(c.chunk_payload_bytes, 4096 - 18);
    let cm = &c.policy.conn_manager;
    assert_eq!((cm.low_water, cm.high_water), (Some(9), Some(11)));
    assert_eq!(cm.grace_period, Duration::from_secs(30));
    assert_eq!(
        (cm.protection_budget, cm.max_incoming_per_netgroup),
        (Some(2), Some(3))
    );
    assert_eq!(c.policy.peers_file_interval, Some(Duration::from_secs(60)));
    assert!(c.validate().is_ok());
    // null maintenance idle time turns the maintenance off.
    let c = applied(json!({ "p2p": { "limits": { "maintenance-idle-time": null } } }));
    assert!(!c.policy.maintenance.enabled);
}

#[test]
fn octez_quirks_are_fixed() {
    // A limits object without connection-timeout: 10 s, not the authentication timeout.
    let c = applied(json!({ "p2p": { "limits": { "authentication-timeout": 5 } } }));
    assert_eq!(c.connection_timeout, Duration::from_secs(10));
    // Without the known-table keys the tables stay bounded.
    let d = base();
    assert_eq!(c.pool.max_known_points, d.pool.max_known_points);
    assert!(c.pool.max_known_points.0 < usize::MAX);
}

#[test]
fn a_bad_value_names_the_key_the_value_and_what_is_allowed() {
    let cases = [
        (
            json!({ "p2p": { "limits": { "max-connections": 0 } } }),
            "p2p.limits.max-connections = 0: an integer in [1, 65535]",
        ),
        (
            json!({ "p2p": { "limits": { "backlog": -1 } } }),
            "p2p.limits.backlog = -1",
        ),
        (
            json!({ "p2p": { "limits": { "binary-chunks-size": 18 } } }),
            "p2p.limits.binary-chunks-size = 18: an integer in [19, 65535]",
        ),
        (
            json!({ "p2p": { "limits": { "authentication-timeout": 0 } } }),
            "p2p.limits.authentication-timeout = 0: seconds in (0",
        ),
        (
            json!({ "p2p": { "limits": { "swap-linger": -5 } } }),
            "p2p.limits.swap-linger = -5",
        ),
        (
            json!({ "p2p": { "limits": { "max-known-points": [10, 20] } } }),
            "p2p.limits.max-known-points = [10,20]",
        ),
        (
            json!({ "p2p": { "expected-proof-of-work": 300 } }),
            "p2p.expected-proof-of-work = 300: a number in [0, 256]",
        ),
        (
            json!({ "p2p": { "listen-addr": "nowhere" } }),
            "p2p.listen-addr = \"nowhere\"",
        ),
        (
            json!({ "p2p": { "greylisting-config": { "factor": 0.5 } } }),
            "p2p.greylisting-config.factor = 0.5",
        ),
        (
            json!({ "p2p": { "bootstrap-peers": [ "1.2.3.4:9732#notanid" ] } }),
            "p2p.bootstrap-peers",
        ),
        (
            json!({ "peerpool": { "connection-manager": { "low-water": 0 } } }),
            "peerpool.connection-manager.low-water = 0",
        ),
    ];
    for (v, want) in cases {
        let e = err(v);
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
    }
    let e = err(json!({ "p2p": { "private-mode": "yes" } }));
    assert_eq!(
        e,
        "p2p.private-mode: expected a boolean, found string \"yes\""
    );
    let e = err(json!({ "p2p": { "limits": { "min-connections": "ten" } } }));
    assert_eq!(
        e,
        "p2p.limits.min-connections: expected an integer, found string \"ten\""
    );
    let e = err(json!({ "p2p": [] }));
    assert_eq!(e, "p2p: expected an object, found an array");
}

#[test]
fn toml_reads_like_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "data-dir = \"/tmp/x\"\n[p2p]\nlisten-addr = \"127.0.0.1:9800\"\n[p2p.limits]\nmax-connections = 30\n",
    )
    .unwrap();
    let f = load(&path).unwrap();
    assert_eq!(f.data_dir, Some(PathBuf::from("/tmp/x")));
    assert_eq!(f.listen_addr, Some("127.0.0.1:9800".parse().unwrap()));
    let mut c = base();
    f.apply(&mut c);
    assert_eq!(c.pool.max_connections, 30);
    let bad = dir.path().join("config.yaml");
    std::fs::write(&bad, "p2p: {}").unwrap();
    assert!(load(&bad)
        .unwrap_err()
        .to_string()
        .contains(".json or .toml"));
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ \"p2p\": ").unwrap();
    assert!(matches!(load(&broken), Err(ConfigFileError::Syntax { .. })));
}

#[tokio::test]
async fn bootstrap_peers_resolve_and_a_name_that_does_not_is_skipped() {
    let peers = [
        BootstrapPeer {
            host_port: "127.0.0.1:9733".into(),
            peer_id: None,
        },
        BootstrapPeer {
            host_port: "localhost:9734".into(),
            peer_id: None,
        },
        BootstrapPeer {
            host_port: "no such host:1".into(),
            peer_id: None,
        },
    ];
    let (ok, failed) = resolve(&peers).await;
    assert_eq!(ok.len(), 2, "{ok:?} {failed:?}");
    assert_eq!(ok[0].0.to_string(), "127.0.0.1:9733");
    assert_eq!(ok[1].0.port(), 9734);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "no such host:1");
}

/// Every key, with a value out of its range and a value of the wrong type: each refused,
/// naming the key.
#[test]
fn every_key_refuses_out_of_range_and_wrong_type() {
    // (section path, key, out-of-range value or None when the key has no range)
    let keys: &[(&[&str], &str, Option<Value>)] = &[
        (&["p2p"], "listen-addr", Some(json!("nowhere"))),
        (&["p2p"], "discovery-addr", Some(json!("300.1.1.1"))),
        (&["p2p"], "advertised-net-port", Some(json!(0))),
        (&["p2p"], "expected-proof-of-work", Some(json!(257))),
        (&["p2p"], "private-mode", None),
        (&["p2p"], "disable-mempool", None),
        (&["p2p"], "disable-peer-discovery", None),
        (&["p2p", "greylisting-config"], "factor", Some(json!(0.5))),
        (
            &["p2p", "greylisting-config"],
            "initial-delay",
            Some(json!(0)),
        ),
        (
            &["p2p", "greylisting-config"],
            "disconnection-delay",
            Some(json!(-1)),
        ),
        (
            &["p2p", "greylisting-config"],
            "increase-cap",
            Some(json!(0)),
        ),
        (&["p2p", "limits"], "connection-timeout", Some(json!(0))),
        (
            &["p2p", "limits"],
            "authentication-timeout",
            Some(json!(-3)),
        ),
        (&["p2p", "limits"], "min-connections", Some(json!(70_000))),
        (&["p2p", "limits"], "expected-connections", Some(json!(-1))),
        (&["p2p", "limits"], "max-connections", Some(json!(0))),
        (&["p2p", "limits"], "backlog", Some(json!(0))),
        (
            &["p2p", "limits"],
            "max-incoming-connections",
            Some(json!(0)),
        ),
        (&["p2p", "limits"], "max-download-speed", Some(json!(0))),
        (&["p2p", "limits"], "max-upload-speed", Some(json!(-1))),
        (&["p2p", "limits"], "read-buffer-size", Some(json!(10))),
        (&["p2p", "limits"], "read-queue-size", Some(json!(10))),
        (&["p2p", "limits"], "write-queue-size", Some(json!(10))),
        (
            &["p2p", "limits"],
            "incoming-message-queue-size",
            Some(json!(10)),
        ),
        (
            &["p2p", "limits"],
            "outgoing-message-queue-size",
            Some(json!(10)),
        ),
        (
            &["p2p", "limits"],
            "incoming-app-message-queue-size",
            Some(json!(0)),
        ),
        (&["p2p", "limits"], "max-known-points", Some(json!([0, 0]))),
        (
            &["p2p", "limits"],
            "max-known-peer-ids",
            Some(json!([5, 6])),
        ),
        (&["p2p", "limits"], "peer-greylist-size", Some(json!(0))),
        (
            &["p2p", "limits"],
            "ip-greylist-size-in-kilobytes",
            Some(json!(0)),
        ),
        (
            &["p2p", "limits"],
            "ip-greylist-cleanup-delay",
            Some(json!(0)),
        ),
        (&["p2p", "limits"], "greylist-timeout", Some(json!(0))),
        (&["p2p", "limits"], "maintenance-idle-time", Some(json!(0))),
        (&["p2p", "limits"], "swap-linger", Some(json!(-2))),
        (
            &["p2p", "limits"],
            "binary-chunks-size",
            Some(json!(65_536)),
        ),
        (
            &["peerpool", "connection-manager"],
            "low-water",
            Some(json!(0)),
        ),
        (
            &["peerpool", "connection-manager"],
            "high-water",
            Some(json!(0)),
        ),
        (
            &["peerpool", "connection-manager"],
            "grace-period",
            Some(json!(-1)),
        ),
        (
            &["peerpool", "connection-manager"],
            "protection-budget",
            Some(json!(-1)),
        ),
        (
            &["peerpool", "connection-manager"],
            "max-incoming-per-netgroup",
            Some(json!(0)),
        ),
        (&["peerpool", "peers-file"], "save-interval", Some(json!(0))),
    ];
    let nest = |path: &[&str], key: &str, v: Value| {
        let mut out = json!({ key: v });
        for p in path.iter().rev() {
            out = json!({ *p: out });
        }
        out
    };
    for (path, key, bad) in keys {
        let dotted = format!("{}.{key}", path.join("."));
        if let Some(bad) = bad {
            let e = err(nest(path, key, bad.clone()));
            assert!(e.starts_with(&format!("{dotted} = ")), "{dotted}: {e}");
        }
        // A wrong type: an object where a scalar or a list is expected.
        let e = err(nest(path, key, json!({ "oops": 1 })));
        assert!(
            e.starts_with(&format!("{dotted}: expected")),
            "{dotted}: {e}"
        );
    }
}

#[tokio::test]
async fn the_advertised_port_is_what_peers_learn() {
    use crate::test_support::{link, node, node_with};
    let a = node(101).await;
    let b = node_with(102, |c| c.advertised_port = Some(4242)).await;
    link(&a, &b).await;
    let seen = a.connection_infos();
    assert_eq!(seen[0].listening_point.map(|p| p.port()), Some(4242));
    a.shutdown().await;
    b.shutdown().await;
}
