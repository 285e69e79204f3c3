//! `peers.json`, octez's peers file (BEHAVIOUR.md §4.6), as pure functions over text.
//!
//! The file is a JSON list of peer records in octez's format. peerpool adds one field that
//! octez's format does not have, `points` (the points where this peer was seen, with
//! `trusted`, `known_public`, `expected_peer_id` and their history), so that points and
//! `known_public` survive a restart (§13.2). Points never tied to a peer id (learned from
//! Advertise but never connected) are not saved. An octez-written file has no `points`
//! and loads as is. Writing the file atomically is the runtime's job
//! (`peerpool::peers_file`).
//!
//! Dates are RFC 3339 text, or an integer of seconds since 1970 when read (as octez's
//! decoder allows). RFC 3339 cannot write a year past 9999, so a date read past
//! [`Time::MAX_RFC3339`] (an integer past it, or a text whose offset carries it into the
//! year 10000) is clamped to [`Time::MAX_RFC3339`], in that one field: refusing it would
//! lose the whole file, and keeping it would save a date that the next load refuses. A
//! rule for every field: whatever loads saves to text that loads again, to the same
//! records. A date before 1970 is still an error.

use super::peer_state::{IdPoint, PeerEvent};
use super::time::{clamped, Time};
use crate::identity::PeerId;
use crate::point::Point;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One element of the file: a peer, its metadata and history (octez fields) plus the
/// points it was seen at (peerpool field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord<M> {
    /// The peer id, base58 `id…`.
    pub peer_id: PeerId,
    /// When the peer was first known; RFC 3339 (an integer of seconds is also read; a
    /// date past [`Time::MAX_RFC3339`] is read as it).
    #[serde(deserialize_with = "clamped::time")]
    pub created: Time,
    /// Whether the peer is trusted. Absent means `false`.
    #[serde(default)]
    pub trusted: bool,
    /// The application's metadata, opaque to the pool.
    pub peer_metadata: M,
    /// The peer's event ring, oldest first. Absent means empty.
    #[serde(default)]
    pub events: Vec<PeerEvent>,
    /// `[{"addr", "port"?}, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failed_connection: Option<(IdPoint, Time)>,
    /// `[{"addr", "port"?}, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_rejected_connection: Option<(IdPoint, Time)>,
    /// `[{"addr", "port"?}, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_established_connection: Option<(IdPoint, Time)>,
    /// `[{"addr", "port"?}, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_disconnection: Option<(IdPoint, Time)>,
    /// peerpool extension: the points this peer was seen at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<PointRecord>,
}

/// A saved point (peerpool extension field `points` of a [`PeerRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    /// The point, `a.b.c.d:port` or `[v6]:port`.
    pub point: Point,
    /// Whether the point is trusted.
    #[serde(default)]
    pub trusted: bool,
    /// Whether a handshake showed the remote is not private.
    #[serde(default)]
    pub known_public: bool,
    /// The peer id the point must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_peer_id: Option<PeerId>,
    /// Last failure before the handshake.
    #[serde(
        default,
        deserialize_with = "clamped::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failed_connection: Option<Time>,
    /// `[peer_id, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_rejected_connection: Option<(PeerId, Time)>,
    /// `[peer_id, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_established_connection: Option<(PeerId, Time)>,
    /// `[peer_id, time]`.
    #[serde(
        default,
        deserialize_with = "clamped::option_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_disconnection: Option<(PeerId, Time)>,
}

/// Why a peers file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeersFileError {
    /// The text is not a JSON list of peer records.
    #[error("peers file: invalid JSON at line {line}, column {column}: {message}")]
    Invalid {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// The peer metadata could not be serialized.
    #[error("peers file: cannot serialize: {0}")]
    Serialize(String),
}

