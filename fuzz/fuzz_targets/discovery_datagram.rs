//! The 28-byte discovery datagram: `decode` returns an error or an announcement that
//! encodes to the same bytes; the sender's schedule never panics, whatever its settings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::discovery::{DiscoveryMessage, SenderSchedule, DISCOVERY_MESSAGE_LEN};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    match DiscoveryMessage::decode(data) {
        Ok(m) => assert_eq!(&m.encode()[..], data),
        Err(_) => assert!(data.len() != DISCOVERY_MESSAGE_LEN || !data.starts_with(b"DISCOMAGIC")),
    }
    if data.len() >= 13 {
        let secs = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let sends = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
        let mut s = SenderSchedule::new(Duration::new(secs, 0), sends);
        // Delays never shrink, except to restart after a wake.
        let mut last = Duration::ZERO;
        for b in data[12..].iter().take(200) {
            if b % 5 == 0 {
                s.wake();
                assert_eq!(s.next_delay(), Duration::ZERO);
                last = Duration::ZERO;
            } else {
                let d = s.next_delay();
                assert!(d >= last, "{d:?} after {last:?}");
                last = d;
            }
        }
    }
});
