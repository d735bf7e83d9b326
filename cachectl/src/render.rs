//! Output: aligned tables for people, JSON for scripts. Nothing here ever sees a token: entries
//! arrive as [`EntryView`]s, built from clear metadata only.

use std::time::Duration;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use serde::Serialize;

/// `-o` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// An entry as cachectl shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    /// The cache key (HMAC; reveals nothing about the credentials).
    pub key: String,
    pub client_id: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub granted_scope: Option<String>,
    pub version: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    pub refresh_at: u64,
    pub last_used: u64,
    /// Milliseconds until expiry (negative: expired).
    pub expires_in_ms: i64,
    /// Milliseconds until the refresh leader renews it (negative: due).
    pub refresh_in_ms: i64,
    pub last_used_ms_ago: i64,
    /// Whether the refresher renews it (introspection results are not renewed).
    pub renewable: bool,
    /// Fingerprint of the fleet key that sealed it.
    pub fleet_key_id: String,
    /// Size of the sealed part (token and refresh spec), which cachectl cannot open.
    pub sealed_bytes: usize,
}

/// `4m 59s`, `due`/`expired` when passed.
pub fn human_ms(ms: i64, passed: &str) -> String {
    if ms <= 0 {
        return passed.to_owned();
    }
    humantime::format_duration(Duration::from_secs((ms as u64).div_ceil(1000))).to_string()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_header(header.iter().map(Cell::new));
    t
}

fn json(value: &impl Serialize) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("output serializes")
    )
}

/// A listing.
pub fn entries(entries: &[EntryView], format: Format) -> String {
    if format == Format::Json {
        return json(&entries);
    }
    let mut t = table(&[
        "KEY",
        "CLIENT",
        "TOKEN URL",
        "SCOPES",
        "AUDIENCE",
        "EXPIRES IN",
        "REFRESH IN",
        "LAST USED",
        "VERSION",
    ]);
    for e in entries {
        t.add_row(vec![
            e.key[..12].to_owned(),
            e.client_id.clone(),
            e.token_url.clone(),
            e.scopes.join(" "),
            e.audience.clone().unwrap_or_else(|| "-".into()),
            human_ms(e.expires_in_ms, "expired"),
            if e.renewable {
                human_ms(e.refresh_in_ms, "due")
            } else {
                "never".into()
            },
            format!("{} ago", human_ms(e.last_used_ms_ago.max(1), "0s")),
            e.version.to_string(),
        ]);
    }
    format!("{t}\n{} entries\n", entries.len())
}

/// One entry in full.
pub fn entry(e: &EntryView, format: Format) -> String {
    if format == Format::Json {
        return json(e);
    }
    let rows = [
        ("key", e.key.clone()),
        ("client id", e.client_id.clone()),
        ("token url", e.token_url.clone()),
        ("scopes", e.scopes.join(" ")),
        ("audience", e.audience.clone().unwrap_or_else(|| "-".into())),
        (
            "granted scope",
            e.granted_scope.clone().unwrap_or_else(|| "-".into()),
        ),
        ("version", e.version.to_string()),
        ("expires in", human_ms(e.expires_in_ms, "expired")),
        (
            "refresh in",
            if e.renewable {
                human_ms(e.refresh_in_ms, "due")
            } else {
                "never (not renewable)".into()
            },
        ),
        (
            "last used",
            format!("{} ago", human_ms(e.last_used_ms_ago.max(1), "0s")),
        ),
        ("fleet key", e.fleet_key_id.clone()),
        (
            "sealed",
            format!(
                "{} bytes (token and refresh spec; not readable here)",
                e.sealed_bytes
            ),
        ),
    ];
    let mut t = table(&["FIELD", "VALUE"]);
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    format!("{t}\n")
}

/// `what: n`.
pub fn count(what: &str, n: u64, format: Format) -> String {
    match format {
        Format::Json => json(&serde_json::json!({ what.replace(' ', "_"): n })),
        Format::Table => format!("{what}: {n}\n"),
    }
}

/// A table from string rows, or the JSON value as is.
pub fn rows(
    header: &[&str],
    rows: Vec<Vec<String>>,
    value: &impl Serialize,
    format: Format,
) -> String {
    if format == Format::Json {
        return json(value);
    }
    let mut t = table(header);
    for r in rows {
        t.add_row(r);
    }
    format!("{t}\n")
}
