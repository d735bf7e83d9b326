//! Secret references: `env:NAME`, `file:/path`, or (discouraged) an inline value.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `<redacted>`, so a secret that
//! ends up in a log line or an error message by accident still leaks nothing.

use std::fmt;

/// A resolved secret value. Its contents are reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (e.g. from a caller's `Authorization` header).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Callers must not log or format what they get.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Resolves a secret reference. The error never contains the secret, only where it was looked for.
pub fn resolve(reference: &str) -> Result<Secret, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            Ok(_) => Err(format!("environment variable {name} is empty")),
            Err(_) => Err(format!("environment variable {name} is not set")),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return match std::fs::read_to_string(path) {
            // A trailing newline is an artefact of how files are written, not part of the secret.
            Ok(v) => {
                let v = v.trim_end_matches(['\n', '\r']);
                if v.is_empty() {
                    Err(format!("file {path} is empty"))
                } else {
                    Ok(Secret(v.to_owned()))
                }
            }
            Err(e) => Err(format!("cannot read file {path}: {}", e.kind())),
        };
    }
    if reference.is_empty() {
        return Err("is empty".into());
    }
    Ok(Secret(reference.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn file_reference_strips_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("tg-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cr3t\n").unwrap();
        let s = resolve(&format!("file:{}", dir.display())).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(s.expose(), "s3cr3t");
    }

    #[test]
    fn missing_env_names_the_variable_not_a_value() {
        let err = resolve("env:TOKENGATE_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            err,
            "environment variable TOKENGATE_TEST_SURELY_UNSET is not set"
        );
    }
}
