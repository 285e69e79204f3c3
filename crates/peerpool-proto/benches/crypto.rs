//! Crypto and framing costs, compared in one run (docs/BENCHMARKS.md):
//!
//! - `seal_open_64k/framing`: a 64 KiB envelope through `ChunkSealer::seal_message`, then
//!   `ChunkOpener::open_buffered` + `MessageDecoder` reassembly (two chunks: 65517 + 19 bytes).
//! - `seal_open_64k/dryoc`: the same 64 KiB sealed and opened in one piece with
//!   `ChannelKey::seal_into` / `open_in_place` (the crate the library uses).
//! - `seal_open_64k/rustcrypto`: the same with RustCrypto `xsalsa20poly1305`, same
//!   `tag ‖ ciphertext` layout and the same copies.
//! - `x25519/channel_key_derive`: `ChannelKey::derive` (X25519 + HSalsa20), per second.
//!
//! Before measuring, dryoc and RustCrypto are checked to give byte-identical output.
//!
//! `cargo bench -p peerpool-proto --bench crypto`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peerpool_proto::crypto::{generate_keypair, ChannelKey, Nonce, TAG_LEN};
use peerpool_proto::framing::{ChunkOpener, ChunkSealer, MessageDecoder, MAX_CHUNK_PAYLOAD};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::hint::black_box;
use std::time::Duration;
use xsalsa20poly1305::aead::{AeadInPlace, KeyInit};
use xsalsa20poly1305::XSalsa20Poly1305;

/// Plaintext bytes per iteration: one 64 KiB message.
const MSG_LEN: usize = 64 * 1024;

/// Plaintext lengths of the dryoc = RustCrypto check (around the 16-byte tag, the 64-byte
/// Salsa20 block, one full chunk and the benchmarked message).
const CHECK_LENGTHS: [usize; 11] = [
    0,
    1,
    15,
    16,
    17,
    63,
    64,
    65,
    1000,
    MAX_CHUNK_PAYLOAD,
    MSG_LEN,
];

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(0x5eed)
}

/// `tag ‖ ciphertext` with RustCrypto, laid out exactly as `ChannelKey::seal_into`.
fn rustcrypto_seal_into(
    cipher: &XSalsa20Poly1305,
    nonce: &Nonce,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + TAG_LEN, 0);
    out.extend_from_slice(plaintext);
    let (tag, body) = out[start..].split_at_mut(TAG_LEN);
    let mac = cipher
        .encrypt_in_place_detached(xsalsa20poly1305::Nonce::from_slice(&nonce.0), b"", body)
        .unwrap();
    tag.copy_from_slice(&mac);
}

/// Opens `tag ‖ ciphertext` in place with RustCrypto, as `ChannelKey::open_in_place`.
fn rustcrypto_open_in_place<'b>(
    cipher: &XSalsa20Poly1305,
    nonce: &Nonce,
    sealed: &'b mut [u8],
) -> Option<&'b [u8]> {
    let (tag, body) = sealed.split_at_mut(TAG_LEN);
    let mac = xsalsa20poly1305::Tag::clone_from_slice(tag);
    cipher
        .decrypt_in_place_detached(
            xsalsa20poly1305::Nonce::from_slice(&nonce.0),
            b"",
            body,
            &mac,
        )
        .ok()?;
    Some(body)
}

/// The apples-to-apples check: both crates give the same bytes and open each other's.
fn check_dryoc_equals_rustcrypto() {
    let mut rng = rng();
    for len in CHECK_LENGTHS {
        let (sk_a, pk_a) = generate_keypair(&mut rng);
        let (sk_b, pk_b) = generate_keypair(&mut rng);
        let key = ChannelKey::derive(&pk_b, &sk_a).unwrap();
        assert_eq!(key, ChannelKey::derive(&pk_a, &sk_b).unwrap());
        let cipher = XSalsa20Poly1305::new(xsalsa20poly1305::Key::from_slice(&key.0));
        let mut nonce = Nonce([0; 24]);
        rng.fill_bytes(&mut nonce.0);
        let mut plaintext = vec![0u8; len];
        rng.fill_bytes(&mut plaintext);

        let mut by_dryoc = Vec::new();
        key.seal_into(&nonce, &plaintext, &mut by_dryoc);
        let mut by_rustcrypto = Vec::new();
        rustcrypto_seal_into(&cipher, &nonce, &plaintext, &mut by_rustcrypto);
        assert_eq!(by_dryoc.len(), TAG_LEN + len);
        assert_eq!(
            by_dryoc, by_rustcrypto,
            "dryoc and RustCrypto differ at length {len}"
        );

        let mut a = by_dryoc.clone();
        assert_eq!(
            rustcrypto_open_in_place(&cipher, &nonce, &mut a).unwrap(),
            &plaintext[..]
        );
        let mut b = by_rustcrypto;
        assert_eq!(key.open_in_place(&nonce, &mut b).unwrap(), &plaintext[..]);
    }
}

