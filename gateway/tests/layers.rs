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

/// The top-level members of a `use` group, from just after its `{`: `a, b::{c, d}, e}` gives
/// `a`, `b::{c, d}` and `e`.
fn group_members(group: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.retain(|m| !m.trim().is_empty());
    members
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
            // Top-level names of the group: each member's first segment.
            for member in group_members(group) {
                let name: String = (member.trim_start().chars())
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
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

/// Every path `code` names from `crate::`, `super::` or `self::` on, as segments (the prefix
/// word first), groups expanded: `use super::{a, b::c}` gives `super a` and `super b c`.
fn paths(code: &str) -> Vec<Vec<String>> {
    fn word(s: &str) -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }
    let mut found = Vec::new();
    for prefix in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let start = &rest[at..];
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // The path's segments up to a group, then each top-level member of the group.
            let mut segments = Vec::new();
            let mut tail = start;
            loop {
                let w = word(tail);
                if w.is_empty() {
                    break;
                }
                tail = &tail[w.len()..];
                segments.push(w);
                match tail.strip_prefix("::") {
                    Some(t) => tail = t,
                    None => break,
                }
            }
            if let Some(group) = tail.strip_prefix('{') {
                for member in group_members(group) {
                    let mut p = segments.clone();
                    p.extend(
                        member
                            .trim()
                            .split("::")
                            .map(word)
                            .filter(|w| !w.is_empty()),
                    );
                    found.push(p);
                }
            } else {
                found.push(segments);
            }
        }
    }
    found
}

/// The module a source file holds, as its path from the crate root (`lib.rs`: the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let mut m: Vec<String> = file
        .strip_prefix(src)
        .unwrap()
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
        m.pop();
    }
    m
}

/// Import circles between the library's files: modules that use each other, directly or
/// through others. A module's use of its own ancestors (`super::` up to the layer) is not
/// counted: a parent holds what its children share.
fn import_circles(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: std::collections::BTreeMap<Vec<String>, BTreeSet<Vec<String>>> =
        std::collections::BTreeMap::new();
    for file in &files {
        let from = module_of(src, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for path in paths(&code) {
            let (mut base, rest) = match path[0].as_str() {
                "crate" => (Vec::new(), &path[1..]),
                "self" => (from.clone(), &path[1..]),
                _ => {
                    let ups = path.iter().take_while(|s| *s == "super").count();
                    let mut base = from.clone();
                    base.truncate(base.len().saturating_sub(ups));
                    (base, &path[ups..])
                }
            };
            base.extend(rest.iter().cloned());
            // The longest prefix that is a module of its own.
            let Some(to) = (0..=base.len())
                .rev()
                .map(|n| base[..n].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            if to != from && !from.starts_with(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Strongly connected components of more than one module (Tarjan).
    struct Walk<'a> {
        edges: &'a std::collections::BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: std::collections::BTreeMap<Vec<String>, (usize, usize)>,
        stack: Vec<Vec<String>>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl Walk<'_> {
        fn visit(&mut self, v: &Vec<String>) {
            self.index.insert(v.clone(), (self.next, self.next));
            self.next += 1;
            self.stack.push(v.clone());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.index[w].1.min(self.index[v].1);
                    self.index.get_mut(v).unwrap().1 = low;
                } else if self.stack.contains(w) {
                    let low = self.index[w].0.min(self.index[v].1);
                    self.index.get_mut(v).unwrap().1 = low;
                }
            }
            if self.index[v].0 == self.index[v].1 {
                let mut circle = Vec::new();
                while let Some(w) = self.stack.pop() {
                    let done = &w == v;
                    circle.push(w.join("::"));
                    if done {
                        break;
                    }
                }
                if circle.len() > 1 {
                    circle.sort();
                    self.found.push(circle);
                }
            }
        }
    }
    let mut walk = Walk {
        edges: &edges,
        index: std::collections::BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in &modules {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_modules_use_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let circles = import_circles(&src);
    assert!(
        circles.is_empty(),
        "modules that use each other (move what they share into one of them, or below both):\n{}",
        circles
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_circle_finder_sees_a_circle_through_a_group_and_super() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a/b.rs"), "use super::{d, c::{C, D}};\n").unwrap();
    std::fs::write(
        src.join("a/c.rs"),
        "// crate::a::b\nfn f() { crate::a::b::g() }\n",
    )
    .unwrap();
    assert_eq!(import_circles(src), [["a::b", "a::c"]]);
    std::fs::write(src.join("a/c.rs"), "// crate::a::b is only named here\n").unwrap();
    assert!(import_circles(src).is_empty());
}
