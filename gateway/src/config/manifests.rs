//! Traefik's Kubernetes manifests as a configuration source: a directory of `Middleware` and
//! `IngressRoute` documents, read as they are and turned into native middlewares and routes.
//!
//! The conversion is from YAML values to YAML values: the result is merged into the native
//! configuration before it is parsed, so everything a manifest says is checked by the same
//! validation as native configuration, and `gateway convert` prints exactly what was loaded.
//!
//! - A `Middleware` named `NAME` in namespace `NS` becomes the native middleware `NS/NAME`.
//!   Traefik Hub's `plugin.oAuthClientCredentials` and `plugin.oAuthIntrospection` become
//!   `clientCredentials` and `introspection` (their options have the same names), `plugin.jwt`
//!   becomes `jwt`; Traefik's `stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex`,
//!   `headers`, `retry` and `rateLimit` keep their names.
//! - Each route of an `IngressRoute` `NS/NAME` becomes a native route `NS/NAME` (`NS/NAME#i`
//!   when it has several) with its `match` as the rule, its `priority`, its middlewares
//!   (`name`, in `namespace` or the route's own; `name@kubernetescrd` too) and its services as
//!   weighted servers. A service `NAME:PORT` in `NS` is reached at the URL `manifests.services`
//!   maps `NS/NAME:PORT` to, or else at `http://NAME.NS.svc:PORT` (`https://` for port 443),
//!   which is the cluster's DNS name for it.
//! - Documents of other API groups (a `Deployment`, a `Service` in the same file) are skipped and
//!   listed; a Traefik document or field that has no equivalent is an error naming the file, the
//!   document and the field, never dropped.
//!
//! The documents are tenants' input, written by several teams, not the operator's:
//! - a route uses only its own namespace's middlewares and services, unless the operator sets
//!   Traefik's `allowCrossNamespace: true`;
//! - a service's `name` and `namespace` are Kubernetes names, its `scheme` `http` or `https`
//!   (`h2c` is refused by name: the gateway speaks HTTP/2 to upstreams over TLS only), its `port`
//!   a number or a port name mapped in `manifests.services`;
//! - a secret is named `urn:k8s:secret:NAME:KEY` and read from the document's own namespace
//!   (`secretsDir/NAMESPACE/NAME/KEY`); `env:` and `file:` references and TLS files, which would
//!   read the gateway's own environment and files, are refused unless the operator sets
//!   `allowLocalSecrets: true`. A manifest can neither read a file of the gateway's host nor
//!   send one of its secrets anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::middleware::KINDS;

/// `manifests`: where the documents are, and how their services are reached.
#[derive(Debug, Default)]
pub struct ManifestSource {
    /// The directory of `*.yaml` / `*.yml` files (each may hold several documents).
    pub directory: PathBuf,
    /// `namespace/name:port` → upstream URL.
    pub services: BTreeMap<String, String>,
    /// Routes may use other namespaces' middlewares and services (Traefik's option).
    pub allow_cross_namespace: bool,
    /// Documents may use `env:` and `file:` references and TLS files of the gateway's host.
    pub allow_local_secrets: bool,
}

/// What the documents amount to.
#[derive(Debug, Default)]
pub struct Converted {
    /// Native middlewares by name.
    pub middlewares: Mapping,
    /// Native routes.
    pub routes: Vec<Value>,
    /// Documents skipped for not being Traefik's (`file#n kind namespace/name`).
    pub skipped: Vec<String>,
    /// Where each converted middleware was written: its native key path prefix
    /// (`middlewares.NS/NAME.KIND`) and the document and field it came from
    /// (`apps.yaml#1 (Middleware apps/m): spec.plugin.oAuthClientCredentials`).
    pub origins: Vec<(String, String)>,
}

