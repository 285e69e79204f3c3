//! The peer metadata the binary keeps: whatever an octez shell wrote (its
//! `Peer_metadata` object), kept as opaque JSON so an octez `peers.json` loads and saves
//! unchanged. The library is generic over metadata; this type is the binary's choice.

use peerpool_proto::pool::PeerMeta;
use serde::{Deserialize, Serialize};

/// Opaque JSON peer metadata (octez's shell `Peer_metadata`), `null` for a new peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OctezPeerMetadata(pub serde_json::Value);

impl PeerMeta for OctezPeerMetadata {
    fn initial() -> Self {
        OctezPeerMetadata(serde_json::Value::Null)
    }

    /// A numeric `"score"` field if the object has one, else 1.0 (octez's shell constant).
    fn score(&self) -> f64 {
        self.0
            .get("score")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octez_metadata_round_trips_and_scores() {
        let text = r#"{"score":2.5,"responses":{"sent":{"branch":3}}}"#;
        let m: OctezPeerMetadata = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(m.score(), 2.5);
        // Written back as the same JSON value (keys may come out in another order).
        let back: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&m).unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap_or_default()
        );
        assert_ne!(back, serde_json::Value::Null);
        assert_eq!(OctezPeerMetadata::initial().score(), 1.0);
    }
}
