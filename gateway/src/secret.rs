//! Secret references, parsed strictly: `env:NAME`, `file:/path`, `urn:k8s:secret:NAME:KEY` (a
//! mounted Kubernetes secret, read from `secretsDir/NAME/KEY`; `urn:k8s:secret:NS/NAME:KEY`, a
//! secret of namespace `NS`, from `secretsDir/NS/NAME/KEY`: what a manifest's own
//! `urn:k8s:secret:NAME:KEY` becomes), or an inline value where one is allowed.
//!
//! A value that looks like a reference (a scheme and a colon) but names no known scheme is an
//! error, never an inline secret: `ENV:NAME`, `urn:k8s:secrets:…` and `fiel:/x` are typos, and
//! using them as the secret itself would send the typo to an IdP or seal a fleet with it.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `<redacted>`, so a secret that
//! ends up in a log line or an error message by accident still leaks nothing. Errors name where
//! a secret was looked for, never a part of the value.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where mounted Kubernetes secrets are read from by default.
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/secrets/tokengate";

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

/// A secret reference, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// `env:NAME`.
    Env(&'a str),
    /// `file:/path`.
    File(&'a str),
    /// `urn:k8s:secret:[NS/]NAME:KEY`.
    Kubernetes {
        /// The namespace the secret belongs to, when named.
        namespace: Option<&'a str>,
        /// The secret's name.
        name: &'a str,
        /// The key within it.
        key: &'a str,
    },
    /// The value itself.
    Inline,
}

const SCHEMES: &str = "env:, file: or urn:k8s:secret:NAME:KEY";

/// Parses a secret value: a reference, or an inline value. The error never quotes the value.
pub fn parse(value: &str) -> Result<Reference<'_>, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if let Some(name) = value.strip_prefix("env:") {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        return if valid {
            Ok(Reference::Env(name))
        } else {
            Err("env: needs a variable name (letters, digits and _)".into())
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        return if path.is_empty() {
            Err("file: needs a path".into())
        } else {
            Ok(Reference::File(path))
        };
    }
    if let Some(rest) = value.strip_prefix("urn:k8s:secret:") {
        let Some((name, key)) = rest.split_once(':') else {
            return Err("urn:k8s:secret: needs NAME:KEY".into());
        };
        let (namespace, name) = match name.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, name),
        };
        if namespace.is_some_and(|ns| !dns_label(ns)) {
            return Err(
                "urn:k8s:secret: the namespace must be a Kubernetes name (lower-case letters, digits and -)"
                    .into(),
            );
        }
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        let key_ok = !key.is_empty()
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        return match (name_ok, key_ok) {
            (true, true) => Ok(Reference::Kubernetes {
                namespace,
                name,
                key,
            }),
            (false, _) => Err(
                "urn:k8s:secret: the secret's name must be a Kubernetes name (lower-case letters, digits, - and .)"
                    .into(),
            ),
            (true, false) => Err(
                "urn:k8s:secret: the key must be letters, digits, -, _ and . (a Kubernetes secret key)"
                    .into(),
            ),
        };
    }
    if let Some((scheme, _)) = value.split_once(':')
        && !scheme.is_empty()
        && scheme.len() <= 32
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        let near = ["env", "file", "urn"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme));
        return Err(if scheme == "urn" {
            "the only urn: reference is urn:k8s:secret:NAME:KEY".to_owned()
        } else if near {
            format!("looks like a secret reference: write the scheme in lower case ({SCHEMES})")
        } else {
            format!(
                "looks like a secret reference but names no known scheme ({SCHEMES}); an inline secret cannot start with a scheme and a colon"
            )
        });
    }
    Ok(Reference::Inline)
}

/// A Kubernetes DNS label (RFC 1123): a namespace's or a service's name.
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// How secret references are resolved.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Where `urn:k8s:secret:NAME:KEY` is read: `dir/NAME/KEY`.
    pub dir: PathBuf,
    /// Read the secrets; off (`check-config --no-secrets`), references are only checked.
    pub resolve: bool,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_SECRETS_DIR),
            resolve: true,
        }
    }
}

impl Secrets {
    /// The file a reference reads, if it reads one.
    pub fn file_of(&self, reference: Reference<'_>) -> Option<PathBuf> {
        match reference {
            Reference::File(path) => Some(PathBuf::from(path)),
            Reference::Kubernetes {
                namespace,
                name,
                key,
            } => Some(
                namespace
                    .map_or_else(|| self.dir.clone(), |ns| self.dir.join(ns))
                    .join(name)
                    .join(key),
            ),
            Reference::Env(_) | Reference::Inline => None,
        }
    }
}

/// A placeholder for a secret that was not read (`--no-secrets`).
const UNRESOLVED: &str = "<not resolved: check-config --no-secrets>";

impl Secrets {
    /// Resolves `value`: the secret, and whether it was written inline.
    pub fn resolve(&self, value: &str) -> Result<(Secret, bool), String> {
        let reference = parse(value)?;
        if !self.resolve {
            let inline = reference == Reference::Inline;
            let placeholder = if inline { value } else { UNRESOLVED };
            return Ok((Secret(placeholder.to_owned()), inline));
        }
        Ok(match reference {
            Reference::Env(name) => (
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => Secret(v),
                    Ok(_) => return Err(format!("environment variable {name} is empty")),
                    Err(_) => return Err(format!("environment variable {name} is not set")),
                },
                false,
            ),
            Reference::File(_) => (read(&self.file_of(reference).expect("a file"))?, false),
            Reference::Kubernetes { name, key, .. } => (
                read(&self.file_of(reference).expect("a file")).map_err(|e| {
                    format!(
                        "Kubernetes secret {name}, key {key}: {e} (mounted under {})",
                        self.dir.display()
                    )
                })?,
                false,
            ),
            Reference::Inline => (Secret(value.to_owned()), true),
        })
    }
}