impl Converted {
    /// `path` (a native key path) as the manifest wrote it, when it is in a converted
    /// middleware.
    pub fn written(origins: &[(String, String)], path: &str) -> Option<String> {
        origins.iter().find_map(|(native, written)| {
            let rest = path.strip_prefix(native.as_str())?;
            (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
                .then(|| format!("{written}{rest}"))
        })
    }
}

const API_GROUPS: [&str; 2] = ["traefik.io/", "traefik.containo.us/"];

/// Reads every document under the source's directory; the problems, each naming where.
pub fn convert(source: &ManifestSource) -> Result<Converted, Vec<String>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&source.directory) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(e) => {
            return Err(vec![format!(
                "cannot read directory {}: {}",
                source.directory.display(),
                e.kind()
            )]);
        }
    };
    files.sort();
    let mut out = Converted::default();
    let mut errors = Vec::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: cannot read: {}", file.display(), e.kind()));
                continue;
            }
        };
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        convert_text(source, &name, &text, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The documents of one file's `text` (named `name` in errors), converted into `out`; the
/// problems go to `errors`. A document that is not YAML ends the file: what follows a syntax
/// error cannot be told apart from it (and the parser would report it again and again).
pub fn convert_text(
    source: &ManifestSource,
    name: &str,
    text: &str,
    out: &mut Converted,
    errors: &mut Vec<String>,
) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("{name}#{}", i + 1);
        match serde::Deserialize::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => {
                if let Err(e) = document(source, &at, &value, out) {
                    errors.push(e);
                }
            }
            Err(e) => {
                errors.push(format!("{at}: not YAML: {e}"));
                break;
            }
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// One document: converted into `out`, skipped, or the error.
fn document(
    source: &ManifestSource,
    at: &str,
    doc: &Value,
    out: &mut Converted,
) -> Result<(), String> {
    let api = str_at(doc, "apiVersion").unwrap_or_default();
    let kind = str_at(doc, "kind").unwrap_or_default();
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| str_at(m, "name")).unwrap_or_default();
    let namespace = meta
        .and_then(|m| str_at(m, "namespace"))
        .unwrap_or("default");
    if !API_GROUPS.iter().any(|g| api.starts_with(g)) {
        out.skipped.push(format!("{at} {kind} {namespace}/{name}"));
        return Ok(());
    }
    let here = format!("{at} ({kind} {namespace}/{name})");
    if name.is_empty() {
        return Err(format!("{here}: metadata.name is required"));
    }
    if !crate::secret::dns_label(namespace) {
        return Err(format!(
            "{here}: metadata.namespace: not a Kubernetes namespace name (lower-case letters, digits and -)"
        ));
    }
    if name.len() > 253 || name.contains(['/', '@', ':', '#']) || name.chars().any(char::is_control)
    {
        return Err(format!(
            "{here}: metadata.name: not a Kubernetes object name"
        ));
    }
    let spec = doc
        .get("spec")
        .and_then(Value::as_mapping)
        .ok_or_else(|| format!("{here}: spec is required"))?;
    match kind {
        "Middleware" => {
            let converted =
                middleware(source, namespace, spec).map_err(|e| format!("{here}: {e}"))?;
            out.origins.push((
                format!("middlewares.{namespace}/{name}.{}", converted.native),
                format!("{here}: {}", converted.written),
            ));
            let key = Value::String(format!("{namespace}/{name}"));
            if out.middlewares.insert(key, converted.value).is_some() {
                return Err(format!("{here}: declared twice"));
            }
            Ok(())
        }
        "IngressRoute" => {
            let routes =
                ingress_route(source, namespace, name, spec).map_err(|e| format!("{here}: {e}"))?;
            out.routes.extend(routes);
            Ok(())
        }
        other => Err(format!(
            "{here}: kind {other:?} is not supported (Middleware and IngressRoute are)"
        )),
    }
}

