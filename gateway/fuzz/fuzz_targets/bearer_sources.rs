//! Where a caller's bearer token is looked for: a target and header lines, split from the input.
//! At most one token is ever found, and it is within the limits.
#![no_main]

use gateway::auth::bearer::{Found, find};
use gateway::auth::limits::CallerLimits;
use gateway::auth::bearer::TokenSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(target) = lines.next() else { return };
    let Ok(target) = std::str::from_utf8(target) else { return };
    let mut b = http::Request::builder().uri(format!("/p?{target}"));
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        b = b.header(name, value);
    }
    let Ok(req) = b.body(()) else { return };
    let (parts, ()) = req.into_parts();
    let source = TokenSource {
        headers: vec![
            (http::header::AUTHORIZATION, Some("Bearer".into())),
            (http::HeaderName::from_static("x-tokengate-auth"), None),
        ],
        query: Some("access_token".into()),
        cookie: Some("tg".into()),
    };
    let limits = CallerLimits::default();
    if let Found::Token(t, _) = find(&source, &parts, &limits) {
        assert!(limits.token_ok(&t));
    }
});
