//! `peerpool`: identity tool, node, probe and local sandbox network.
//!
//! # Layout
//!
//! - [`identity_cmd`]: `peerpool identity generate|show`, and identity loading for the node.
//! - [`limits`]: the open-file limit, raised at start, and the connections it allows.
//! - [`metadata`]: the binary's peer metadata (octez's, as opaque JSON).
//! - [`node_cmd`]: `peerpool node`, a node on the Tezos P2P network.
//! - [`probe`]: `peerpool probe ADDR:PORT`, a handshake check for operators.
//! - [`sandbox`]: `peerpool sandbox`, N nodes on 127.0.0.x in one process.

mod admin;
mod config_cmd;
mod config_file;
mod identity_cmd;
mod limits;
mod metadata;
mod metrics;
mod node_cmd;
mod pictures;
mod probe;
mod rpc;
mod sandbox;
mod soak_cmd;
#[cfg(test)]
mod test_support;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A peer-to-peer node speaking the Tezos (octez) P2P protocol.
#[derive(Debug, Parser)]
#[command(name = "peerpool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show the node identity (key pair and proof-of-work stamp).
    Identity {
        #[command(subcommand)]
        command: identity_cmd::IdentityCommand,
    },
    /// Run a node.
    Node(node_cmd::NodeArgs),
    /// Handshake with a remote node and report what it said.
    Probe(probe::ProbeArgs),
    /// Run a local network of nodes on 127.0.0.1 … 127.0.0.N.
    Sandbox(sandbox::SandboxArgs),
    /// Query and control a running node through its RPC (`node --rpc-addr`).
    Admin(admin::AdminArgs),
    /// Run a network of node processes for minutes with churn and traffic, checking every
    /// node's invariants every second (a soak test).
    Soak(soak_cmd::SoakArgs),
    /// Write a default configuration file, or show the effective configuration.
    Config {
        #[command(subcommand)]
        command: config_cmd::ConfigCommand,
    },
}

/// The default data directory: `$HOME/.peerpool-node` (like octez's `~/.tezos-node`).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".peerpool-node")
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything opens a file or a socket; the node logs the outcome.
    let nofile = limits::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Identity { command } => identity_cmd::run(command),
        Command::Admin(args) => admin::run(args),
        Command::Config { command } => config_cmd::run(command),
        Command::Soak(args) => soak_cmd::run(args),
        Command::Node(args) => {
            init_tracing("info");
            runtime.block_on(node_cmd::run(args, nofile))
        }
        Command::Probe(args) => {
            init_tracing("warn");
            runtime.block_on(probe::run(args))
        }
        Command::Sandbox(args) => {
            init_tracing("warn");
            runtime.block_on(sandbox::run(args))
        }
    }
}
