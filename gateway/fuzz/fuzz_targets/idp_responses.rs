//! What identity providers answer: RFC 7662 introspection and RFC 6749 token responses.
#![no_main]

use gateway::auth::introspection::client::parse;
use gateway::token::grant::parse_success;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = parse(body);
    if let Ok(t) = parse_success(body, 0) {
        assert!(!t.access_token.expose().is_empty());
    }
});
