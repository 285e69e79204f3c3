#![allow(clippy::unwrap_used)]
//! Every vector of WIRE.md §10 (copied into `tests/data/wire.json`), checked in both
//! directions where both exist.

use peerpool_proto::connection_message::{
    AckMessage, ConnectionMessage, ConnectionMetadata, NackMotive,
};
use peerpool_proto::crypto::{
    blake2b_128, blake2b_256, ChannelKey, Nonce, NoncePair, PublicKey, SecretKey,
};
use peerpool_proto::encoding::Reader;
use peerpool_proto::framing::{ChunkOpener, ChunkSealer};
use peerpool_proto::identity::{pow_bits, Identity, PeerId, PowTarget};
use peerpool_proto::message::{P2pMessage, RawMessage};
use peerpool_proto::point::Point;
use serde_json::Value;

type Msg = P2pMessage<RawMessage>;

fn vectors() -> Value {
    serde_json::from_str(include_str!("data/wire.json")).expect("vector file is JSON")
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    h(v).try_into().expect("right length")
}

#[test]
fn blake2b_digests() {
    let v = vectors();
    for case in v["blake2b"].as_array().unwrap() {
        let input = case["input_utf8"].as_str().unwrap().as_bytes();
        let digest = match case["digest_len"].as_u64().unwrap() {
            32 => blake2b_256(&[input]).to_vec(),
            16 => blake2b_128(&[input]).to_vec(),
            other => panic!("unexpected digest length {other}"),
        };
        assert_eq!(digest, h(&case["hex"]));
    }
}

#[test]
fn nonce_derivation_both_directions() {
    let v = vectors();
    let n = &v["nonces"];
    let (sent, recv) = (h(&n["sent_msg"]), h(&n["recv_msg"]));
    for (incoming, key) in [(false, "incoming_false"), (true, "incoming_true")] {
        let pair = NoncePair::derive(&sent, &recv, incoming);
        assert_eq!(pair.local, Nonce(arr(&n[key]["local"])), "{key} local");
        assert_eq!(pair.remote, Nonce(arr(&n[key]["remote"])), "{key} remote");
    }
}

#[test]
fn nonce_increment() {
    for case in vectors()["nonce_increment"].as_array().unwrap() {
        let mut n = Nonce(arr(&case["in"]));
        n.increment();
        assert_eq!(n, Nonce(arr(&case["out"])));
    }
}

#[test]
fn channel_key_precompute() {
    let v = vectors();
    let p = &v["precompute"];
    let key = ChannelKey::derive(
        &PublicKey(arr(&p["public_key"])),
        &SecretKey(arr(&p["secret_key"])),
    )
    .unwrap();
    assert_eq!(key.0.to_vec(), h(&p["channel_key"]));
}

#[test]
fn box_afternm_seal_and_open() {
    let v = vectors();
    let b = &v["box_afternm"];
    let key = ChannelKey(arr(&b["channel_key"]));
    let nonce = Nonce(arr(&b["nonce"]));
    let sealed = key.seal(&nonce, &h(&b["plaintext"]));
    assert_eq!(sealed, h(&b["tag_then_ciphertext"]));
    assert_eq!(key.open(&nonce, &sealed).unwrap(), h(&b["plaintext"]));
}

#[test]
fn chunks_seal_and_open() {
    for case in vectors()["chunks"].as_array().unwrap() {
        let key = ChannelKey(arr(&case["channel_key"]));
        let nonce = Nonce(arr(&case["nonce"]));
        let mut out = Vec::new();
        ChunkSealer::new(key.clone(), nonce, 65517).seal_chunk(&h(&case["plaintext"]), &mut out);
        assert_eq!(out, h(&case["chunk"]), "{}", case["meaning"]);
        let mut opener = ChunkOpener::new(key, nonce);
        let (used, plain) = opener.open_buffered(&mut out).unwrap().unwrap();
        assert_eq!(plain, h(&case["plaintext"]).as_slice());
        assert_eq!(used, h(&case["chunk"]).len());
    }
}