/// A secret file's content, without the trailing newline of how files are written.
fn read(path: &Path) -> Result<Secret, String> {
    match std::fs::read_to_string(path) {
        Ok(v) => {
            let v = v.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                Err(format!("file {} is empty", path.display()))
            } else {
                Ok(Secret(v.to_owned()))
            }
        }
        Err(e) => Err(format!("cannot read file {}: {}", path.display(), e.kind())),
    }
}

/// Resolves a secret reference (or inline value) with the default [`Secrets`].
pub fn resolve(reference: &str) -> Result<Secret, String> {
    Secrets::default().resolve(reference).map(|(s, _)| s)
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let s = resolve(&format!("file:{}", path.display())).unwrap();
        assert_eq!(s.expose(), "s3cr3t");
    }

    #[test]
    fn a_namespaced_kubernetes_secret_is_read_under_its_namespace() {
        let secrets = Secrets {
            dir: PathBuf::from("/run/s"),
            resolve: true,
        };
        let file = |r: &str| secrets.file_of(parse(r).unwrap());
        assert_eq!(
            file("urn:k8s:secret:apps/idp:client_secret"),
            Some(PathBuf::from("/run/s/apps/idp/client_secret"))
        );
        assert_eq!(
            file("urn:k8s:secret:idp:client_secret"),
            Some(PathBuf::from("/run/s/idp/client_secret"))
        );
    }

    #[test]
    fn references_are_parsed_strictly_and_errors_never_quote_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("oauth-client")).unwrap();
        std::fs::write(dir.path().join("oauth-client/client_secret"), "from-k8s\n").unwrap();
        let secrets = Secrets {
            dir: dir.path().to_owned(),
            resolve: true,
        };
        let ok = |v: &str| {
            secrets
                .resolve(v)
                .map(|(s, inline)| (s.expose().to_owned(), inline))
        };
        /// A value, and the secret and inline flag it resolves to, or the start of its error.
        type Case<'a> = (&'a str, Result<(&'a str, bool), &'a str>);
        let cases: &[Case<'_>] = &[
            (
                "env:TOKENGATE_TEST_SURELY_UNSET",
                Err("environment variable TOKENGATE_TEST_SURELY_UNSET is not set"),
            ),
            (
                "env:",
                Err("env: needs a variable name (letters, digits and _)"),
            ),
            (
                "env:1X",
                Err("env: needs a variable name (letters, digits and _)"),
            ),
            (
                "urn:k8s:secret:oauth-client:client_secret",
                Ok(("from-k8s", false)),
            ),
            (
                "urn:k8s:secret:oauth-client:nope",
                Err("Kubernetes secret oauth-client, key nope: cannot read file"),
            ),
            (
                "urn:k8s:secret:oauth-client",
                Err("urn:k8s:secret: needs NAME:KEY"),
            ),
            (
                "urn:k8s:secret:../etc:passwd",
                Err("urn:k8s:secret: the namespace must be a Kubernetes name"),
            ),
            (
                "urn:k8s:secret:apps/..:passwd",
                Err("urn:k8s:secret: the secret's name must be"),
            ),
            (
                "urn:k8s:secret:a/b/c:passwd",
                Err("urn:k8s:secret: the secret's name must be"),
            ),
            (
                "urn:k8s:secret:oauth-client:..",
                Err("urn:k8s:secret: the key must be"),
            ),
            (
                "urn:k8s:secret:Oauth:k",
                Err("urn:k8s:secret: the secret's name must be"),
            ),
            (
                "ENV:PATH",
                Err("looks like a secret reference: write the scheme in lower case"),
            ),
            (
                "File:/x",
                Err("looks like a secret reference: write the scheme in lower case"),
            ),
            (
                "urn:k8s:secrets:oauth-client:client_secret",
                Err("the only urn: reference is urn:k8s:secret:NAME:KEY"),
            ),
            (
                "vault:kv/db",
                Err("looks like a secret reference but names no known scheme"),
            ),
            ("s3cr3t-inline", Ok(("s3cr3t-inline", true))),
            ("p@ss:word", Ok(("p@ss:word", true))),
            ("", Err("is empty")),
        ];
        assert_eq!(ok("env:PATH").map(|(_, inline)| inline), Ok(false));
        for (value, want) in cases {
            match (ok(value), want) {
                (Ok(got), Ok(want)) => assert_eq!((got.0.as_str(), got.1), *want, "{value}"),
                (Err(got), Err(want)) => {
                    assert!(got.starts_with(want), "{value}: {got}");
                    if !value.is_empty()
                        && !value.starts_with("env:")
                        && !value.starts_with("urn:k8s:secret:oauth-client:")
                    {
                        assert!(!got.contains(*value), "{value}: the error quotes it: {got}");
                    }
                }
                (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn without_resolving_references_are_only_checked() {
        let secrets = Secrets {
            dir: PathBuf::from("/nonexistent"),
            resolve: false,
        };
        let (s, inline) = secrets.resolve("urn:k8s:secret:a:b").unwrap();
        assert!(!inline);
        assert_eq!(s.expose(), UNRESOLVED);
        assert!(secrets.resolve("env:UNSET_FOR_SURE_123").is_ok());
        assert!(secrets.resolve("Env:X").is_err());
    }
}
