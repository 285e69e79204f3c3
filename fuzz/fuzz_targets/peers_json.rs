//! `peers.json`: a parse gives an error or records that save to text that loads again
//! (to the same records, when the metadata is `()`), and that a pool loads, keeps within
//! its bounds, collects, advertises, and saves again loadably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::pool::peers_file::{parse_peers_file, serialize_peers_file};
use peerpool_proto::pool::{Pool, PoolConfig, Time};
use rand::SeedableRng;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(records) = parse_peers_file::<()>(text) {
        let saved = serialize_peers_file(&records).expect("records serialize");
        let back = parse_peers_file::<()>(&saved).expect("a saved peers file loads");
        assert_eq!(back, records, "records change through a save and a load");
    }
    let Ok(records) = parse_peers_file::<Value>(text) else {
        return;
    };
    let saved = serialize_peers_file(&records).expect("records serialize");
    let back = parse_peers_file::<Value>(&saved).expect("a saved peers file loads");
    assert_eq!(back.len(), records.len());

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut config = PoolConfig {
        max_known_points: (8, 6),
        max_known_peer_ids: (8, 6),
        ..PoolConfig::default()
    };
    config.acl.ip_greylist_size_in_kilobytes = 1;
    let mut pool = Pool::<Value>::new(config, &mut rng).expect("valid config");
    for now in [Time::from_secs(1_700_000_000), Time::MAX_RFC3339] {
        pool.load_peer_records(now, records.clone());
        assert!(pool.known_peer_ids_len() <= 8);
        assert!(pool.known_points_len() <= 8);
        let _ = pool.candidates(now);
        let _ = pool.list_known_points(true, 50, &mut rng);
        let _ = pool.gc_points(now);
        let _ = pool.gc_peer_ids();
        let saved = serialize_peers_file(&pool.peer_records()).expect("records serialize");
        let again = parse_peers_file::<Value>(&saved).expect("what a pool saves loads");
        assert_eq!(again.len(), pool.peer_records().len());
    }
});
