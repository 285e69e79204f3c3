//! `peerpool probe ADDR:PORT`: performs the handshake with a remote node, prints what it
//! learned and how long each step took, then closes politely (Disconnect).
//!
//! Exit codes: 0 Ack; 10 connection refused or unreachable; 11 timed out; 12 Nack;
//! 13 protocol error (bad PoW, bad MAC, closed mid-handshake …); 1 local error.

use clap::Args;
use peerpool::socket::{self, SocketError};
use peerpool_proto::connection_message::{NackMotive, SupportedVersions};
use peerpool_proto::framing::MAX_CHUNK_PAYLOAD;
use peerpool_proto::handshake::{Direction, HandshakeConfig, HandshakeError};
use peerpool_proto::identity::{pow_bits, PowTarget};
use peerpool_proto::message::{P2pMessage, RawMessage};
use peerpool_proto::point::Point;
use rand::RngCore;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Exit code: the remote refused the TCP connection or was unreachable.
pub const EXIT_REFUSED: u8 = 10;
/// Exit code: the handshake did not finish in time.
pub const EXIT_TIMEOUT: u8 = 11;
/// Exit code: the remote answered Nack.
pub const EXIT_NACK: u8 = 12;
/// Exit code: the remote broke the protocol or closed during the handshake.
pub const EXIT_PROTOCOL: u8 = 13;

/// `peerpool probe` options.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The remote node, `addr:port`.
    pub point: Point,
    /// Chain name to announce.
    #[arg(long, default_value = "TEZOS_MAINNET")]
    pub chain_name: String,
    /// Proof-of-work difficulty required from the remote.
    #[arg(long, default_value_t = 26.0)]
    pub expected_pow: f64,
    /// Use the identity in this data directory (a remote demanding proof of work needs one);
    /// without it, a throw-away identity with `--identity-pow` bits is made.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Proof of work of the throw-away identity.
    #[arg(long, default_value_t = 0.0)]
    pub identity_pow: f64,
    /// Timeout for TCP connect plus the whole handshake, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    point: String,
    outcome: String,
    error: Option<String>,
    peer_id: Option<String>,
    proof_of_work_bits: Option<u32>,
    listening_port: Option<u16>,
    chain_name: Option<String>,
    distributed_db_version: Option<u16>,
    p2p_version: Option<u16>,
    disable_mempool: Option<bool>,
    private_node: Option<bool>,
    nack_motive: Option<String>,
    nack_points: Vec<String>,
    tcp_connect_ms: Option<f64>,
    connection_message_ms: Option<f64>,
    metadata_ms: Option<f64>,
    ack_ms: Option<f64>,
    total_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs the probe.
