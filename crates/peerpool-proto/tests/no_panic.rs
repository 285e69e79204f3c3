//! Arbitrary bytes from the network never panic a decoder or the handshake machine.
#![allow(clippy::unwrap_used)]

use peerpool_proto::connection_message::{
    AckMessage, ConnectionMessage, ConnectionMetadata, SupportedVersions,
};
use peerpool_proto::crypto::{ChannelKey, Nonce};
use peerpool_proto::discovery::{DiscoveryMessage, DISCOVERY_MAGIC};
use peerpool_proto::framing::{ChunkOpener, MessageDecoder};
use peerpool_proto::handshake::{Direction, Handshake, HandshakeConfig};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::{P2pMessage, RawMessage};
use proptest::prelude::*;
use rand::SeedableRng;
use std::sync::Arc;

fn handshake(direction: Direction) -> Handshake {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let target = PowTarget::new(0.0).unwrap();
    let config = HandshakeConfig {
        identity: Arc::new(Identity::generate(&target, &mut rng)),
        versions: SupportedVersions::octez("TEZOS"),
        listening_port: Some(1),
        metadata: ConnectionMetadata::default(),
        pow_target: target,
        chunk_payload_size: 65517,
    };
    Handshake::new(config, direction, [0; 24]).unwrap()
}

proptest! {
    #[test]
    fn decoders_return_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ConnectionMessage::decode_body(&bytes);
        let _ = ConnectionMetadata::decode(&bytes);
        let _ = AckMessage::decode(&bytes);
        let _ = P2pMessage::<RawMessage>::decode(&bytes);
        let _ = P2pMessage::<RawMessage>::decode_body(&bytes);
    }

    #[test]
    fn discovery_decode_returns_errors_not_panics(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Past the magic check, so the length and field reads are exercised too.
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|tail| {
                let mut v = DISCOVERY_MAGIC.to_vec();
                v.extend(tail);
                v
            }),
        ]
    ) {
        if let Ok(msg) = DiscoveryMessage::decode(&bytes) {
            prop_assert_eq!(msg.encode().to_vec(), bytes);
        }
    }

    #[test]
    fn stream_decoders_survive_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
        let mut opener = ChunkOpener::new(ChannelKey([1; 32]), Nonce([0; 24]));
        let mut buf = bytes.clone();
        let _ = opener.open_buffered(&mut buf);
        let mut dec = MessageDecoder::new(1 << 20);
        let cut = cut.min(bytes.len());
        dec.push(&bytes[..cut]);
        while let Ok(Some(body)) = dec.next_message() {
            let _ = P2pMessage::<RawMessage>::decode_body(body);
        }
        dec.push(&bytes[cut..]);
        while let Ok(Some(_)) = dec.next_message() {}
    }

    #[test]
    fn handshake_survives_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..400), incoming in any::<bool>()) {
        let mut hs = handshake(if incoming { Direction::Incoming } else { Direction::Outgoing });
        let _ = hs.poll_transmit();
        let _ = hs.handle_input(&bytes);
        while hs.poll_event().is_some() {}
    }

    #[test]
    fn handshake_after_a_valid_connection_message_survives_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut a = handshake(Direction::Outgoing);
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let target = PowTarget::new(0.0).unwrap();
        let config = HandshakeConfig {
            identity: Arc::new(Identity::generate(&target, &mut rng)),
            versions: SupportedVersions::octez("TEZOS"),
            listening_port: None,
            metadata: ConnectionMetadata::default(),
            pow_target: target,
            chunk_payload_size: 65517,
        };
        let mut b = Handshake::new(config, Direction::Incoming, [9; 24]).unwrap();
        let frame = b.poll_transmit().unwrap();
        prop_assert!(a.handle_input(&frame).is_ok());
        let _ = a.handle_input(&garbage);
    }
}
