//! `identity.json`: `from_json` returns an error or an identity whose JSON loads back to
//! it, with and without a proof-of-work requirement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpool_proto::identity::{Identity, PowTarget};

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let target = PowTarget::new(f64::from(*first) / 8.0).ok();
    let _ = Identity::from_json(text, target.as_ref());
    if let Ok(id) = Identity::from_json(text, None) {
        let json = id.to_json();
        assert_eq!(Identity::from_json(&json, None).as_ref(), Ok(&id));
        if let Some(t) = target {
            assert_eq!(id.has_pow(&t), Identity::from_json(text, Some(&t)).is_ok());
        }
    }
});
