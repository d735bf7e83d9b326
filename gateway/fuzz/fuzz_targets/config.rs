//! The configuration loader: any text is a configuration or a list of errors with key paths.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::from_yaml(text) {
        assert!(!e.to_string().is_empty());
    }
});
