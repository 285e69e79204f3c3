//! The open-file limit (issue 11, item 4), on the real binary: raised to the hard limit at
//! start and reported with the connections it allows; a limit too low for
//! `max_connections` lowers it with a warning, and the full node refuses newcomers with a
//! Nack and a clear log line (not an `accept` failing with `EMFILE`).
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::*;
use std::process::Command;

/// A node on `ip` with the default connections (10 / 50 / 100), and `more` flags.
fn node_args(dir: &str, ip: &str, more: &[&str]) -> Vec<String> {
    let mut args = [
        "--net-addr",
        &format!("{ip}:0"),
        "--expected-pow",
        "0",
        "--data-dir",
        dir,
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(more.iter().map(|s| (*s).to_owned()));
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What the shell says the hard limit is.
fn hard_limit() -> String {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit_and_reported() {
    let hard = hard_limit();
    let dir = temp_dir("fd-limits-raise");
    let args = node_args(dir.to_str().unwrap(), "127.0.0.1", &[]);
    let mut node = NodeProcess::start("node", &strs(&args), "info", Some("-Sn 64"));
    let line = node.wait_for("the open-file limit", |l| l.contains("open-file limit"));
    assert_eq!(field(&line, "raised_from"), Some("64"), "{line}");
    let nofile: u64 = field(&line, "nofile").unwrap().parse().unwrap();
    if hard != "unlimited" {
        assert_eq!(nofile.to_string(), hard, "{line}");
    }
    // The default 100 connections, unless the hard limit allows fewer (62 kept).
    let max = nofile.saturating_sub(62).clamp(1, 100);
    assert_eq!(
        field(&line, "max_connections"),
        Some(max.to_string().as_str()),
        "{line}"
    );
    node.started();
    if max == 100 {
        assert!(!node.log_text().contains("WARN"), "{}", node.log_text());
    }
}

#[test]
fn a_low_limit_caps_connections_and_the_full_node_refuses_with_a_log_line() {
    let data = temp_dir("fd-limits-full");
    let dir = |name: &str| data.join(name).to_str().unwrap().to_owned();
    // 63 descriptors: 62 kept for the node (32 + 20 incoming handshakes + 10 dials), one
    // connection, less than the default 100.
    let args = node_args(&dir("a"), "127.0.0.1", &[]);
    let mut a = NodeProcess::start("a", &strs(&args), "info", Some("-n 63"));
    let line = a.wait_for("the open-file limit", |l| l.contains("open-file limit"));
    assert!(
        line.contains("open-file limit 63: at most 1 connections"),
        "{line}"
    );
    assert_eq!(field(&line, "reserved"), Some("62"), "{line}");
    let warning = a.wait_for("the warning", |l| l.contains("WARN"));
    assert!(
        warning.contains("max_connections 100 is more than the open-file limit 63 allows"),
        "{warning}"
    );
    let (a_id, a_addr) = a.started();
    // B takes the one slot.
    let args = node_args(
        &dir("b"),
        "127.0.0.2",
        &["--connections", "1", "--peer", &a_addr],
    );
    let mut b = NodeProcess::start("b", &strs(&args), "info", None);
    let (b_id, _) = b.started();
    a.connected_to(&[&b_id]);
    b.connected_to(&[&a_id]);
    // A newcomer is refused by the policy, with a Nack.
    let out = Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args(["probe", &a_addr, "--expected-pow", "0", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(12), "{report}");
    assert!(
        report["nack_motive"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{report}"
    );
    let refused = a.wait_for("the refusal", |l| l.contains("incoming connection refused"));
    assert!(
        refused.contains("WARN")
            && refused.contains("at its limit of 1 connections")
            && field(&refused, "refused") == Some("1"),
        "{refused}"
    );
    // Still serving its peer, and never out of descriptors.
    a.kill();
    a.drain_log();
    let log = a.log_text();
    assert!(!log.contains("out of file descriptors"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
}