/// A 64 KiB envelope: `u32 N ‖ N bytes` with `4 + N = MSG_LEN`.
fn envelope(rng: &mut impl RngCore) -> Vec<u8> {
    let mut msg = vec![0u8; MSG_LEN];
    rng.fill_bytes(&mut msg[4..]);
    msg[..4].copy_from_slice(&((MSG_LEN - 4) as u32).to_be_bytes());
    msg
}

fn seal_open(c: &mut Criterion) {
    check_dryoc_equals_rustcrypto();

    let mut rng = rng();
    let (sk_a, _) = generate_keypair(&mut rng);
    let (_, pk_b) = generate_keypair(&mut rng);
    let key = ChannelKey::derive(&pk_b, &sk_a).unwrap();
    let mut nonce = Nonce([0; 24]);
    rng.fill_bytes(&mut nonce.0);
    let msg = envelope(&mut rng);

    let mut group = c.benchmark_group("seal_open_64k");
    group.throughput(Throughput::Bytes(MSG_LEN as u64));

    // (a) Chunk framing + reassembly, as a connection does it.
    {
        let mut sealer = ChunkSealer::new(key.clone(), nonce, MAX_CHUNK_PAYLOAD);
        let mut opener = ChunkOpener::new(key.clone(), nonce);
        let mut decoder = MessageDecoder::new(MSG_LEN);
        let mut wire = Vec::with_capacity(MSG_LEN + 64);
        // One round outside the timing, checked.
        sealer.seal_message(&msg, &mut wire);
        let mut at = 0;
        while let Some((used, plain)) = opener.open_buffered(&mut wire[at..]).unwrap() {
            decoder.push(plain);
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(decoder.next_message().unwrap().unwrap(), &msg[4..]);

        group.bench_function(BenchmarkId::new("framing", "2_chunks"), |b| {
            b.iter(|| {
                wire.clear();
                sealer.seal_message(black_box(&msg), &mut wire);
                let mut at = 0;
                while let Some((used, plain)) = opener.open_buffered(&mut wire[at..]).unwrap() {
                    decoder.push(plain);
                    at += used;
                }
                black_box(decoder.next_message().unwrap().unwrap().len())
            })
        });
    }

    // (b) Bare seal + open with dryoc, through the library's ChannelKey.
    {
        let mut buf = Vec::with_capacity(MSG_LEN + TAG_LEN);
        group.bench_function(BenchmarkId::new("dryoc", "bare"), |b| {
            b.iter(|| {
                buf.clear();
                key.seal_into(&nonce, black_box(&msg), &mut buf);
                black_box(key.open_in_place(&nonce, &mut buf).unwrap().len())
            })
        });
    }

    // (c) Bare seal + open with RustCrypto xsalsa20poly1305.
    {
        let cipher = XSalsa20Poly1305::new(xsalsa20poly1305::Key::from_slice(&key.0));
        let mut buf = Vec::with_capacity(MSG_LEN + TAG_LEN);
        group.bench_function(BenchmarkId::new("rustcrypto", "bare"), |b| {
            b.iter(|| {
                buf.clear();
                rustcrypto_seal_into(&cipher, &nonce, black_box(&msg), &mut buf);
                black_box(
                    rustcrypto_open_in_place(&cipher, &nonce, &mut buf)
                        .unwrap()
                        .len(),
                )
            })
        });
    }
    group.finish();
}

fn key_agreement(c: &mut Criterion) {
    let mut rng = rng();
    let (sk, _) = generate_keypair(&mut rng);
    let (_, pk) = generate_keypair(&mut rng);
    let mut group = c.benchmark_group("x25519");
    group.throughput(Throughput::Elements(1));
    group.bench_function("channel_key_derive", |b| {
        b.iter(|| ChannelKey::derive(black_box(&pk), black_box(&sk)).unwrap())
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = seal_open, key_agreement
}
criterion_main!(benches);