/// A `Middleware`'s spec as a native middleware, its secrets confined to `namespace`; the error
/// names the field.
fn middleware(
    source: &ManifestSource,
    namespace: &str,
    spec: &Mapping,
) -> Result<ConvertedMiddleware, String> {
    let [(kind, options)] = one_entry(spec, "spec")?;
    let kind = kind.as_str().unwrap_or_default();
    // The kinds a document may name, as Traefik Hub spells them, and the native kind of each.
    let traefik = || KINDS.iter().filter_map(|k| Some((k.traefik?, k.name)));
    let ((written, native), options) = if kind == "plugin" {
        let plugin = options
            .as_mapping()
            .ok_or("spec.plugin: expected a mapping")?;
        let [(name, options)] = one_entry(plugin, "spec.plugin")?;
        let name = name.as_str().unwrap_or_default();
        let plugins = || traefik().filter_map(|(t, _)| t.strip_prefix("plugin."));
        let Some(found) = traefik().find(|(t, _)| t.strip_prefix("plugin.") == Some(name)) else {
            let mut known: Vec<&str> = plugins().collect();
            let last = known.pop().unwrap_or_default();
            return Err(format!(
                "spec.plugin.{name}: not supported ({} and {last} are)",
                known.join(", ")
            ));
        };
        (found, options)
    } else if let Some(found) = traefik().find(|(t, _)| *t == kind) {
        (found, options)
    } else {
        let known: Vec<&str> = traefik().map(|(t, _)| t).collect();
        return Err(format!(
            "spec.{kind}: middleware kind not supported ({})",
            known.join(", ")
        ));
    };
    // Traefik Hub's name is the field's path under `spec` (`plugin.jwt`, `stripPrefix`).
    let written = format!("spec.{written}");
    let mut options = options.clone();
    confine(source, namespace, &written, &mut options)?;
    let mut m = Mapping::new();
    m.insert(Value::String(native.to_owned()), options);
    Ok(ConvertedMiddleware {
        native,
        written,
        value: Value::Mapping(m),
    })
}

/// A converted `Middleware`: its native kind, the field it was written under, and the native
/// middleware.
struct ConvertedMiddleware {
    native: &'static str,
    written: String,
    value: Value,
}

/// Keys whose values are files on the gateway's host (TLS material).
const FILE_KEYS: [&str; 3] = ["caFile", "certFile", "keyFile"];

/// A tenant's middleware options, made safe to load: every `urn:k8s:secret:NAME:KEY` becomes
/// `urn:k8s:secret:NS/NAME:KEY` (the document's namespace's secrets only), and `env:` and
/// `file:` references and TLS files are refused unless the operator allows them. `path` names
/// the field for errors.
fn confine(
    source: &ManifestSource,
    namespace: &str,
    path: &str,
    value: &mut Value,
) -> Result<(), String> {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = k.as_str().unwrap_or_default();
                let at = format!("{path}.{key}");
                if FILE_KEYS.contains(&key) && !source.allow_local_secrets {
                    return Err(format!(
                        "{at}: a manifest cannot name a file of the gateway's host (the operator allows it with manifests.allowLocalSecrets)"
                    ));
                }
                confine(source, namespace, &at, v)?;
            }
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                confine(source, namespace, &format!("{path}[{i}]"), v)?;
            }
            Ok(())
        }
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix("urn:k8s:secret:") {
                let (name, key) = rest.split_once(':').unwrap_or((rest, ""));
                if name.contains('/') {
                    return Err(format!(
                        "{path}: a manifest names the secrets of its own namespace only (urn:k8s:secret:NAME:KEY)"
                    ));
                }
                *s = format!("urn:k8s:secret:{namespace}/{name}:{key}");
            } else if (s.starts_with("env:") || s.starts_with("file:"))
                && !source.allow_local_secrets
            {
                return Err(format!(
                    "{path}: env: and file: references would read the gateway's own environment and files; a manifest names its secrets urn:k8s:secret:NAME:KEY (the operator allows them with manifests.allowLocalSecrets)"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Refuses `ns` for a document of `namespace` unless cross-namespace references are allowed.
fn same_namespace(source: &ManifestSource, namespace: &str, ns: &str) -> Result<(), String> {
    if ns == namespace || source.allow_cross_namespace {
        return Ok(());
    }
    Err(format!(
        "namespace: {ns:?} is not this document's namespace {namespace:?}; cross-namespace references need manifests.allowCrossNamespace: true"
    ))
}

/// The single `key: value` of `map`, or an error naming `path`.
fn one_entry<'a>(map: &'a Mapping, path: &str) -> Result<[(&'a Value, &'a Value); 1], String> {
    let mut entries = map.iter();
    match (entries.next(), entries.next()) {
        (Some(one), None) => Ok([one]),
        (None, _) => Err(format!("{path}: names no middleware")),
        (Some(_), Some(_)) => Err(format!("{path}: names more than one middleware")),
    }
}

/// The routes of an `IngressRoute`'s spec.
fn ingress_route(
    source: &ManifestSource,
    namespace: &str,
    name: &str,
    spec: &Mapping,
) -> Result<Vec<Value>, String> {
    for (key, _) in spec {
        match key.as_str().unwrap_or_default() {
            // One listener serves every entry point.
            "routes" | "entryPoints" => {}
            "tls" => {
                return Err(
                    "spec.tls: TLS is the gateway listener's (the top-level tls section)".into(),
                );
            }
            other => return Err(format!("spec.{other}: not supported")),
        }
    }
    let routes = spec
        .get("routes")
        .and_then(Value::as_sequence)
        .ok_or("spec.routes: expected a list of routes")?;
    let many = routes.len() > 1;
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let route_name = if many {
                format!("{namespace}/{name}#{i}")
            } else {
                format!("{namespace}/{name}")
            };
            route(source, namespace, route_name, r).map_err(|e| format!("spec.routes[{i}].{e}"))
        })
        .collect()
}

