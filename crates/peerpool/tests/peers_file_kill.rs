//! Kill-during-save: a child process (this test binary re-executed with an environment
//! variable) saves `peers.json` in a loop; the parent kills it at random moments and checks
//! that the file always parses as one complete version.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use peerpool::persist::write_atomically;
use peerpool_proto::identity::PeerId;
use peerpool_proto::pool::peers_file::{parse_peers_file, serialize_peers_file};
use peerpool_proto::pool::{IdPoint, PeerEvent, PeerEventKind, PeerRecord, Time};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PEERPOOL_PEERS_FILE_KILL_CHILD";
const ITERATIONS: usize = 30;

/// Version `v` of the file: `v % 20 + 1` peers, each with metadata `v` and 40 events, so a
/// save takes long enough to be interrupted in the middle.
fn version(v: u64) -> Vec<PeerRecord<u64>> {
    (0..v % 20 + 1)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            PeerRecord {
                peer_id: PeerId(id),
                created: Time::from_secs(1_700_000_000 + v),
                trusted: false,
                peer_metadata: v,
                events: (0..40)
                    .map(|e| PeerEvent {
                        kind: PeerEventKind::ConnectionEstablished,
                        timestamp: Time::from_secs(1_700_000_000 + e),
                        point: IdPoint {
                            addr: [10, 0, 0, 1].into(),
                            port: Some(9732),
                        },
                    })
                    .collect(),
                last_failed_connection: None,
                last_rejected_connection: None,
                last_established_connection: None,
                last_disconnection: None,
                points: Vec::new(),
            }
        })
        .collect()
}

/// Saves a version with the node's atomic write.
fn save(path: &Path, records: &[PeerRecord<u64>]) -> std::io::Result<()> {
    let text = serialize_peers_file(records).unwrap();
    write_atomically(path, text.as_bytes())
}

/// Returns the version of a complete file, or panics if the file is not one.
fn check_complete(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let recs: Vec<PeerRecord<u64>> = parse_peers_file(&text).unwrap();
    let v = recs[0].peer_metadata;
    assert_eq!(recs, version(v), "file is not a complete version {v}");
    v
}

/// The child side: runs only when re-executed by the parent test.
#[test]
fn child_saves_in_a_loop() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let start_version = check_complete(&path) + 1;
    let deadline = Instant::now() + Duration::from_secs(20); // never outlive a failed parent
    for v in start_version.. {
        save(&path, &version(v)).unwrap();
        println!("saved {v}");
        if Instant::now() > deadline {
            return;
        }
    }
}

#[test]
fn kill_during_save_leaves_an_old_or_new_complete_file() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers-file-kill");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peers.json");
    save(&path, &version(0)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut last = 0;
    for _ in 0..ITERATIONS {
        let mut child = Command::new(&exe)
            .args([
                "child_saves_in_a_loop",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a random number of completed saves: the next save is in flight.
        let saves = rng.random_range(1..8);
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in out.lines() {
            if line.unwrap().starts_with("saved ") {
                seen += 1;
                if seen == saves {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let v = check_complete(&path);
        assert!(
            v >= last + saves,
            "version {v} after {saves} saves from {last}"
        );
        last = v;
    }
}
