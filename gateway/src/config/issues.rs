//! Collecting configuration problems: every check records its issue with the key path and
//! carries on, so that one run reports everything to fix. Beside the issues: how secrets are
//! resolved, the warnings, the files a reload watches, and redaction of values in messages.

use std::net::SocketAddr;

use url::Url;

use super::ConfigIssue;
use crate::secret;

/// Collects issues; each check records and carries on. Beside them: how secrets are resolved,
/// the warnings, and the key paths that set `insecureSkipVerify` (refused at the end unless
/// `allowInsecureSkipVerify` is set).
#[derive(Default)]
pub(super) struct Issues(pub(super) Vec<ConfigIssue>, pub(super) Context);

#[derive(Default)]
pub(super) struct Context {
    pub(super) insecure: Vec<String>,
    secrets: secret::Secrets,
    pub(super) warnings: Vec<String>,
    pub(super) sources: Vec<std::path::PathBuf>,
    /// The `iss` of the gateway's own issuer, when the configuration runs one
    /// (`jwt: {gatewayIssuer: true}` expects it).
    pub(super) gateway_issuer: Option<String>,
}

impl Issues {
    /// Issues of a configuration whose secrets are resolved by `secrets`.
    pub(super) fn with_secrets(secrets: secret::Secrets) -> Self {
        Self(
            Vec::new(),
            Context {
                secrets,
                ..Context::default()
            },
        )
    }

    /// Notes that `path` turns certificate verification off.
    pub(super) fn insecure(&mut self, path: String) {
        self.1.insecure.push(path);
    }

    /// Whether files holding secrets or key material are read: not under
    /// `check-config --no-secrets`, which checks the configuration without them (a pipeline
    /// holds neither the secrets nor the certificates and keys).
    pub(super) fn reads_key_material(&self) -> bool {
        self.1.secrets.resolve
    }

    /// Notes a file the configuration reads (a reload watches it).
    pub(super) fn source(&mut self, file: impl Into<std::path::PathBuf>) {
        self.1.sources.push(file.into());
    }

    /// A warning about `path`, reported with the configuration but not refusing it.
    pub(super) fn warn(&mut self, path: &str, message: &str) {
        self.1.warnings.push(format!("{path}: {message}"));
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("not a socket address (ip:port): {value:?}"));
                None
            }
        }
    }

    pub(super) fn http_url(&mut self, path: &str, value: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                // Never echoed: the userinfo is a credential.
                self.push(
                    path,
                    "must not carry credentials (user:password@); use the auth options",
                );
                None
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.push(path, "not an http(s) URL");
                None
            }
        }
    }

    /// A secret: a reference, or an inline value (allowed here, with a warning).
    pub(super) fn secret(&mut self, path: &str, value: &str) -> Option<super::Secret> {
        if let Some(file) = secret::parse(value)
            .ok()
            .and_then(|r| self.1.secrets.file_of(r))
        {
            self.source(file);
        }
        let (secret, inline) = self
            .1
            .secrets
            .resolve(value)
            .map_err(|m| self.push(path, m))
            .ok()?;
        if inline {
            self.warn(
                path,
                "an inline secret sits in the configuration file; prefer env:, file: or urn:k8s:secret:",
            );
        }
        Some(secret)
    }

    /// A secret that must be a reference: an operator's own key or password never sits in the
    /// file.
    pub(super) fn secret_reference(&mut self, path: &str, value: &str) -> Option<super::Secret> {
        if secret::parse(value).is_ok_and(|r| r == secret::Reference::Inline) {
            self.push(
                path,
                "must be a reference (env:NAME, file:/path or urn:k8s:secret:NAME:KEY), not an inline value",
            );
            return None;
        }
        self.secret(path, value)
    }

    /// A value that may be written as a secret reference (a `clientId` from a Kubernetes
    /// secret) or as itself.
    pub(super) fn maybe_reference(&mut self, path: &str, value: &str) -> Option<String> {
        match secret::parse(value) {
            Ok(secret::Reference::Inline) => Some(value.to_owned()),
            _ => self.secret(path, value).map(|s| s.expose().to_owned()),
        }
    }
}

/// `value` as it may appear in an error message: any `user:password@` cut out, so a credential
/// typed into an address is never echoed.
pub(super) fn redacted(value: &str) -> String {
    let start = value.find("://").map_or(0, |i| i + 3);
    match value[start..].rfind('@') {
        Some(at) => format!("{}***@{}", &value[..start], &value[start + at + 1..]),
        None => value.to_owned(),
    }
}