fn route(
    source: &ManifestSource,
    namespace: &str,
    name: String,
    r: &Value,
) -> Result<Value, String> {
    let r = r.as_mapping().ok_or("expected a mapping")?;
    let mut middlewares = Vec::new();
    let mut servers = Vec::new();
    let mut pass_host_header = None;
    let mut out = Mapping::new();
    out.insert("name".into(), Value::String(name));
    for (key, value) in r {
        match key.as_str().unwrap_or_default() {
            "match" => {
                let rule = value.as_str().ok_or("match: expected a rule")?;
                let mut m = Mapping::new();
                m.insert("rule".into(), Value::String(rule.to_owned()));
                out.insert("match".into(), Value::Mapping(m));
            }
            "kind" => {
                if value.as_str() != Some("Rule") {
                    return Err("kind: only Rule is supported".into());
                }
            }
            "syntax" => {
                if value.as_str() != Some("v3") {
                    return Err("syntax: only the v3 rule syntax is supported".into());
                }
            }
            "priority" => {
                out.insert("priority".into(), value.clone());
            }
            "middlewares" => {
                for (i, m) in value
                    .as_sequence()
                    .ok_or("middlewares: expected a list")?
                    .iter()
                    .enumerate()
                {
                    middlewares.push(Value::String(
                        reference(source, namespace, m)
                            .map_err(|e| format!("middlewares[{i}].{e}"))?,
                    ));
                }
            }
            "services" => {
                for (i, s) in value
                    .as_sequence()
                    .ok_or("services: expected a list")?
                    .iter()
                    .enumerate()
                {
                    let (server, pass) =
                        service(source, namespace, s).map_err(|e| format!("services[{i}].{e}"))?;
                    servers.push(server);
                    if pass.is_some() {
                        pass_host_header = pass;
                    }
                }
            }
            other => return Err(format!("{other}: not supported")),
        }
    }
    if !out.contains_key("match") {
        return Err("match: is required".into());
    }
    if servers.is_empty() {
        return Err("services: needs at least one service".into());
    }
    out.insert("middlewares".into(), Value::Sequence(middlewares));
    let mut upstream = Mapping::new();
    upstream.insert("servers".into(), Value::Sequence(servers));
    if let Some(pass) = pass_host_header {
        upstream.insert("passHostHeader".into(), Value::Bool(pass));
    }
    out.insert("upstream".into(), Value::Mapping(upstream));
    Ok(Value::Mapping(out))
}

/// A middleware reference (`name`, `namespace`) as a native middleware name.
fn reference(source: &ManifestSource, namespace: &str, m: &Value) -> Result<String, String> {
    let mut name = None;
    let mut ns = namespace.to_owned();
    for (key, value) in m.as_mapping().ok_or("expected a mapping")? {
        match key.as_str().unwrap_or_default() {
            "name" => name = value.as_str(),
            "namespace" => ns = value.as_str().ok_or("namespace: expected text")?.to_owned(),
            other => return Err(format!("{other}: not supported")),
        }
    }
    let name = name.ok_or("name: is required")?;
    same_namespace(source, namespace, &ns)?;
    let name = match name.split_once('@') {
        None => name,
        Some((n, "kubernetescrd")) => n,
        Some((_, provider)) => {
            return Err(format!(
                "name: a middleware of provider {provider:?} cannot be referenced (only this directory's)"
            ));
        }
    };
    Ok(format!("{ns}/{name}"))
}

