//! The options of `requireHeader`, the test-only middleware kind (see
//! `auth/require_header.rs`), and the test that follows it from the file to a request.

use http::HeaderName;
use serde::Deserialize;

use super::super::issues::Issues;
use super::{Declared, Options};
use crate::auth::require_header::RequireHeaderConfig;

impl Options for RawRequireHeader {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared> {
        let header = HeaderName::from_bytes(self.header.as_bytes())
            .map_err(|_| issues.push(format!("{path}.header"), "not a valid header name"))
            .ok()?;
        Some(Declared::auth(RequireHeaderConfig { header }))
    }
}

/// `requireHeader`: the header a request must carry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRequireHeader {
    pub header: String,
}

#[cfg(test)]
mod tests {
    use crate::auth::limits::Guards;
    use crate::auth::require_header::RequireHeaderConfig;
    use crate::auth::{Build, Caller, Middleware};
    use crate::config::{Config, ConfigError};
    use crate::lifecycle::TokenCache;
    use crate::proxy::Gateway;
    use crate::store::{MemoryStore, Store};
    use crate::token::FleetKey;

    fn config(header: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!(
            r#"
listen: 127.0.0.1:8080
admin: {{ listen: 127.0.0.1:9090 }}
middlewares:
  gate: {{ requireHeader: {{ header: "{header}" }} }}
routes:
  - name: r
    match: {{ pathPrefix: / }}
    middlewares: [gate]
    upstream: {{ urls: [http://127.0.0.1:8081] }}
"#
        ))
    }

    #[tokio::test]
    async fn a_kind_added_by_the_recipe_is_loaded_built_and_applied() {
        match config("x y") {
            Err(ConfigError::Invalid(issues)) => assert_eq!(
                issues[0].to_string(),
                "middlewares.gate.requireHeader.header: not a valid header name"
            ),
            other => panic!("expected a value error, got {other:?}"),
        }
        let cfg = config("x-pass").unwrap();
        let settings = &cfg.middlewares["gate"];
        assert_eq!(
            settings.downcast_ref::<RequireHeaderConfig>(),
            Some(&RequireHeaderConfig {
                header: http::HeaderName::from_static("x-pass")
            })
        );
        let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
        // The proxy builds a route on it without knowing the kind.
        Gateway::new(cfg.proxy(), &cache, None).expect("built");
        let guards = Guards::unlimited();
        let with = Build {
            cache: &cache,
            guards: &guards,
            issuer_keys: None,
        };
        let m = Middleware::build("gate", &**settings, &with).unwrap();
        assert_eq!((m.name(), m.kind()), ("gate", "requireHeader"));
        let caller = Caller {
            address: [127, 0, 0, 1].into(),
        };
        let (mut refused, ()) = http::Request::new(()).into_parts();
        assert!(m.apply(&mut refused, &caller).await.is_err());
        let (mut passed, ()) = http::Request::builder()
            .header("x-pass", "1")
            .body(())
            .unwrap()
            .into_parts();
        assert!(m.apply(&mut passed, &caller).await.is_ok());
    }
}
