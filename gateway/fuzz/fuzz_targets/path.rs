//! Request paths: whatever a caller sends, the canonical form has no dot or empty segment and
//! is a fixed point, so the upstream cannot resolve it to another path.
#![no_main]

use gateway::proxy::path::{PathPolicy, canonicalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let policy = PathPolicy::default();
    if let Ok(c) = canonicalize(raw, &policy) {
        assert!(c.path.starts_with('/'));
        assert!(!c.path.contains("//"), "{raw:?} -> {:?}", c.path);
        for segment in c.path.split('/') {
            assert!(segment != "." && segment != "..", "{raw:?} -> {:?}", c.path);
        }
        let again = canonicalize(&c.path, &policy).expect("a canonical path stays valid");
        assert_eq!(again.path, c.path);
        assert_eq!(again.encoded, c.encoded);
        // The path http accepts as a request target.
        assert!(http::uri::PathAndQuery::try_from(c.path.as_ref()).is_ok());
    }
    let _ = canonicalize(
        raw,
        &PathPolicy {
            normalize: false,
            merge_slashes: false,
        },
    );
});
