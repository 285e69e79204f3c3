//! The encrypted chunk stream with a known key and nonce, then the message stream
//! decoder and the message decoder.
//!
//! Even first byte: the rest is a ciphertext stream (header, tag, ciphertext, …), opened
//! chunk by chunk until it ends or fails. Odd first byte: the rest is a plaintext message
//! stream, sealed here in chunks of the size the second byte gives, optionally with one
//! byte corrupted (third and fourth bytes), then opened and decoded: without corruption,
//! every chunk opens to what was sealed and the messages are those of the whole plaintext
//! decoded at once, whatever the chunk boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_fuzz::{chunk_key, chunk_nonce};
use peerpool_proto::framing::{ChunkOpener, ChunkSealer, MessageDecoder, MAX_CHUNK_PAYLOAD};
use peerpool_proto::message::{P2pMessage, RawMessage};

type Msg = P2pMessage<RawMessage>;

/// Takes every whole message out of `dec`; `false` once the stream is refused.
fn drain(dec: &mut MessageDecoder, out: &mut Vec<Result<Msg, ()>>) -> bool {
    loop {
        match dec.next_message() {
            Ok(Some(body)) => out.push(Msg::decode_body(body).map_err(|_| ())),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut opener = ChunkOpener::new(chunk_key(), chunk_nonce());
    let mut dec = MessageDecoder::new(Msg::max_len());
    let mut got = Vec::new();
    if mode % 2 == 0 {
        let mut buf = rest.to_vec();
        let mut at = 0;
        while let Ok(Some((n, plain))) = opener.open_buffered(&mut buf[at..]) {
            at += n;
            dec.push(plain);
            if !drain(&mut dec, &mut got) {
                break;
            }
        }
        return;
    }
    let [size, corrupt, where_, plain @ ..] = rest else {
        return;
    };
    let size = usize::from(*size).clamp(1, MAX_CHUNK_PAYLOAD);
    let mut sealer = ChunkSealer::new(chunk_key(), chunk_nonce(), size);
    let mut sealed = Vec::new();
    sealer.seal_message(plain, &mut sealed);
    let corrupted = *corrupt % 4 == 0 && !sealed.is_empty();
    if corrupted {
        let i = usize::from(*where_) * 7 % sealed.len();
        sealed[i] ^= corrupt | 1;
    }
    let mut pieces = plain.chunks(size);
    let mut at = 0;
    let mut ok = true;
    loop {
        match opener.open_buffered(&mut sealed[at..]) {
            Ok(Some((n, opened))) => {
                at += n;
                if !corrupted {
                    assert_eq!(Some(opened), pieces.next(), "a chunk opened to other bytes");
                }
                dec.push(opened);
                if !drain(&mut dec, &mut got) {
                    ok = false;
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => {
                assert!(corrupted, "a chunk sealed with the key did not open");
                return;
            }
        }
    }
    if corrupted {
        return;
    }
    assert!(!ok || at == sealed.len(), "sealed bytes left over");
    let mut whole = MessageDecoder::new(Msg::max_len());
    whole.push(plain);
    let mut expected = Vec::new();
    let whole_ok = drain(&mut whole, &mut expected);
    assert_eq!(ok, whole_ok);
    assert_eq!(got, expected, "messages depend on chunk boundaries");
    if ok {
        assert_eq!(dec.buffered(), whole.buffered());
    }
});
