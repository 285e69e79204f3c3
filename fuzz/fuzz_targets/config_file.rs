//! The node's configuration file (octez's `config.json`, or TOML), read by the
//! `peerpool` binary's own reader: its source (`crates/peerpool-node/src/config_file.rs`
//! and `config_file/reader.rs`) is compiled into this target, since the binary crate has
//! no library. A file gives an error or settings that, applied over the defaults (and
//! with `--connections` on top for some inputs), the node's validation refuses or a
//! policy runs with: the scripted run of `pool_config` must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool::NodeConfig;
use peerpool_fuzz::config::build_policy;
use peerpool_fuzz::driver::Harness;
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::pool::Time;
use rand::SeedableRng;
use serde_json::Value;
use std::sync::{Arc, OnceLock};

#[path = "../../crates/peerpool-node/src"]
#[allow(dead_code, unused_imports)]
mod node_src {
    pub mod config_file;
}
use node_src::config_file;

fn identity() -> Arc<Identity> {
    static ID: OnceLock<Arc<Identity>> = OnceLock::new();
    ID.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let target = PowTarget::new(0.0).expect("difficulty 0 is valid");
        Arc::new(Identity::generate(&target, &mut rng))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let value: Value = if kind % 2 == 0 {
        let Ok(v) = serde_json::from_str(text) else {
            return;
        };
        v
    } else {
        let Ok(t) = toml::from_str::<toml::Table>(text) else {
            return;
        };
        let Ok(v) = serde_json::to_value(t) else {
            return;
        };
        v
    };
    let Ok(file) = config_file::parse(&value) else {
        return;
    };
    let mut c = NodeConfig::new(identity(), "TEZOS");
    file.apply(&mut c);
    if kind & 2 != 0 {
        // The `--connections N` flag, over the file, N anywhere in its range.
        c.set_connections(usize::MAX >> (kind >> 2));
    }
    let Ok(valid) = c.validate() else {
        return;
    };
    let cfg = valid.get();
    let now = Time::from_secs(1_700_000_000);
    let Some(p) = build_policy(now, cfg.pool.clone(), cfg.policy.clone(), 1) else {
        return;
    };
    Harness::new(p, now).stress(24);
});
