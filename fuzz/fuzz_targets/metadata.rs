//! Connection metadata: `decode` accepts exactly two bytes and what it returns encodes
//! and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::connection_message::ConnectionMetadata;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ConnectionMetadata::decode(data) {
        assert_eq!(data.len(), 2);
        let bytes = m.encode();
        assert_eq!(ConnectionMetadata::decode(&bytes), Ok(m));
        assert_eq!(
            bytes.iter().map(|b| *b != 0).collect::<Vec<_>>(),
            data.iter().map(|b| *b != 0).collect::<Vec<_>>()
        );
    }
});