/// Parses a peers file. Empty or whitespace-only text (a missing file, `/dev/null`) is an
/// empty list. Never panics on any input.
///
/// Errors: [`PeersFileError::Invalid`] with the position of the first error.
pub fn parse_peers_file<M: DeserializeOwned>(
    text: &str,
) -> Result<Vec<PeerRecord<M>>, PeersFileError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| PeersFileError::Invalid {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Serializes `records` as a pretty-printed JSON list (trailing newline).
///
/// Errors: [`PeersFileError::Serialize`] if `M`'s `Serialize` fails.
pub fn serialize_peers_file<M: Serialize>(
    records: &[PeerRecord<M>],
) -> Result<String, PeersFileError> {
    let mut s = serde_json::to_string_pretty(records)
        .map_err(|e| PeersFileError::Serialize(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
pub(crate) mod tests {
    use super::*;
    use crate::pool::peer_state::PeerEventKind;

    /// A file shaped as octez writes it (BEHAVIOUR.md §4.6), with shell-like metadata.
    pub(crate) const OCTEZ_SAMPLE: &str = r#"[
  {
    "peer_id": "idsg2wkkDDv2cbEMK4zH49fjgyn7XT",
    "created": "2024-03-01T10:00:00Z",
    "trusted": false,
    "peer_metadata": {
      "responses": { "sent": { "branch": "3", "head": "12", "block_header": "0" },
                     "failed": { "branch": "0", "head": "0" },
                     "received": { "branch": "2", "head": "8" },
                     "unexpected": "0", "outdated": "1" },
      "requests": { "sent": { "branch": "1" }, "received": { "branch": "2" },
                    "failed": { "branch": "0" }, "scheduled": { "branch": "0" } },
      "valid_blocks": "17", "old_heads": "0",
      "prevalidator_results": { "cannot_download": "0", "cannot_parse": "0",
                                "refused_by_prefilter": "0", "refused_by_postfilter": "0",
                                "applied": "42", "branch_delayed": "0",
                                "branch_refused": "0", "refused": "0",
                                "duplicate": "0", "outdated": "0" },
      "unactivated_chains": "0", "inactive_chains": "0",
      "future_blocks_advertised": "0",
      "unadvertised": { "block": "0", "operations": "0", "protocol": "0" },
      "advertisements": { "sent": { "head": "5", "branch": "0" },
                          "received": { "head": "4", "branch": "0" } }
    },
    "events": [
      { "kind": "incoming_request", "timestamp": "2024-03-01T10:00:00Z",
        "addr": "::ffff:203.0.113.7", "port": 9732 },
      { "kind": "connection_established", "timestamp": "2024-03-01T10:00:01.25Z",
        "addr": "::ffff:203.0.113.7", "port": 9732 },
      { "kind": "external_disconnection", "timestamp": "2024-03-01T12:30:00Z",
        "addr": "::ffff:203.0.113.7", "port": 9732 }
    ],
    "last_established_connection":
      [ { "addr": "::ffff:203.0.113.7", "port": 9732 }, "2024-03-01T10:00:01.25Z" ],
    "last_disconnection":
      [ { "addr": "::ffff:203.0.113.7", "port": 9732 }, "2024-03-01T12:30:00Z" ]
  },
  {
    "peer_id": "idrMCZcDy7ht3psKxAyf5nhvhf142H",
    "created": 1709290000,
    "peer_metadata": { "valid_blocks": "0" },
    "last_rejected_connection": [ { "addr": "2001:db8::5" }, "2024-03-01T11:00:00+01:00" ]
  }
]"#;

    /// A file whose dates all lie past 9999-12-31T23:59:59Z, in every form a date can take:
    /// RFC 3339 text carried past the year by its offset, and integers of seconds.
    pub(crate) const PAST_9999_SAMPLE: &str = r#"[
  {
    "peer_id": "idsg2wkkDDv2cbEMK4zH49fjgyn7XT",
    "created": "9999-12-31T23:30:00-01:00",
    "peer_metadata": null,
    "events": [
      { "kind": "connection_established", "timestamp": 300000000000,
        "addr": "::ffff:203.0.113.7", "port": 9732 }
    ],
    "last_established_connection":
      [ { "addr": "::ffff:203.0.113.7", "port": 9732 }, "9999-12-31T23:59:59.5-00:30" ]
  },
  {
    "peer_id": "idrMCZcDy7ht3psKxAyf5nhvhf142H",
    "created": 253402300800,
    "peer_metadata": null,
    "points": [
      { "point": "203.0.113.8:9732",
        "last_failed_connection": 18446744073709551615,
        "last_disconnection": [ "idrMCZcDy7ht3psKxAyf5nhvhf142H", "9999-12-31T23:00:00-01:00" ] }
    ]
  }
]"#;

    #[test]
    fn octez_format_file_loads_as_is() {
        let recs: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(OCTEZ_SAMPLE).unwrap();
        assert_eq!(recs.len(), 2);
        let a = &recs[0];
        assert_eq!(a.peer_id.to_string(), "idsg2wkkDDv2cbEMK4zH49fjgyn7XT");
        assert_eq!(
            a.created,
            Time::parse_rfc3339("2024-03-01T10:00:00Z").unwrap()
        );
        assert_eq!(a.events.len(), 3);
        assert_eq!(a.events[2].kind, PeerEventKind::ExternalDisconnection);
        let (p, _) = a.last_disconnection.unwrap();
        assert_eq!(p.point().unwrap().to_string(), "203.0.113.7:9732");
        assert_eq!(a.peer_metadata["valid_blocks"], "17");
        assert!(a.points.is_empty());
        let b = &recs[1];
        assert!(!b.trusted && b.events.is_empty());
        assert_eq!(b.created, Time::from_secs(1_709_290_000));
        let (p, t) = b.last_rejected_connection.unwrap();
        assert_eq!(p.port, None);
        assert_eq!(t, Time::parse_rfc3339("2024-03-01T10:00:00Z").unwrap());
    }

    #[test]
    fn round_trip() {
        let mut recs: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(OCTEZ_SAMPLE).unwrap();
        let id = recs[1].peer_id;
        recs[1].points.push(PointRecord {
            point: "[2001:db8::5]:9733".parse().unwrap(),
            trusted: true,
            known_public: true,
            expected_peer_id: Some(id),
            last_failed_connection: Some(Time::from_secs(5)),
            last_rejected_connection: Some((id, Time::from_secs(6))),
            last_established_connection: None,
            last_disconnection: None,
        });
        let text = serialize_peers_file(&recs).unwrap();
        let back: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(&text).unwrap();
        assert_eq!(back, recs);
    }

    #[test]
    fn empty_text_is_an_empty_list_and_garbage_is_typed() {
        assert!(parse_peers_file::<()>("").unwrap().is_empty());
        assert!(parse_peers_file::<()>(" \n").unwrap().is_empty());
        assert!(matches!(
            parse_peers_file::<()>("{}"),
            Err(PeersFileError::Invalid { line: 1, .. })
        ));
    }

    #[test]
    fn a_file_cut_at_every_byte_never_panics() {
        let mut recs: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(OCTEZ_SAMPLE).unwrap();
        let id = recs[0].peer_id;
        recs[0].points.push(PointRecord {
            point: "203.0.113.7:9732".parse().unwrap(),
            trusted: false,
            known_public: true,
            expected_peer_id: None,
            last_failed_connection: None,
            last_rejected_connection: None,
            last_established_connection: Some((id, Time::from_secs(9))),
            last_disconnection: None,
        });
        let ours = serialize_peers_file(&recs).unwrap();
        for text in [OCTEZ_SAMPLE, ours.as_str()] {
            let mut oks = 0;
            for cut in 0..=text.len() {
                // Cut on bytes: a cut inside a UTF-8 sequence is not a &str, so use the
                // lossy conversion the runtime applies to unreadable bytes.
                let prefix = String::from_utf8_lossy(&text.as_bytes()[..cut]);
                if parse_peers_file::<serde_json::Value>(&prefix).is_ok() {
                    oks += 1;
                }
            }
            // Only the empty prefix and the whole file (± trailing whitespace) parse.
            assert!((2..=3).contains(&oks), "{oks}");
        }
    }

    #[test]
    fn dates_past_9999_are_clamped_and_save_to_text_that_loads_again() {
        let max = Time::MAX_RFC3339;
        let recs: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(PAST_9999_SAMPLE).unwrap();
        assert_eq!(recs.len(), 2);
        let (a, b) = (&recs[0], &recs[1]);
        assert_eq!(a.created, max);
        assert_eq!(a.events[0].timestamp, max);
        assert_eq!(a.last_established_connection.unwrap().1, max);
        assert_eq!(b.created, max);
        assert_eq!(b.points[0].last_failed_connection, Some(max));
        assert_eq!(b.points[0].last_disconnection.unwrap().1, max);

        let text = serialize_peers_file(&recs).unwrap();
        assert!(!text.contains("10000-"), "{text}");
        assert_eq!(
            text.matches("\"9999-12-31T23:59:59Z\"").count(),
            6,
            "{text}"
        );
        let back: Vec<PeerRecord<serde_json::Value>> = parse_peers_file(&text).unwrap();
        assert_eq!(back.len(), recs.len());
        assert_eq!(back, recs);
        assert_eq!(serialize_peers_file(&back).unwrap(), text);
    }

    #[test]
    fn only_file_dates_are_clamped_and_dates_before_1970_still_fail() {
        // `Time` on its own keeps refusing what it cannot write back.
        assert!(serde_json::from_str::<Time>("\"9999-12-31T23:00:00-01:00\"").is_err());
        assert!(serde_json::from_str::<Time>("253402300800").is_err());
        for created in [
            "-1",
            "\"1969-12-31T23:59:59Z\"",
            "\"10000-01-01T00:00:00Z\"",
        ] {
            let text = format!(
                r#"[{{"peer_id": "idrMCZcDy7ht3psKxAyf5nhvhf142H", "created": {created},
                     "peer_metadata": null}}]"#
            );
            assert!(parse_peers_file::<()>(&text).is_err(), "{created}");
        }
    }
}
