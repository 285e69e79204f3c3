//! Random sequences of pool, ACL and connection-manager operations on a connection
//! policy with small settings (a few slots, the manager on or off, watermarks, a
//! protection budget, private mode), checking the invariants after every step
//! (`peerpool_fuzz::driver::Harness::check`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpool_fuzz::config::build_policy;
use peerpool_fuzz::driver::{Harness, Op};
use peerpool_proto::policy::PolicyConfig;
use peerpool_proto::pool::{PoolConfig, Time};
use std::time::Duration;

#[derive(Debug, Arbitrary)]
struct Shape {
    max: u8,
    min: u8,
    manager: bool,
    low: Option<u8>,
    high: Option<u8>,
    budget: Option<u8>,
    per_netgroup: Option<u8>,
    handshakes: u8,
    private: bool,
    grace: bool,
    octez_maintenance: bool,
    seed: u64,
}

#[derive(Debug, Arbitrary)]
struct Input {
    shape: Shape,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let s = &input.shape;
    let max = 1 + usize::from(s.max % 8);
    let mut pool = PoolConfig {
        max_connections: max,
        min_connections: usize::from(s.min) % (max + 1),
        max_known_points: (24, 16),
        max_known_peer_ids: (24, 16),
        private_mode: s.private,
        ..PoolConfig::default()
    };
    pool.acl.ip_greylist_size_in_kilobytes = 4;
    let mut policy = PolicyConfig::default();
    if s.octez_maintenance {
        policy.maintenance = peerpool_proto::policy::MaintenanceConfig::octez();
    }
    policy.max_incoming_handshakes = 1 + usize::from(s.handshakes % 6);
    let cm = &mut policy.conn_manager;
    cm.enabled = s.manager;
    cm.low_water = s.low.map(|x| 1 + usize::from(x) % max);
    cm.high_water = s.high.map(|x| 1 + usize::from(x) % max);
    cm.protection_budget = s.budget.map(|x| usize::from(x % 4));
    cm.max_incoming_per_netgroup = s.per_netgroup.map(|x| 1 + usize::from(x % 4));
    cm.grace_period = if s.grace {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    };
    let now = Time::from_secs(1_700_000_000);
    let Some(p) = build_policy(now, pool, policy, s.seed) else {
        return;
    };
    let mut h = Harness::new(p, now);
    h.check();
    for op in input.ops.iter().take(256) {
        h.apply(op);
    }
});
