//! The documentation stays true: every configuration it shows (each `yaml` block of the README
//! and `docs/`) passes `gateway check-config --no-secrets`, and every option the configuration
//! accepts is documented somewhere, so that none is added or renamed without its documentation.

use std::path::{Path, PathBuf};

use crate::support::gateway_command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README and every page under `docs/`.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut pages = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut pages);
    pages.sort();
    pages
}

/// The ```` ```yaml ```` blocks of `text`.
fn yaml_blocks(text: &str) -> Vec<String> {
    text.split("\n```yaml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap().to_owned() + "\n")
        .collect()
}

#[test]
fn every_configuration_the_documentation_shows_is_valid() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for block in yaml_blocks(&text) {
            // A block is a whole configuration or a part of one; parts get listeners.
            let parsed: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(&block)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}\n{block}", page.display()));
            let mut yaml = block.clone();
            if !parsed.contains_key("admin") {
                yaml.insert_str(0, "admin: { listen: 127.0.0.1:9090 }\n");
            }
            if !parsed.contains_key("listen") {
                yaml.insert_str(0, "listen: 127.0.0.1:8080\n");
            }
            let (mut cmd, dir) = gateway_command(&["check-config", "--no-secrets"], &yaml, &[]);
            // A relative manifests directory is the configuration file's neighbour.
            std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}:\n{block}\n{}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} configurations found");
}

/// The text of every `pub struct Raw…` in `gateway/src/config`: the file's shape, each
/// section's beside the code that reads it.
fn raw_shapes() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let mut inside = false;
                for line in text.lines() {
                    inside |= line.starts_with("pub struct Raw");
                    if inside {
                        out.push_str(line);
                        out.push('\n');
                    }
                    inside &= line != "}";
                }
            }
        }
    }
    let mut shapes = String::new();
    walk(&root().join("gateway/src/config"), &mut shapes);
    assert!(
        shapes.contains("pub struct RawConfig"),
        "the top level's shape was not found"
    );
    shapes
}

/// The configuration's option names, as YAML spells them: the fields of the `Raw…` structs
/// (camel case unless renamed).
fn options() -> Vec<String> {
    let raw = raw_shapes();
    let mut names = Vec::new();
    let mut renamed = None;
    for line in raw.lines() {
        let line = line.trim();
        if line.starts_with("#[serde(") && !line.contains("rename_all") {
            if let Some(rest) = line.split("rename = \"").nth(1) {
                renamed = rest.split('"').next().map(str::to_owned);
            }
            continue;
        }
        let Some(field) = line
            .strip_prefix("pub ")
            .and_then(|l| l.split_once(':'))
            .map(|(f, _)| f)
            .filter(|f| f.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        else {
            continue;
        };
        let name = renamed.take().unwrap_or_else(|| {
            let mut parts = field.split('_');
            let first = parts.next().unwrap_or_default().to_owned();
            parts.fold(first, |mut acc, p| {
                let mut chars = p.chars();
                if let Some(c) = chars.next() {
                    acc.push(c.to_ascii_uppercase());
                    acc.push_str(chars.as_str());
                }
                acc
            })
        });
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_option_of_the_configuration_is_documented() {
    let docs: String = pages()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let options = options();
    assert!(options.len() > 150, "found {} options", options.len());
    let documented = |name: &str| {
        docs.match_indices(name).any(|(at, _)| {
            let before = docs[..at].chars().next_back().unwrap_or(' ');
            let after = docs[at + name.len()..].chars().next().unwrap_or(' ');
            matches!(before, '`' | '.' | ' ' | '{' | '\n')
                && matches!(after, '`' | ':' | '.' | ',' | ' ' | '}' | '\n')
        })
    };
    let missing: Vec<&String> = options.iter().filter(|o| !documented(o)).collect();
    assert!(missing.is_empty(), "undocumented options: {missing:?}");
}

#[test]
fn every_alert_names_a_runbook_that_exists() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let named: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: docs/runbooks.md#"))
        .collect();
    assert_eq!(
        named.len(),
        rules.matches("- alert:").count(),
        "every alert names one"
    );
    for anchor in named {
        assert!(
            anchors.iter().any(|a| a == anchor),
            "no runbook section #{anchor}"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .collect::<String>()
        .replace(' ', "-")
}

#[test]
fn every_link_between_the_pages_leads_somewhere() {
    let mut pages = pages();
    pages.push(root().join("ARCHITECTURE.md"));
    let anchors = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(' ')
                    .filter(|_| l.starts_with('#'))
            })
            .map(anchor)
            .collect()
    };
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (at, _) in text.match_indices("](") {
            let href: String = text[at + 2..].chars().take_while(|c| *c != ')').collect();
            if href.starts_with("http") || href.contains(' ') {
                continue;
            }
            links += 1;
            let (file, fragment) = href.split_once('#').unwrap_or((&href, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            assert!(target.exists(), "{}: {href} leads nowhere", page.display());
            if !fragment.is_empty() && target.extension().is_some_and(|e| e == "md") {
                assert!(
                    anchors(&target).iter().any(|a| a == fragment),
                    "{}: {href}: no such section",
                    page.display()
                );
            }
        }
    }
    assert!(links > 30, "only {links} links");
}

/// The kinds the documentation lists (`docs/reference/routes.md`, "Middleware kinds") are the
/// gateway's table of them, with the same Traefik Hub names and reference pages.
#[test]
fn the_documented_middleware_kinds_are_the_gateways() {
    let page = root().join("docs/reference/routes.md");
    let text = std::fs::read_to_string(&page).unwrap();
    let section = text
        .split("## Middleware kinds")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Middleware kinds section");
    let cell = |c: &str| c.trim().trim_matches('`').to_owned();
    let documented: Vec<(String, Option<String>, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            let traefik = Some(cell(cells[2])).filter(|t| t != "—");
            let href = cells[3]
                .split("](")
                .nth(1)
                .unwrap()
                .trim_end_matches([')', ' ']);
            let file = match href.split_once('#') {
                Some(("", _)) => "routes.md",
                Some((file, _)) => file,
                None => href,
            };
            (cell(cells[0]), traefik, format!("reference/{file}"))
        })
        .collect();
    let table: Vec<(String, Option<String>, String)> = gateway::config::middleware::KINDS
        .iter()
        .map(|k| {
            (
                k.name.to_owned(),
                k.traefik.map(str::to_owned),
                k.page.to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, table);
    for (name, _, page) in &table {
        let text = std::fs::read_to_string(root().join("docs").join(page)).unwrap();
        assert!(
            text.contains(&format!("{name}:")),
            "{page} shows no configuration of {name}"
        );
    }
}
