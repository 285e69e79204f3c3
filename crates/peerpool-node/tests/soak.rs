//! The 1-minute soak of CI (issue 11): `peerpool soak` runs 12 node processes over TCP on
//! 127.0.0.x with a round of restarts and message traffic, checking every node's
//! invariants every second; the 10-minute, 50-node run is in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_one_minute_soak_finds_no_panic_and_no_broken_invariant() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args(["soak", "--nodes", "12", "--minutes", "1", "--port", "29632"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "soak failed");
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}"))
            .to_string()
    };
    assert_eq!(line("panics:"), "panics: 0");
    assert_eq!(line("invariant violations:"), "invariant violations: 0");
    // The churn happened (10 % of 12 nodes, rounded: one restart at 30 s) and the audits
    // were answered: 12 nodes, about 60 rounds.
    assert!(
        line("restarts:").starts_with("restarts: 1;"),
        "{}",
        line("restarts:")
    );
    let checks: u64 = line("checks")
        .split(": ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(checks > 12 * 40, "{checks} audits answered");
    assert!(line("traffic:").contains("MiB received"));
}
