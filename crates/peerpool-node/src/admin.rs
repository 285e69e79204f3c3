//! `peerpool admin`: the admin client (issue 10 §5). It talks to a node's RPC
//! (`peerpool node --rpc-addr`, or the sandbox's node 1) over HTTP and prints a table, or
//! the RPC's JSON with `--json`.

use clap::{Args, Subcommand};
use comfy_table::Table;
use peerpool_proto::identity::PeerId;
use serde_json::Value;
use std::process::ExitCode;

/// `peerpool admin` options.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The node's RPC.
    #[arg(long, default_value = "http://127.0.0.1:8732")]
    pub endpoint: String,
    /// Print the RPC's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Global traffic (`/network/stat`).
    Stat,
    /// Running connections.
    Connections,
    /// Known peers, optionally only those in a state (accepted, running, disconnected).
    Peers {
        /// State filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Known points, optionally only those in a state (requested, accepted, running,
    /// disconnected).
    Points {
        /// State filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// The greylisted peer ids and addresses.
    Greylist,
    /// Clears every greylist and blacklist (`DELETE /network/greylist`).
    GreylistClear,
    /// Bans a peer id or a point's address.
    Ban {
        /// A peer id (`id…`) or a point (`addr:port`).
        target: String,
    },
    /// Trusts a peer id or a point.
    Trust {
        /// A peer id (`id…`) or a point (`addr:port`).
        target: String,
    },
    /// Unbans and untrusts a peer id or a point.
    Open {
        /// A peer id (`id…`) or a point (`addr:port`).
        target: String,
    },
    /// Connects to a point.
    Connect {
        /// `addr:port`.
        point: String,
        /// Seconds to wait for the connection.
        #[arg(long, default_value_t = 10)]
        timeout: u32,
    },
    /// Closes the connection with a peer.
    Disconnect {
        /// The peer id.
        peer: String,
    },
}

/// What went wrong talking to the node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("{status} {kind}: {message}")]
    Rpc {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("unexpected answer: {0}")]
    Answer(String),
}

/// `GET path` on the RPC at `endpoint` (`http://host:port`), as JSON.
///
/// Errors: [`AdminError`] (unreachable, an RPC error, an answer that is not JSON).
pub(crate) fn get(endpoint: &str, path: &str) -> Result<Value, AdminError> {
    call(endpoint, "GET", path, None)
}

