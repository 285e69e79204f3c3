//! `peerpool node` processes for the binary's tests: started with their log read line by
//! line as it comes, waited on by log line (never by sleeping), killed when dropped.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The safety net of every wait: each ends on the line it waits for, or fails here.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A fresh directory under the target's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `s` without its ANSI colour sequences (the log is coloured even into a pipe).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the field `name=value` in a log line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    line[start..].split_whitespace().next()
}

/// A running `peerpool node`.
#[derive(Debug)]
pub struct NodeProcess {
    /// For messages.
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, colours removed.
    pub log: Vec<String>,
}

impl NodeProcess {
    /// Starts `peerpool node ARGS` with `RUST_LOG=rust_log`; with `ulimit`, under that
    /// open-file limit (`sh -c 'ulimit ULIMIT && exec peerpool …'`: `-n 63` sets the soft
    /// and hard limits, `-Sn 100` the soft one).
    pub fn start(name: &str, args: &[&str], rust_log: &str, ulimit: Option<&str>) -> Self {
        let exe = env!("CARGO_BIN_EXE_peerpool");
        let mut command = match ulimit {
            None => Command::new(exe),
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit {limit} && exec \"$0\" \"$@\""), exe]);
                c
            }
        };
        let mut child = command
            .arg("node")
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(strip_ansi(&line)).is_err() {
                    return;
                }
            }
        });
        NodeProcess {
            name: name.to_owned(),
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for the next log line for which `pred` holds and returns it; fails with the
    /// log if the node exits or [`LIMIT`] passes first.
    pub fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{}: still waiting for {what} ({e:?}); its log:\n{}",
                    self.name,
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits for "node started"; returns the node's peer id and listening address.
    pub fn started(&mut self) -> (String, String) {
        let line = self.wait_for("start", |l| l.contains("node started"));
        let peer_id = field(&line, "peer_id").unwrap().to_owned();
        let listen = field(&line, "listen")
            .and_then(|l| l.strip_prefix("Some("))
            .and_then(|l| l.strip_suffix(')'))
            .unwrap()
            .to_owned();
        (peer_id, listen)
    }

    /// Waits for the RPC's address in the log.
    pub fn rpc_addr(&mut self) -> String {
        let line = self.wait_for("RPC address", |l| l.contains("RPC at http://"));
        let rest = line.split("http://").nth(1).unwrap();
        rest.split('/').next().unwrap().to_owned()
    }

    /// Waits until a connection with each of `peer_ids` is established, in any order.
    pub fn connected_to(&mut self, peer_ids: &[&str]) {
        let mut missing: Vec<&str> = peer_ids.to_vec();
        while !missing.is_empty() {
            let line = self.wait_for(&format!("connections with {missing:?}"), |l| {
                l.contains("connection established")
                    && field(l, "peer_id").is_some_and(|p| missing.contains(&p))
            });
            missing.retain(|p| field(&line, "peer_id") != Some(*p));
        }
    }

    /// Kills the process with SIGKILL (no shutdown, no last save) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Reads the rest of the log (after the process ended) into [`NodeProcess::log`].
    pub fn drain_log(&mut self) {
        self.log.extend(self.lines.try_iter());
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on `addr`: the response's body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// The peer ids that the peers file at `path` holds with at least one point (the peers a
/// restarted node can dial again), sorted.
pub fn dialable_peers_in_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let records =
        peerpool_proto::pool::peers_file::parse_peers_file::<serde_json::Value>(&text).unwrap();
    let mut ids: Vec<String> = records
        .iter()
        .filter(|r| !r.points.is_empty())
        .map(|r| r.peer_id.to_string())
        .collect();
    ids.sort();
    ids
}