/// A service as a weighted server, and its `passHostHeader` if given.
fn service(
    source: &ManifestSource,
    namespace: &str,
    s: &Value,
) -> Result<(Value, Option<bool>), String> {
    let mut name = None;
    let mut port = None;
    let mut ns = namespace.to_owned();
    let mut weight = None;
    let mut scheme = None;
    let mut pass = None;
    for (key, value) in s.as_mapping().ok_or("expected a mapping")? {
        match key.as_str().unwrap_or_default() {
            "name" => name = value.as_str(),
            "namespace" => ns = value.as_str().ok_or("namespace: expected text")?.to_owned(),
            "port" => {
                port = Some(match value {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err("port: expected a number or a port name".into()),
                });
            }
            "weight" => weight = Some(value.clone()),
            "scheme" => scheme = value.as_str(),
            "passHostHeader" => {
                pass = Some(
                    value
                        .as_bool()
                        .ok_or("passHostHeader: expected true or false")?,
                )
            }
            "kind" => {
                if value.as_str() != Some("Service") {
                    return Err("kind: only Service is supported".into());
                }
            }
            other => return Err(format!("{other}: not supported")),
        }
    }
    let name = name.ok_or("name: is required")?;
    let port = port.ok_or("port: is required")?;
    same_namespace(source, namespace, &ns)?;
    if !crate::secret::dns_label(name) {
        return Err(format!(
            "name: {:?} is not a Kubernetes service name (lower-case letters, digits and -)",
            name.escape_debug().to_string()
        ));
    }
    if !crate::secret::dns_label(&ns) {
        return Err("namespace: not a Kubernetes namespace name".into());
    }
    match scheme {
        None | Some("http" | "https") => {}
        Some("h2c") => {
            return Err(
                "scheme: h2c (HTTP/2 without TLS) to upstreams is not supported; use http or https"
                    .into(),
            );
        }
        Some(s) => {
            return Err(format!(
                "scheme: {:?} is not http or https",
                s.escape_debug().to_string()
            ));
        }
    }
    match port.parse::<u32>() {
        Ok(1..=65535) => {}
        Ok(_) => return Err("port: must be between 1 and 65535".into()),
        Err(_) if !port_name(&port) => {
            return Err("port: neither a number nor a Kubernetes port name".into());
        }
        Err(_) => {}
    }
    let key = format!("{ns}/{name}:{port}");
    let url = match source.services.get(&key) {
        Some(url) => url.clone(),
        None => {
            if port.parse::<u16>().is_err() {
                return Err(format!(
                    "port: the named port {port:?} has no number here; map {key} in manifests.services"
                ));
            }
            let scheme = scheme.unwrap_or(if port == "443" { "https" } else { "http" });
            format!("{scheme}://{name}.{ns}.svc:{port}")
        }
    };
    let mut server = Mapping::new();
    server.insert("url".into(), Value::String(url));
    if let Some(w) = weight {
        server.insert("weight".into(), w);
    }
    Ok((Value::Mapping(server), pass))
}

/// A Kubernetes port name (an IANA service name): at most 15 lower-case letters, digits and
/// single inner hyphens, with at least one letter.
fn port_name(s: &str) -> bool {
    crate::secret::dns_label(s)
        && s.len() <= 15
        && !s.contains("--")
        && s.bytes().any(|b| b.is_ascii_lowercase())
}