#[test]
fn peer_ids_encode_and_decode() {
    for case in vectors()["peer_ids"].as_array().unwrap() {
        let raw: [u8; 16] = arr(&case["raw"]);
        let text = case["peer_id"].as_str().unwrap();
        if let Some(pk) = case.get("public_key") {
            assert_eq!(PeerId::of_public_key(&PublicKey(arr(pk))).0, raw);
        }
        assert_eq!(PeerId(raw).to_string(), text);
        assert_eq!(text.parse::<PeerId>().unwrap(), PeerId(raw));
    }
}

#[test]
fn identities_load_and_have_their_pow() {
    for case in vectors()["identities"].as_array().unwrap() {
        let json = serde_json::json!({
            "peer_id": case["peer_id"],
            "public_key": case["public_key"],
            "secret_key": case["secret_key"],
            "proof_of_work_stamp": case["proof_of_work_stamp"],
        })
        .to_string();
        let bits = case["pow_bits"].as_u64().unwrap() as u32;
        let at_bits = PowTarget::new(bits as f64).unwrap();
        let id = Identity::from_json(&json, Some(&at_bits)).unwrap();
        assert_eq!(id.peer_id.to_string(), case["peer_id"].as_str().unwrap());
        assert_eq!(id.pow_bits(), bits);
        // One bit more must fail, with the typed error.
        let above = PowTarget::new(bits as f64 + 1.0).unwrap();
        assert!(matches!(
            Identity::from_json(&json, Some(&above)),
            Err(peerpool_proto::identity::IdentityError::NotEnoughProofOfWork { .. })
        ));
        // And the JSON we write reads back the same.
        assert_eq!(Identity::from_json(&id.to_json(), None).unwrap(), id);
    }
}

