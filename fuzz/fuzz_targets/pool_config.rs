//! Arbitrary pool and policy settings (connection manager and maintenance included), any
//! value in its type's range: when validation accepts them, the policy is driven through
//! many failed dials, connections that come and go, and time leaping far forward, then
//! through arbitrary operations. Nothing may panic, and the invariants hold throughout.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use peerpool_fuzz::config::{build_policy, policy_config, pool_config, start_time};
use peerpool_fuzz::driver::{Harness, Op};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(pool), Ok(policy), Ok(now), Ok(seed)) = (
        pool_config(&mut u),
        policy_config(&mut u),
        start_time(&mut u),
        u.arbitrary::<u64>(),
    ) else {
        return;
    };
    let Some(p) = build_policy(now, pool, policy, seed) else {
        return;
    };
    let mut h = Harness::new(p, now);
    h.check();
    h.stress(80);
    for _ in 0..64 {
        let Ok(op) = u.arbitrary::<Op>() else {
            break;
        };
        h.apply(&op);
    }
});
