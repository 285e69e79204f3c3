//! The P2P envelope and each message (Disconnect, Bootstrap, Advertise, Swap_request,
//! Swap_ack, application messages): a whole envelope (`decode`) and a body (`decode_body`)
//! decode to an error or to a message that encodes and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::message::{P2pMessage, RawMessage};

type Msg = P2pMessage<RawMessage>;

fn round_trip(m: &Msg) {
    let bytes = m.to_bytes();
    assert_eq!(Msg::decode(&bytes).as_ref(), Ok(m), "{bytes:?}");
    let _ = m.kind();
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        round_trip(&m);
    }
    if let Ok(m) = Msg::decode_body(data) {
        round_trip(&m);
    }
});
