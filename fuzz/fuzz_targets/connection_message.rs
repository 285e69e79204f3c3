//! The cleartext connection message: `decode_body` returns an error or a message that
//! encodes back to the same bytes; the handshake machine fed the same bytes (as a whole
//! framed message, in two pieces, in both directions) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::connection_message::{
    ConnectionMessage, ConnectionMetadata, SupportedVersions,
};
use peerpool_proto::handshake::{Direction, Handshake, HandshakeConfig};
use peerpool_proto::identity::{Identity, PowTarget};
use rand::SeedableRng;
use std::sync::{Arc, OnceLock};

fn identity() -> Arc<Identity> {
    static ID: OnceLock<Arc<Identity>> = OnceLock::new();
    ID.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let target = PowTarget::new(0.0).expect("difficulty 0 is valid");
        Arc::new(Identity::generate(&target, &mut rng))
    })
    .clone()
}

fn handshake(direction: Direction) -> Handshake {
    let config = HandshakeConfig {
        identity: identity(),
        versions: SupportedVersions::octez("TEZOS"),
        listening_port: Some(9732),
        metadata: ConnectionMetadata::default(),
        pow_target: PowTarget::new(0.0).expect("difficulty 0 is valid"),
        chunk_payload_size: 65517,
    };
    Handshake::new(config, direction, [7; 24]).expect("our own message encodes")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ConnectionMessage::decode_body(data) {
        let frame = m.encode_frame().expect("a decoded message encodes");
        assert_eq!(&frame[2..], data, "re-encoding changed the bytes");
        assert_eq!(ConnectionMessage::decode_body(&frame[2..]).as_ref(), Ok(&m));
    }
    // The bytes as the body of a framed connection message, then as a raw stream.
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(data);
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b))
        .min(framed.len());
    for direction in [Direction::Incoming, Direction::Outgoing] {
        for input in [&framed[..], data] {
            let mut hs = handshake(direction);
            let _ = hs.poll_transmit();
            if hs.handle_input(&input[..cut.min(input.len())]).is_ok() {
                let _ = hs.handle_input(&input[cut.min(input.len())..]);
            }
            while hs.poll_event().is_some() {}
            let _ = hs.poll_transmit();
        }
    }
});