#[test]
fn proof_of_work_checks() {
    let v = vectors();
    for case in v["proof_of_work"].as_array().unwrap() {
        let pk = PublicKey(arr(&case["public_key"]));
        let stamp: [u8; 24] = arr(&case["stamp"]);
        for f in case["passes"].as_array().unwrap() {
            assert!(PowTarget::new(f.as_f64().unwrap())
                .unwrap()
                .check(&pk, &stamp));
        }
        assert!(!PowTarget::new(pow_bits(&pk, &stamp) as f64 + 1.0)
            .unwrap()
            .check(&pk, &stamp));
    }
    // Targets: 2^(256-f) - 1 as little-endian bytes.
    for (f, _) in v["pow_targets"].as_object().unwrap() {
        let f: u32 = f.parse().unwrap();
        let le = PowTarget::new(f as f64).unwrap().to_le_bytes();
        let mut expected = [0u8; 32];
        for bit in 0..(256 - f) {
            expected[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        assert_eq!(le, expected, "target({f})");
    }
}

#[test]
fn real_connection_message_decodes_and_re_encodes() {
    for case in vectors()["connection_messages"].as_array().unwrap() {
        let body = h(&case["body"]);
        let msg = ConnectionMessage::decode_body(&body).unwrap();
        assert_eq!(msg.port, Some(case["port"].as_u64().unwrap() as u16));
        assert_eq!(msg.public_key.0.to_vec(), h(&case["public_key"]));
        assert_eq!(
            msg.proof_of_work_stamp.to_vec(),
            h(&case["proof_of_work_stamp"])
        );
        assert_eq!(msg.message_nonce.to_vec(), h(&case["message_nonce"]));
        assert_eq!(msg.version.chain_name, case["chain_name"].as_str().unwrap());
        assert_eq!(
            msg.version.distributed_db_version as u64,
            case["distributed_db_version"].as_u64().unwrap()
        );
        assert_eq!(
            msg.version.p2p_version as u64,
            case["p2p_version"].as_u64().unwrap()
        );
        assert_eq!(
            PeerId::of_public_key(&msg.public_key).to_string(),
            case["peer_id"].as_str().unwrap()
        );
        assert_eq!(
            pow_bits(&msg.public_key, &msg.proof_of_work_stamp) as u64,
            case["pow_bits"].as_u64().unwrap()
        );
        let frame = msg.encode_frame().unwrap();
        assert_eq!(&frame[..2], &(body.len() as u16).to_be_bytes());
        assert_eq!(&frame[2..], body.as_slice());
        // Extra bytes inside the frame are an error.
        let mut longer = body.clone();
        longer.push(0);
        assert!(ConnectionMessage::decode_body(&longer).is_err());
    }
}

#[test]
fn ack_and_nack() {
    for case in vectors()["ack"].as_array().unwrap() {
        let bytes = h(&case["hex"]);
        let expected = match case["value"].as_str().unwrap() {
            "Ack" => AckMessage::Ack,
            "Nack_v_0" => AckMessage::NackV0,
            "Nack" => AckMessage::Nack {
                motive: NackMotive::from_code(case["motive"].as_i64().unwrap() as i16),
                points: case["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().parse::<Point>().unwrap())
                    .collect(),
            },
            other => panic!("unknown ack value {other}"),
        };
        assert_eq!(AckMessage::decode(&bytes).unwrap(), expected);
        assert_eq!(expected.encode(), bytes);
    }
    assert_eq!(NackMotive::from_code(3), NackMotive::DeprecatedP2pVersion);
    assert_eq!(NackMotive::from_code(2), NackMotive::UnknownChainName);
}

#[test]
fn metadata_values() {
    for case in vectors()["metadata"].as_array().unwrap() {
        let m = ConnectionMetadata {
            disable_mempool: case["disable_mempool"].as_bool().unwrap(),
            private_node: case["private_node"].as_bool().unwrap(),
        };
        assert_eq!(m.encode(), h(&case["hex"]));
        assert_eq!(ConnectionMetadata::decode(&h(&case["hex"])).unwrap(), m);
    }
}

#[test]
fn p2p_messages() {
    for case in vectors()["p2p_messages"].as_array().unwrap() {
        let bytes = h(&case["hex"]);
        let point = || case["point"].as_str().unwrap().parse::<Point>().unwrap();
        let peer = || case["peer_id"].as_str().unwrap().parse::<PeerId>().unwrap();
        let expected: Msg = match case["value"].as_str().unwrap() {
            "Disconnect" => P2pMessage::Disconnect,
            "Bootstrap" => P2pMessage::Bootstrap,
            "Advertise" => P2pMessage::Advertise(
                case["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().parse().unwrap())
                    .collect(),
            ),
            "Swap_request" => P2pMessage::SwapRequest(point(), peer()),
            "Swap_ack" => P2pMessage::SwapAck(point(), peer()),
            other => panic!("unknown message {other}"),
        };
        assert_eq!(Msg::decode(&bytes).unwrap(), expected, "{}", case["value"]);
        assert_eq!(expected.to_bytes(), bytes, "{}", case["value"]);
    }
}

#[test]
fn advertise_body_from_tezedge() {
    let v = vectors();
    let case = &v["advertise_body"];
    let mut body = 0x0003u16.to_be_bytes().to_vec();
    body.extend(h(&case["hex"]));
    let expected: Vec<Point> = case["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        Msg::decode_body(&body).unwrap(),
        P2pMessage::Advertise(expected.clone())
    );
    let mut envelope = Vec::new();
    P2pMessage::<RawMessage>::Advertise(expected).encode(&mut envelope);
    assert_eq!(&envelope[6..], h(&case["hex"]).as_slice());
}

#[test]
fn swap_body_length_bound() {
    let v = vectors();
    let max = h(&v["swap_body_max"]["hex"]);
    // 47 bytes of point text pass the length check (then fail to parse as an address);
    // 48 must be refused by the length check itself.
    let mut r = Reader::new(&max);
    assert_eq!(r.string("point", 47).unwrap().len(), 47);
    assert_eq!(r.array::<16>("peer").unwrap(), [b'y'; 16]);
    let mut longer = max.clone();
    longer[3] = 0x30;
    longer.insert(4, b'x');
    assert!(matches!(
        Point::decode(&mut Reader::new(&longer)),
        Err(peerpool_proto::encoding::DecodeError::TooLong { len: 48, .. })
    ));
}

#[test]
fn rejected_envelopes() {
    for case in vectors()["rejected_envelopes"].as_array().unwrap() {
        assert!(Msg::decode(&h(&case["hex"])).is_err(), "{}", case["why"]);
    }
}