/// Merges converted documents into a native configuration's root: middlewares beside the
/// native ones (a name declared twice is an error), routes after them.
pub fn merge(root: &mut Mapping, converted: Converted) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let middlewares = root
        .entry("middlewares".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Value::Mapping(m) = middlewares {
        for (name, value) in converted.middlewares {
            if m.contains_key(&name) {
                errors.push(format!(
                    "middleware {} is declared in the configuration and in the manifests",
                    name.as_str().unwrap_or_default()
                ));
            } else {
                m.insert(name, value);
            }
        }
    }
    let routes = root
        .entry("routes".into())
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if let Value::Sequence(r) = routes {
        r.extend(converted.routes);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The directory, relative to the configuration file's when it is not absolute.
pub fn resolve_directory(config_file: Option<&Path>, directory: &str) -> PathBuf {
    let dir = PathBuf::from(directory);
    match config_file.and_then(Path::parent) {
        Some(base) if dir.is_relative() => base.join(dir),
        _ => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(docs: &str, services: &[(&str, &str)]) -> Result<Converted, Vec<String>> {
        converted_with(docs, services, false, false)
    }

    fn converted_with(
        docs: &str,
        services: &[(&str, &str)],
        allow_cross_namespace: bool,
        allow_local_secrets: bool,
    ) -> Result<Converted, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apps.yaml"), docs).unwrap();
        convert(&ManifestSource {
            directory: dir.path().to_owned(),
            services: services
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            allow_cross_namespace,
            allow_local_secrets,
        })
    }

    /// A route in `apps` with `route` (a YAML mapping's inner text), and a middleware `m` in
    /// `apps` with `options` for `plugin.oAuthClientCredentials`.
    fn tenant(route: &str, options: &str) -> String {
        format!(
            r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{ name: m, namespace: apps }}
spec: {{ plugin: {{ oAuthClientCredentials: {options} }} }}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {{ name: r, namespace: apps }}
spec:
  routes:
    - {{ match: "Path(`/`)", {route} }}
"#
        )
    }

    const OWN: &str = "services: [{ name: svc, port: 80 }], middlewares: [{ name: m }]";
    const IDP: &str = "{ url: \"https://idp/token\" }";

    #[test]
    fn a_route_uses_only_its_own_namespaces_middlewares_and_services_unless_allowed() {
        let steal_middleware = "services: [{ name: svc, port: 80 }], middlewares: [{ name: creds, namespace: team-b }]";
        let steal_service = "services: [{ name: svc, namespace: team-b, port: 80 }]";
        for (route, field) in [
            (steal_middleware, "middlewares[0]"),
            (steal_service, "services[0]"),
        ] {
            let errors = converted(&tenant(route, IDP), &[]).unwrap_err();
            assert_eq!(
                errors,
                [format!(
                    "apps.yaml#2 (IngressRoute apps/r): spec.routes[0].{field}.namespace: \"team-b\" is not this document's namespace \"apps\"; cross-namespace references need manifests.allowCrossNamespace: true"
                )]
            );
            assert!(converted_with(&tenant(route, IDP), &[], true, false).is_ok());
        }
        assert!(converted(&tenant(OWN, IDP), &[]).is_ok());
    }

    #[test]
    fn a_service_is_a_kubernetes_name_scheme_and_port() {
        for (service, says) in [
            (
                "{ name: \"evil.com:80/x@\", port: 80 }",
                "services[0].name: \"evil.com:80/x@\" is not a Kubernetes service name",
            ),
            (
                "{ name: svc, namespace: \"a.b\", port: 80 }",
                "services[0].namespace: \"a.b\" is not this document's namespace",
            ),
            (
                "{ name: svc, port: 80, scheme: file }",
                "services[0].scheme: \"file\" is not http or https",
            ),
            (
                "{ name: svc, port: 80, scheme: h2c }",
                "services[0].scheme: h2c (HTTP/2 without TLS) to upstreams is not supported",
            ),
            (
                "{ name: svc, port: 0 }",
                "services[0].port: must be between 1 and 65535",
            ),
            (
                "{ name: svc, port: 70000 }",
                "services[0].port: must be between 1 and 65535",
            ),
            (
                "{ name: svc, port: \"80/../x\" }",
                "services[0].port: neither a number nor a Kubernetes port name",
            ),
            (
                "{ name: svc, port: web }",
                "services[0].port: the named port \"web\" has no number here",
            ),
        ] {
            let errors =
                converted(&tenant(&format!("services: [{service}]"), IDP), &[]).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("apps.yaml#2 (IngressRoute apps/r): spec.routes[0].")
                    && errors[0].contains(says),
                "{service}: {errors:?}"
            );
        }
        let bad_namespace = tenant(OWN, IDP).replace(
            "namespace: apps }}\nspec:\n  routes",
            "namespace: \"Apps/..\" }}\nspec:\n  routes",
        );
        let errors = converted(
            &bad_namespace.replace(
                "metadata: { name: r, namespace: apps }",
                "metadata: { name: r, namespace: \"../x\" }",
            ),
            &[],
        )
        .unwrap_err();
        assert!(
            errors[0].contains("metadata.namespace: not a Kubernetes namespace name"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_manifests_secrets_are_its_namespaces_and_it_reads_no_file_of_the_host() {
        let secret = "{ url: \"https://idp/token\", clientId: gw, clientSecret: \"urn:k8s:secret:idp:secret\" }";
        let c = converted(&tenant(OWN, secret), &[]).unwrap();
        let yaml = serde_yaml_ng::to_string(&Value::Mapping(c.middlewares)).unwrap();
        assert!(
            yaml.contains("clientSecret: urn:k8s:secret:apps/idp:secret"),
            "read from the document's namespace: {yaml}"
        );
        for (options, says) in [
            (
                "{ url: \"https://evil/token\", clientId: gw, clientSecret: \"env:TOKENGATE_FLEET_KEY\" }",
                "spec.plugin.oAuthClientCredentials.clientSecret: env: and file: references would read the gateway's own environment and files",
            ),
            (
                "{ url: \"https://evil/token\", clientId: gw, clientSecret: \"file:/etc/shadow\" }",
                "spec.plugin.oAuthClientCredentials.clientSecret: env: and file:",
            ),
            (
                "{ url: \"https://evil/token\", clientId: gw, clientSecret: \"urn:k8s:secret:team-b/idp:secret\" }",
                "spec.plugin.oAuthClientCredentials.clientSecret: a manifest names the secrets of its own namespace only",
            ),
            (
                "{ url: \"https://evil/token\", clientConfig: { tls: { certFile: /etc/tokengate/tls/tls.crt, keyFile: /etc/tokengate/tls/tls.key } } }",
                "spec.plugin.oAuthClientCredentials.clientConfig.tls.certFile: a manifest cannot name a file of the gateway's host",
            ),
        ] {
            let errors = converted(&tenant(OWN, options), &[]).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("apps.yaml#1 (Middleware apps/m): ")
                    && errors[0].contains(says),
                "{options}: {errors:?}"
            );
            assert!(!errors[0].contains("FLEET_KEY") || options.contains("FLEET_KEY"));
        }
        // The operator may allow env: and file: (and TLS files) for manifests it trusts.
        let env = "{ url: \"https://idp/token\", clientId: gw, clientSecret: \"env:IDP_SECRET\" }";
        assert!(converted_with(&tenant(OWN, env), &[], false, true).is_ok());
    }

    #[test]
    fn a_file_that_is_not_yaml_is_reported_once_and_the_load_ends() {
        for text in [
            "a: [\n---\nb: 1\n",
            "key: value\n  - bad: [\n---\n- x\n",
            "{{{{\n",
        ] {
            let (mut c, mut errors) = (Converted::default(), Vec::new());
            convert_text(
                &ManifestSource::default(),
                "apps.yaml",
                text,
                &mut c,
                &mut errors,
            );
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
            assert!(errors[0].contains(": not YAML: "), "{errors:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any document is converted or refused with errors naming the file and document,
        /// never a panic; whatever converts names only its own namespace's secrets.
        #[test]
        fn any_document_converts_or_is_refused_by_name(
            kind in proptest::sample::select(vec!["Middleware", "IngressRoute", "TraefikService"]),
            namespace in "[a-z./ -]{0,8}",
            body in "[ -~\n]{0,200}",
        ) {
            let doc = format!(
                "apiVersion: traefik.io/v1alpha1\nkind: {kind}\nmetadata: {{ name: n, namespace: \"{}\" }}\nspec:\n{body}",
                namespace.escape_debug()
            );
            let (mut c, mut errors) = (Converted::default(), Vec::new());
            convert_text(&ManifestSource::default(), "apps.yaml", &doc, &mut c, &mut errors);
            match errors.is_empty().then_some(c).ok_or(errors) {
                Ok(c) => {
                    let text = serde_yaml_ng::to_string(&Value::Mapping(c.middlewares)).unwrap();
                    for line in text.lines().filter(|l| l.contains("urn:k8s:secret:")) {
                        proptest::prop_assert!(line.contains(&format!("urn:k8s:secret:{namespace}/")), "{line}");
                    }
                    proptest::prop_assert!(!text.contains("env:") && !text.contains("file:"), "{text}");
                }
                Err(errors) => {
                    for e in errors {
                        proptest::prop_assert!(e.starts_with("apps.yaml#"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn middlewares_and_routes_become_native_ones() {
        let c = converted_with(
            r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: creds, namespace: apps }
spec:
  plugin:
    oAuthClientCredentials: { url: "http://idp/token", audience: https://api }
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: strip, namespace: shared }
spec: { stripPrefix: { prefixes: [/api] } }
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: { name: whoami, namespace: apps }
spec:
  entryPoints: [web]
  routes:
    - match: Host(`a.test`) && PathPrefix(`/api`)
      kind: Rule
      priority: 10
      services: [{ name: whoami, port: 80, weight: 3 }, { name: other, namespace: more, port: 443 }]
      middlewares: [{ name: creds }, { name: strip, namespace: shared }, { name: "creds@kubernetescrd" }]
    - match: Path(`/x`)
      services: [{ name: mapped, port: http }]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: whoami, namespace: apps }
"#,
            &[("apps/mapped:http", "http://10.0.0.9:8080")],
            true,
            false,
        )
        .unwrap();
        let yaml = |v: &Value| serde_yaml_ng::to_string(v).unwrap();
        assert_eq!(
            yaml(&Value::Mapping(c.middlewares)),
            "apps/creds:\n  clientCredentials:\n    url: http://idp/token\n    audience: https://api\nshared/strip:\n  stripPrefix:\n    prefixes:\n    - /api\n"
        );
        assert_eq!(
            yaml(&c.routes[0]),
            "name: apps/whoami#0\nmatch:\n  rule: Host(`a.test`) && PathPrefix(`/api`)\npriority: 10\nmiddlewares:\n- apps/creds\n- shared/strip\n- apps/creds\nupstream:\n  servers:\n  - url: http://whoami.apps.svc:80\n    weight: 3\n  - url: https://other.more.svc:443\n"
        );
        assert_eq!(
            yaml(&c.routes[1]),
            "name: apps/whoami#1\nmatch:\n  rule: Path(`/x`)\nmiddlewares: []\nupstream:\n  servers:\n  - url: http://10.0.0.9:8080\n"
        );
        assert_eq!(c.skipped, ["apps.yaml#4 Deployment apps/whoami"]);
    }

    #[test]
    fn what_has_no_equivalent_is_an_error_naming_the_document_and_the_field() {
        let errors = converted(
            r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: basic, namespace: apps }
spec: { basicAuth: { secret: users } }
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: { name: r, namespace: apps }
spec:
  tls: { secretName: cert }
  routes: []
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: { name: s, namespace: apps }
spec:
  routes:
    - match: Path(`/`)
      services: [{ name: x, port: 80, sticky: { cookie: {} } }]
---
apiVersion: traefik.io/v1alpha1
kind: TraefikService
metadata: { name: t }
spec: {}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: fwd, namespace: apps }
spec: { plugin: { someOtherPlugin: {} } }
"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "apps.yaml#1 (Middleware apps/basic): spec.basicAuth: middleware kind not supported (plugin.oAuthClientCredentials, plugin.oAuthIntrospection, plugin.jwt, stripPrefix, addPrefix, replacePath, replacePathRegex, headers, retry, rateLimit)",
                "apps.yaml#2 (IngressRoute apps/r): spec.tls: TLS is the gateway listener's (the top-level tls section)",
                "apps.yaml#3 (IngressRoute apps/s): spec.routes[0].services[0].sticky: not supported",
                "apps.yaml#4 (TraefikService default/t): kind \"TraefikService\" is not supported (Middleware and IngressRoute are)",
                "apps.yaml#5 (Middleware apps/fwd): spec.plugin.someOtherPlugin: not supported (oAuthClientCredentials, oAuthIntrospection and jwt are)",
            ]
        );
    }
}
