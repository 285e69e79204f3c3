//! Point text (`a.b.c.d:port`, `[v6]:port`, with `#peer_id`), its wire form and its JSON
//! form, and peer id text: a parse gives an error or a value whose text parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::encoding::Reader;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::{parse_point_with_peer_id, Point, MAX_POINT_TEXT_LEN};

fn check(p: Point) {
    let text = p.to_string();
    assert!(text.len() <= MAX_POINT_TEXT_LEN, "{text}");
    assert_eq!(text.parse::<Point>(), Ok(p));
    let mut wire = Vec::new();
    p.encode(&mut wire);
    assert_eq!(Point::decode(&mut Reader::new(&wire)).ok(), Some(p));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok((p, id)) = parse_point_with_peer_id(&text) {
        check(p);
        if let Some(id) = id {
            assert_eq!(id.to_b58check().parse::<PeerId>(), Ok(id));
        }
    }
    if let Ok(id) = text.parse::<PeerId>() {
        assert_eq!(id.to_b58check().parse::<PeerId>(), Ok(id));
    }
    let mut r = Reader::new(data);
    while let Ok(p) = Point::decode(&mut r) {
        check(p);
    }
    if let Ok(p) = serde_json::from_slice::<Point>(data) {
        check(p);
    }
});
