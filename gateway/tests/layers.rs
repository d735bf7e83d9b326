//! The library's top-level modules form layers: each may use the modules below it and none
//! above. This reads every source file and fails on any reference that goes up (or any new
//! top-level module not placed in a layer), so a cycle cannot come back unnoticed.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top. `ARCHITECTURE.md` describes each layer.
const LAYERS: &[&str] = &[
    "secret",
    "telemetry",
    "http",
    "outbound",
    "token",
    "cacheclient",
    "store",
    "lifecycle",
    "cachenode",
    "auth",
    "issuer",
    "proxy",
    "config",
    "node",
    "demo",
];

/// Source text without comments (doc links name modules without depending on them) and
/// without string literals' contents.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_string = false;
                    out.push('"');
                }
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            // A char literal that is a quote (`'"'`) must not open a string.
            '\'' if chars.peek() == Some(&'"') => {
                out.push('\'');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules `code` refers to through `crate::`, including those inside
/// `use crate::{a, b::c}`.
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: depth-one segments before `::`, `,` or `}`.
            let mut depth = 0;
            let mut name = String::new();
            let mut taking = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                        }
                        taking = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && taking {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if c == ':' && !name.is_empty() {
                        taking = false;
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    for m in &declared {
        assert!(
            LAYERS.contains(m),
            "module `{m}` is in no layer: place it in LAYERS"
        );
    }
    // A re-export at the crate root would let any module reach any other through `crate::x`.
    assert!(
        !lib.lines().any(|l| l.starts_with("pub use ")),
        "lib.rs re-exports items: use them by their module's path"
    );
    let mut violations = Vec::new();
    for module in &declared {
        let layer = LAYERS.iter().position(|l| l == module).unwrap();
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        for file in files {
            let code = code_of(&std::fs::read_to_string(&file).unwrap());
            for used in references(&code) {
                let Some(at) = LAYERS.iter().position(|l| *l == used) else {
                    continue;
                };
                if at > layer {
                    violations.push(format!(
                        "{} ({module}) uses `crate::{used}`, a layer above it",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_reference_scanner_sees_groups_and_skips_comments_and_strings() {
    let code = code_of(
        "use crate::{token::{A, B}, store, http::Body};\n// crate::config\nlet s = \"crate::proxy\"; crate::auth::x(); let q = '\"'; crate::node::run();\n",
    );
    let found: Vec<String> = references(&code).into_iter().collect();
    assert_eq!(found, ["auth", "http", "node", "store", "token"]);
}
