//! Ack / Nack / Nack_v0: `decode` returns an error or a message that survives an encode
//! and a decode unchanged (not always to the same bytes: a point's text is written in
//! its canonical form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::connection_message::AckMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AckMessage::decode(data) {
        let bytes = m.encode();
        assert_eq!(AckMessage::decode(&bytes), Ok(m));
    }
});
