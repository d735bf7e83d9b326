//! The manifest loader: any file of tenant documents is converted or refused with errors naming
//! the file and document, in bounded time; what converts reads no secret of the gateway's host
//! and none of another namespace.
#![no_main]

use gateway::config::manifests::{Converted, ManifestSource, convert_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (mut out, mut errors) = (Converted::default(), Vec::new());
    convert_text(&ManifestSource::default(), "f.yaml", text, &mut out, &mut errors);
    if errors.is_empty() {
        let yaml = serde_yaml_ng::to_string(&serde_yaml_ng::Value::Mapping(out.middlewares))
            .unwrap_or_default();
        assert!(!yaml.contains("env:") && !yaml.contains("file:"));
    } else {
        assert!(errors.iter().all(|e| e.starts_with("f.yaml")));
    }
});
