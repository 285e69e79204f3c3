//! Writes the seed corpora, `fuzz/corpus/<target>/`, from the wire test vectors
//! (`crates/peerpool-proto/tests/data/wire.json`, WIRE.md §10) and from what the library
//! itself encodes. Run from `fuzz/` (`./seed.sh` does):
//!
//! ```text
//! cargo run --example seed
//! ```
//!
//! Each file is named after its content's hash, so running it again changes nothing.

use peerpool_fuzz::config::build_policy;
use peerpool_fuzz::driver::{Harness, Op};
use peerpool_fuzz::{chunk_key, chunk_nonce};
use peerpool_proto::connection_message::{AckMessage, ConnectionMetadata, NackMotive};
use peerpool_proto::crypto::{PublicKey, SecretKey};
use peerpool_proto::discovery::DiscoveryMessage;
use peerpool_proto::framing::ChunkSealer;
use peerpool_proto::identity::{Identity, PeerId};
use peerpool_proto::policy::PolicyConfig;
use peerpool_proto::pool::peers_file::serialize_peers_file;
use peerpool_proto::pool::{PoolConfig, Time};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("a hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    hex(v).try_into().expect("the vector's length")
}

/// Writes `bytes` as a seed of `target`.
fn seed(target: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), bytes).expect("seed file");
}

fn with_byte(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

const CONFIG_JSON: &str = r#"{
  "data-dir": "/tmp/node",
  "p2p": {
    "listen-addr": "[::]:9732",
    "bootstrap-peers": ["127.0.0.1:9733", "boot.example:9732#idsg2wkkDDv2cbEMK4zH49fjgyn7XT"],
    "expected-proof-of-work": 0,
    "greylisting-config": { "factor": 1000, "initial-delay": 1, "increase-cap": 31536000 },
    "limits": {
      "connection-timeout": 10, "min-connections": 2, "expected-connections": 4,
      "max-connections": 8, "max-known-points": [40, 30], "max-known-peer-ids": [40, 30],
      "ip-greylist-size-in-kilobytes": 8, "maintenance-idle-time": 120, "swap-linger": null,
      "binary-chunks-size": 19
    }
  },
  "peerpool": {
    "connection-manager": { "low-water": 4, "high-water": 6, "grace-period": 0 },
    "peers-file": { "save-interval": 1 }
  },
  "rpc": { "listen-addrs": ["127.0.0.1:8732"] }
}"#;

const CONFIG_TOML: &str = r#"data-dir = "/tmp/node"
[p2p]
private-mode = true
[p2p.limits]
min-connections = 0
max-connections = 1
ip-greylist-cleanup-delay = 0.5
[p2p.greylisting-config]
factor = 1.0
increase-cap = 1
"#;

fn main() {
    let text = std::fs::read_to_string("../crates/peerpool-proto/tests/data/wire.json")
        .expect("run from fuzz/: the wire vectors");
    let v: Value = serde_json::from_str(&text).expect("the vectors are JSON");
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();

    for c in list("connection_messages") {
        seed("connection_message", &hex(&c["body"]));
    }
    for c in list("chunks") {
        seed("chunk_stream", &with_byte(0, &hex(&c["chunk"])));
    }
    let mut stream = Vec::new();
    for c in list("p2p_messages") {
        let m = hex(&c["hex"]);
        seed("p2p_message", &m);
        seed("p2p_message", &m[4..]);
        stream.extend_from_slice(&m);
    }
    for (size, corrupt) in [(255u8, 1u8), (7, 1), (1, 1), (16, 0)] {
        let mut input = vec![1, size, corrupt, 9];
        input.extend_from_slice(&stream);
        seed("chunk_stream", &input);
    }
    let mut sealer = ChunkSealer::new(chunk_key(), chunk_nonce(), 5);
    let mut sealed = Vec::new();
    sealer.seal_message(&stream, &mut sealed);
    seed("chunk_stream", &with_byte(0, &sealed));
    for k in ["advertise_body", "swap_body_max"] {
        seed("p2p_message", &hex(&v[k]["hex"]));
    }
    for c in list("rejected_envelopes") {
        seed("p2p_message", &hex(&c["hex"]));
    }
    for c in list("ack") {
        seed("ack_nack", &hex(&c["hex"]));
    }
    let points: Vec<_> = v["advertise_body"]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.parse().ok())
        .collect();
    let nack = AckMessage::Nack {
        motive: NackMotive::TooManyConnections,
        points: points.clone(),
    };
    seed("ack_nack", &nack.encode());
    for c in list("metadata") {
        seed("metadata", &hex(&c["hex"]));
    }
    seed("metadata", &ConnectionMetadata::default().encode());

    for p in v["advertise_body"]["points"]
        .as_array()
        .into_iter()
        .flatten()
    {
        seed("point_text", p.as_str().unwrap_or_default().as_bytes());
    }
    for c in list("peer_ids") {
        let id = c["peer_id"].as_str().unwrap_or_default();
        seed("point_text", id.as_bytes());
        seed("point_text", format!("127.0.0.1:9732#{id}").as_bytes());
        seed(
            "point_text",
            format!("[::ffff:10.0.0.1]:+01#{id}").as_bytes(),
        );
    }
    let mut wire = Vec::new();
    for p in &points {
        peerpool_proto::point::Point::encode(p, &mut wire);
    }
    seed("point_text", &wire);
    seed("point_text", b"\"[2001:db8::1]:9732\"");

    for c in list("identities") {
        let secret = SecretKey(arr(&c["secret_key"]));
        let id = Identity::from_parts(secret, arr(&c["proof_of_work_stamp"]));
        assert_eq!(id.public_key, PublicKey(arr(&c["public_key"])));
        seed("identity_json", &with_byte(0, id.to_json().as_bytes()));
        seed("identity_json", &with_byte(208, id.to_json().as_bytes()));
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for c in list("peer_ids") {
        let id: PeerId = c["peer_id"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .expect("id");
        let d = DiscoveryMessage {
            peer_id: id,
            port: 9732,
        };
        seed("discovery_datagram", &d.encode());
        let mut sched = d.encode().to_vec();
        sched.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 10]);
        seed("discovery_datagram", &sched);
    }

    seed("config_file", &with_byte(0, CONFIG_JSON.as_bytes()));
    seed("config_file", &with_byte(1, CONFIG_TOML.as_bytes()));
    seed("config_file", &with_byte(2, b"{}"));

    // A pool's peers file after some traffic, and a few arbitrary inputs for the
    // structured targets.
    let now = Time::from_secs(1_700_000_000);
    let pool = PoolConfig {
        max_connections: 4,
        min_connections: 1,
        ..PoolConfig::default()
    };
    let policy = build_policy(now, pool, PolicyConfig::default(), 5).expect("valid settings");
    let mut h = Harness::new(policy, now);
    for op in [
        Op::Connect(1, false),
        Op::Authenticate(0, 1, Some(9732), false, false),
        Op::Establish(0),
        Op::Connect(2, true),
        Op::Fail(0, peerpool_fuzz::driver::Failure::Timeout),
        Op::Incoming(3, 40_000),
        Op::Authenticate(0, 3, None, false, true),
        Op::Establish(0),
        Op::Tick(90),
        Op::Close(0, 1),
    ] {
        h.apply(&op);
    }
    let records = h.policy.peer_records();
    let file = serialize_peers_file(&records).expect("records serialize");
    seed("peers_json", file.as_bytes());
    seed("peers_json", b"[]");
    for target in ["pool_ops", "pool_config"] {
        for len in [64usize, 256, 1024] {
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            seed(target, &bytes);
        }
    }
}