pub async fn run(args: ProbeArgs) -> ExitCode {
    let (target, own_target) = match (
        PowTarget::new(args.expected_pow),
        PowTarget::new(args.identity_pow),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let identity = match &args.data_dir {
        Some(dir) => {
            match crate::identity_cmd::load(&crate::identity_cmd::identity_path(dir), None) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => crate::identity_cmd::generate(&own_target, false),
    };
    let config = HandshakeConfig {
        identity: Arc::new(identity),
        versions: SupportedVersions::octez(args.chain_name.clone()),
        listening_port: None,
        metadata: Default::default(),
        pow_target: target,
        chunk_payload_size: MAX_CHUNK_PAYLOAD,
    };
    let mut report = Report {
        point: args.point.to_string(),
        ..Default::default()
    };
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let code = match tokio::time::timeout(timeout, probe(&args.point, config, &mut report)).await {
        Ok(code) => code,
        Err(_) => {
            report.outcome = "timeout".into();
            report.error = Some(format!("no answer within {:?}", timeout));
            EXIT_TIMEOUT
        }
    };
    print_report(&report, args.json);
    ExitCode::from(code)
}

async fn probe(point: &Point, config: HandshakeConfig, report: &mut Report) -> u8 {
    let start = Instant::now();
    let stream = match tokio::net::TcpStream::connect(point.socket_addr()).await {
        Ok(s) => s,
        Err(e) => {
            report.outcome = "refused".into();
            report.error = Some(e.to_string());
            return EXIT_REFUSED;
        }
    };
    let connected = start.elapsed();
    report.tcp_connect_ms = Some(ms(connected));
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let versions = config.versions.clone();
    let auth = match socket::authenticate(stream, config, Direction::Outgoing, nonce).await {
        Ok(a) => a,
        Err(e) => {
            report.outcome = "protocol error".into();
            report.error = Some(e.to_string());
            return EXIT_PROTOCOL;
        }
    };
    let msg = &auth.connection_message;
    report.peer_id = Some(auth.peer_id.to_string());
    report.proof_of_work_bits = Some(pow_bits(&msg.public_key, &msg.proof_of_work_stamp));
    report.listening_port = msg.port;
    report.chain_name = Some(msg.version.chain_name.clone());
    report.distributed_db_version = Some(msg.version.distributed_db_version);
    report.p2p_version = Some(msg.version.p2p_version);
    report.disable_mempool = Some(auth.metadata.disable_mempool);
    report.private_node = Some(auth.metadata.private_node);
    let offset = |d: Option<Duration>| d.map(|d| ms(d + connected));
    report.connection_message_ms = offset(auth.timings.connection_message);
    report.metadata_ms = offset(auth.timings.metadata);
    // We always answer Ack, to learn the remote's own answer.
    let version = versions
        .select(&msg.version)
        .unwrap_or_else(|_| msg.version.clone());
    let result = auth.accept(version).await;
    match result {
        Ok(mut established) => {
            report.ack_ms = offset(established.timings.ack);
            report.outcome = "ack".into();
            let mut bye = Vec::new();
            established
                .session
                .sealer
                .seal_message(&P2pMessage::<RawMessage>::Disconnect.to_bytes(), &mut bye);
            let _ = established.stream.write_all(&bye).await;
            let _ = established.stream.shutdown().await;
            report.total_ms = Some(ms(start.elapsed()));
            0
        }
        Err(SocketError::Handshake(HandshakeError::RejectedByNack { motive, points })) => {
            report.outcome = "nack".into();
            report.nack_motive = Some(motive_name(motive));
            report.nack_points = points.iter().map(|p| p.to_string()).collect();
            report.total_ms = Some(ms(start.elapsed()));
            EXIT_NACK
        }
        Err(e) => {
            report.outcome = "protocol error".into();
            report.error = Some(e.to_string());
            EXIT_PROTOCOL
        }
    }
}

fn motive_name(m: NackMotive) -> String {
    format!("{m} ({})", m.code())
}

fn print_report(r: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
        return;
    }
    println!("probe {}: {}", r.point, r.outcome);
    let line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            println!("  {k:<24} {v}");
        }
    };
    line("error", r.error.clone());
    line("peer id", r.peer_id.clone());
    line(
        "proof of work",
        r.proof_of_work_bits.map(|b| format!("{b} bits")),
    );
    line("listening port", r.listening_port.map(|p| p.to_string()));
    line("chain name", r.chain_name.clone());
    line(
        "distributed db version",
        r.distributed_db_version.map(|v| v.to_string()),
    );
    line("p2p version", r.p2p_version.map(|v| v.to_string()));
    line("disable mempool", r.disable_mempool.map(|v| v.to_string()));
    line("private node", r.private_node.map(|v| v.to_string()));
    line("nack motive", r.nack_motive.clone());
    if !r.nack_points.is_empty() {
        line("nack points", Some(r.nack_points.join(", ")));
    }
    line("tcp connect", r.tcp_connect_ms.map(|v| format!("{v} ms")));
    line(
        "connection message",
        r.connection_message_ms.map(|v| format!("{v} ms")),
    );
    line("metadata", r.metadata_ms.map(|v| format!("{v} ms")));
    line("ack", r.ack_ms.map(|v| format!("{v} ms")));
    line("total", r.total_ms.map(|v| format!("{v} ms")));
}
