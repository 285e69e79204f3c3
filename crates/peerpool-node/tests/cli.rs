//! The `peerpool` binary end to end: identity tool, probe exit codes, sandbox.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn peerpool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args(args)
        .output()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerpool-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn identity_generate_then_show() {
    let dir = temp_dir("identity");
    let d = dir.to_str().unwrap();
    let out = peerpool(&[
        "identity",
        "generate",
        "--expected-pow",
        "10.5",
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("identity.json")).unwrap()).unwrap();
    for field in ["peer_id", "public_key", "secret_key", "proof_of_work_stamp"] {
        assert!(json[field].is_string(), "{field} missing");
    }
    let show = peerpool(&["identity", "show", "--data-dir", d]);
    assert!(show.status.success());
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains(json["peer_id"].as_str().unwrap()), "{shown}");
    let bits: u32 = shown
        .split("proof_of_work: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bits >= 10, "{bits}");
    // Not overwritten without --force.
    let again = peerpool(&[
        "identity",
        "generate",
        "--expected-pow",
        "1",
        "--data-dir",
        d,
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"));
}

#[test]
fn broken_identity_files_give_clear_errors() {
    let dir = temp_dir("broken");
    let d = dir.to_str().unwrap();
    let path = dir.join("identity.json");
    // A vector identity with 2 bits of proof of work, its peer id altered.
    let good = r#"{"peer_id":"idtqxHUjbjbCfaDn4jczoPGsnhacKX","public_key":"a072c7b3e477142689cadee638078b377df5e5793e3cea529d0b718cde59f212","secret_key":"d37c77a8643c7f7fce9219e9769ed4dd23bc542265da47a64a2613bd199ad74e","proof_of_work_stamp":"0cfe810d9b4591f0f50721b6811f2981a4274e9d0593bbd0"}"#;
    for (content, expected) in [
        ("{not json", "not valid JSON"),
        (
            &good.replace(
                "idtqxHUjbjbCfaDn4jczoPGsnhacKX",
                "idqjq34sB6uHWdFzJDB97zwXAdHASb",
            )[..],
            "does not match the public key",
        ),
        (
            &good.replace("d37c77a8", "e37c77a8")[..],
            "secret_key does not match",
        ),
        (
            &good.replace("\"0cfe810d", "\"0cfe")[..],
            "not 24 bytes of hex",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let out = peerpool(&["identity", "show", "--data-dir", d]);
        assert!(!out.status.success());
        assert!(text(&out).contains(expected), "{content}: {}", text(&out));
    }
    // PoW below what the node expects: the node refuses to start.
    std::fs::write(&path, good).unwrap();
    let out = peerpool(&[
        "node",
        "--data-dir",
        d,
        "--expected-pow",
        "20",
        "--net-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("below the expected level 20"),
        "{}",
        text(&out)
    );
}

#[test]
fn probe_exit_codes() {
    // Refused: nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = peerpool(&["probe", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    // Timed out: a listener that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = peerpool(&[
        "probe",
        &silent.local_addr().unwrap().to_string(),
        "--timeout",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    // Protocol error: a listener that closes at once.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closer.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (s, _) = closer.accept().unwrap();
        drop(s);
    });
    let out = peerpool(&["probe", &addr]);
    t.join().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
}

#[test]
fn probe_against_a_node_reports_ack_then_nack() {
    let dir = temp_dir("probe-node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args([
            "node",
            "--net-addr",
            &addr,
            "--expected-pow",
            "2",
            "--chain-name",
            "TEZOS",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The node logs "node started" once it listens.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(node.stderr.take().unwrap()));
    let up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("node started"));
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(up, "node did not start");
    let out = peerpool(&[
        "probe",
        &addr,
        "--chain-name",
        "TEZOS",
        "--expected-pow",
        "2",
        "--identity-pow",
        "4",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report["outcome"], "ack");
    assert_eq!(report["chain_name"], "TEZOS");
    assert_eq!(report["p2p_version"], 1);
    assert!(report["peer_id"].as_str().unwrap().starts_with("id"));
    assert!(report["ack_ms"].is_number());
    let out = peerpool(&[
        "probe",
        &addr,
        "--chain-name",
        "ELSEWHERE",
        "--expected-pow",
        "2",
        "--identity-pow",
        "4",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", text(&out));
    assert_eq!(report["outcome"], "nack");
    assert!(report["nack_motive"]
        .as_str()
        .unwrap()
        .contains("unknown chain name"));
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn sandbox_ends_with_every_node_connected() {
    let pictures = temp_dir("sandbox-pictures");
    let out = peerpool(&[
        "sandbox",
        "--nodes",
        "6",
        "--duration",
        "3s",
        "--base-port",
        "0",
        "--pictures",
        pictures.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes with none: 0"), "{t}");
    assert!(t.contains("outside [4, 12] connections: 0"), "{t}");
    assert!(t.contains("127.0.0.6:"), "{t}");
    assert!(t.contains("node 1's RPC: http://127.0.0.1:"), "{t}");
    assert!(t.contains("node 1's metrics: http://127.0.0.1:"), "{t}");
    // Both pictures, said where, and SVG.
    for name in ["topology.svg", "connections.svg"] {
        let path = pictures.join(name);
        assert!(t.contains(&format!("wrote {}", path.display())), "{t}");
        let svg = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{name}");
    }
}

/// SIGTERM (what service managers and containers send) stops the node as Ctrl-C does:
/// a clean shutdown that saves the peers file, and a successful exit.
#[cfg(unix)]
#[test]
fn sigterm_shuts_the_node_down_cleanly_and_saves_the_peers_file() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    // A safety net for each wait; every wait ends on the line or exit it waits for.
    const LIMIT: Duration = Duration::from_secs(30);
    let dir = temp_dir("sigterm");
    let peers_file = dir.join("peers.json");
    let mut node = Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args([
            "node",
            "--net-addr",
            "127.0.0.1:0",
            "--expected-pow",
            "0",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = node.id();
    // Stops the node for good if the test fails half-way.
    let kill = |signal: &str| {
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
    };
    // Its log, line by line, as it comes.
    let (lines_tx, lines) = mpsc::channel();
    let stderr = node.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let started = loop {
        match lines.recv_timeout(LIMIT) {
            Ok(line) => {
                let up = line.contains("node started");
                log.push(line);
                if up {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !started {
        kill("-KILL");
        panic!("the node did not start:\n{}", log.join("\n"));
    }
    // Nothing saved yet: the save below is the shutdown's.
    assert!(!peers_file.exists());
    assert!(kill("-TERM").success());
    let (exit_tx, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(node.wait());
    });
    let status = match exit.recv_timeout(LIMIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            kill("-KILL");
            panic!("the node did not exit after SIGTERM:\n{}", log.join("\n"));
        }
    };
    // The rest of its log (the pipe closes with the process).
    log.extend(lines.iter());
    let log = log.join("\n");
    assert!(status.success(), "{status}:\n{log}");
    for expected in ["SIGTERM received", "shutting down", "stopped"] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    let text = std::fs::read_to_string(&peers_file).unwrap();
    let records =
        peerpool_proto::pool::peers_file::parse_peers_file::<serde_json::Value>(&text).unwrap();
    assert!(records.is_empty(), "{text}");
}

/// `GET path` on `addr`; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn node_serves_metrics_and_the_rpc_where_asked() {
    let dir = temp_dir("metrics-node");
    let mut node = Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args([
            "node",
            "--net-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
            "--expected-pow",
            "2",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The node logs where it serves each.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(node.stderr.take().unwrap()));
    let (mut metrics, mut rpc) = (None, None);
    let addr_of = |l: &str| {
        l.split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
    };
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("metrics at http://") {
            metrics = addr_of(&line);
        } else if line.contains("RPC at http://") {
            rpc = addr_of(&line);
        }
        if metrics.is_some() && rpc.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let (metrics, rpc) = (metrics.expect("metrics address"), rpc.expect("RPC address"));
    let body = http_get(&metrics, "/metrics");
    let self_id = http_get(&rpc, "/network/self");
    // The admin client against it.
    let endpoint = format!("http://{rpc}");
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        peerpool(&all)
    };
    let stat = admin(&["stat"]);
    let conns = admin(&["--json", "connections"]);
    let trust = admin(&["trust", "127.0.0.50:9732"]);
    let points = admin(&["points"]);
    let refused = admin(&["connect", "127.0.0.1:1", "--timeout", "2"]);
    let greylist = admin(&["--json", "greylist"]);
    let _ = node.kill();
    let _ = node.wait();
    let unreachable = admin(&["stat"]);
    assert_eq!(stat.status.code(), Some(0), "{}", text(&stat));
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("total sent"),
        "{}",
        text(&stat)
    );
    assert_eq!(
        String::from_utf8_lossy(&conns.stdout).trim(),
        "[]",
        "{}",
        text(&conns)
    );
    assert_eq!(trust.status.code(), Some(0), "{}", text(&trust));
    assert!(
        String::from_utf8_lossy(&points.stdout).contains("127.0.0.50:9732"),
        "{}",
        text(&points)
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("connection_failed"),
        "{}",
        text(&refused)
    );
    assert_eq!(unreachable.status.code(), Some(2), "{}", text(&unreachable));
    let g: serde_json::Value = serde_json::from_slice(&greylist.stdout).unwrap();
    assert_eq!(g["peers"], serde_json::json!([]), "{}", text(&greylist));
    assert!(g["ips"]["ips"].is_array(), "{}", text(&greylist));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("peerpool_p2p_connections_active 0"), "{body}");
    assert!(self_id.starts_with("HTTP/1.1 200"), "{self_id}");
    assert!(self_id.contains("\"id"), "a peer id: {self_id}");
}

#[test]
fn config_init_show_and_a_bad_value_at_start() {
    let dir = temp_dir("config");
    let file = dir.join("peerpool.toml");
    let file_s = file.to_str().unwrap();
    let out = peerpool(&["config", "init", "--output", file_s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = peerpool(&["config", "init", "--output", file_s]);
    assert_ne!(again.status.code(), Some(0), "never overwrites");
    let out = peerpool(&["config", "show", "--config", file_s, "--connections", "8"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["p2p"]["limits"]["max-connections"], 12,
        "the flag wins"
    );
    assert_eq!(shown["p2p"]["limits"]["connection-timeout"], 10);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"p2p": {"limits": {"backlog": 0}}}"#).unwrap();
    let out = peerpool(&[
        "node",
        "--config",
        bad.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("p2p.limits.backlog = 0: an integer in [1, 65535]"),
        "{}",
        text(&out)
    );
}
