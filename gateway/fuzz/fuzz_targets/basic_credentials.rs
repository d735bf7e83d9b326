//! `Authorization: Basic` as callers send it: any bytes, parsed within the default limits.
#![no_main]

use gateway::auth::client_credentials::{Presented, caller_credentials};
use gateway::auth::limits::CallerLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let limits = CallerLimits::default();
    if let Presented::Valid(id, secret) = caller_credentials(&headers, &limits) {
        // Whatever is accepted is within the limits.
        assert!(limits.client_credentials_ok(&id, &secret));
        assert!(!id.is_empty() && !id.contains(':'));
    }
});