fn call(
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Value, AdminError> {
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    let unreachable = |e: ureq::Error| AdminError::Unreachable(url.clone(), e.to_string());
    let response = match (method, body) {
        ("GET", _) => ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
        ("DELETE", _) => ureq::delete(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
        ("PUT", _) => ureq::put(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty(),
        (_, body) => ureq::patch(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "application/json")
            .send(body.unwrap_or_default()),
    }
    .map_err(unreachable)?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| AdminError::Answer(e.to_string()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| AdminError::Answer(format!("{e}: {text}")))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(AdminError::Rpc {
            status,
            kind: value["kind"].as_str().unwrap_or("error").to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// The path of `target`: a peer id goes to `/network/peers/…`, anything else is a point.
fn acl_path(target: &str) -> String {
    if target.parse::<PeerId>().is_ok() {
        format!("/network/peers/{target}")
    } else {
        format!("/network/points/{target}")
    }
}

fn render(command: &AdminCommand, v: &Value) -> String {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match command {
        AdminCommand::Stat => table(
            &[
                "total sent (B)",
                "total received (B)",
                "inflow (B/s)",
                "outflow (B/s)",
            ],
            vec![vec![
                text(&v["total_sent"]),
                text(&v["total_recv"]),
                text(&v["current_inflow"]),
                text(&v["current_outflow"]),
            ]],
        ),
        AdminCommand::Connections => table(
            &["peer", "direction", "address", "port", "chain", "private"],
            list(v)
                .iter()
                .map(|c| {
                    vec![
                        text(&c["peer_id"]),
                        if c["incoming"] == true { "in" } else { "out" }.to_owned(),
                        text(&c["id_point"]["addr"]),
                        text(&c["id_point"]["port"]),
                        text(&c["announced_version"]["chain_name"]),
                        text(&c["private"]),
                    ]
                })
                .collect(),
        ),
        AdminCommand::Peers { .. } => table(
            &[
                "peer",
                "state",
                "trusted",
                "reachable at",
                "received (B)",
                "sent (B)",
            ],
            list(v)
                .iter()
                .map(|e| {
                    let i = &e[1];
                    vec![
                        text(&e[0]),
                        text(&i["state"]),
                        text(&i["trusted"]),
                        text(&i["reachable_at"]["addr"]),
                        text(&i["stat"]["total_recv"]),
                        text(&i["stat"]["total_sent"]),
                    ]
                })
                .collect(),
        ),
        AdminCommand::Points { .. } => table(
            &["point", "state", "peer", "trusted", "last miss"],
            list(v)
                .iter()
                .map(|e| {
                    let i = &e[1];
                    vec![
                        text(&e[0]),
                        text(&i["state"]["event_kind"]),
                        text(&i["p2p_peer_id"]),
                        text(&i["trusted"]),
                        text(&i["last_miss"]),
                    ]
                })
                .collect(),
        ),
        AdminCommand::Greylist => {
            let mut rows: Vec<Vec<String>> = list(&v["peers"])
                .iter()
                .map(|p| vec!["peer".to_owned(), text(p)])
                .collect();
            rows.extend(
                list(&v["ips"]["ips"])
                    .iter()
                    .map(|ip| vec!["address".to_owned(), text(ip)]),
            );
            let mut out = table(&["kind", "greylisted"], rows);
            if let Some(since) = v["ips"]["not_reliable_since"].as_str() {
                out.push_str(&format!("\n(the address list is incomplete since {since})"));
            }
            out
        }
        _ => "done".to_owned(),
    }
}

/// Runs an admin command; exit 0 on success, 1 when the node answered an error, 2 when it
/// cannot be reached or answered something unexpected.
pub fn run(args: AdminArgs) -> ExitCode {
    let e = &args.endpoint;
    let r = match &args.command {
        AdminCommand::Stat => call(e, "GET", "/network/stat", None),
        AdminCommand::Connections => call(e, "GET", "/network/connections", None),
        AdminCommand::Peers { filter } => {
            let q = filter
                .as_ref()
                .map(|f| format!("?filter={f}"))
                .unwrap_or_default();
            call(e, "GET", &format!("/network/peers{q}"), None)
        }
        AdminCommand::Points { filter } => {
            let q = filter
                .as_ref()
                .map(|f| format!("?filter={f}"))
                .unwrap_or_default();
            call(e, "GET", &format!("/network/points{q}"), None)
        }
        AdminCommand::Greylist => {
            call(e, "GET", "/network/greylist/peers", None).and_then(|peers| {
                let ips = call(e, "GET", "/network/greylist/ips", None)?;
                Ok(serde_json::json!({ "peers": peers, "ips": ips }))
            })
        }
        AdminCommand::GreylistClear => call(e, "DELETE", "/network/greylist", None),
        AdminCommand::Ban { target } => call(
            e,
            "PATCH",
            &acl_path(target),
            Some(r#"{"acl":"ban"}"#.into()),
        ),
        AdminCommand::Trust { target } => call(
            e,
            "PATCH",
            &acl_path(target),
            Some(r#"{"acl":"trust"}"#.into()),
        ),
        AdminCommand::Open { target } => call(
            e,
            "PATCH",
            &acl_path(target),
            Some(r#"{"acl":"open"}"#.into()),
        ),
        AdminCommand::Connect { point, timeout } => call(
            e,
            "PUT",
            &format!("/network/points/{point}?timeout={timeout}"),
            None,
        ),
        AdminCommand::Disconnect { peer } => {
            call(e, "DELETE", &format!("/network/connections/{peer}"), None)
        }
    };
    match r {
        Ok(v) if args.json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", render(&args.command, &v));
            ExitCode::SUCCESS
        }
        Err(err @ AdminError::Rpc { .. }) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
