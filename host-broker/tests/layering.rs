//! The module layering of host-broker (docs/architecture.md, "Layers") as a test: every
//! `crate::<module>` reference in `src/` must be an edge of [`ALLOWED`], and [`ALLOWED`]
//! itself has no cycle, so the dependency direction is one-way and a new back edge (the
//! kind that made `audit <-> metrics` and `policy <-> secrets`) fails here, naming the file
//! and the edge.
//!
//! A module is the first path component under `src/` (`proxy/tunnel.rs` is `proxy`,
//! `audit.rs` is `audit`). References are `crate::x` paths and the items of `crate::{..}`
//! groups, in code and in tests; full-line comments are skipped (doc links are not
//! dependencies), a trailing comment naming `crate::x` counts (fails safe). `crate::Item`
//! (a capitalised name) is a re-export of the crate root, which only the daemon layer uses.
//! The binary (`main.rs`, `cli/`) is another crate and uses the library by its public API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who may use whom, lowest layers first. The root (`lib.rs`) may use anything.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves.
    ("fair", &[]),
    ("fsutil", &[]),
    ("idle", &[]),
    ("inbox", &[]),
    ("outcome", &[]),
    ("transport", &[]),
    ("vm_runtime", &[]),
    ("upstream", &["fair"]),
    ("tls", &["fsutil"]),
    ("policy", &["outcome"]),
    ("secrets", &["policy"]),
    ("metrics", &["outcome", "secrets"]),
    ("audit", &["metrics", "outcome"]),
    (
        "state",
        &["audit", "fair", "policy", "secrets", "tls", "upstream"],
    ),
    ("control", &["audit", "state"]),
    ("dns", &["audit", "state"]),
    (
        "proxy",
        &[
            "audit", "control", "fair", "idle", "policy", "secrets", "state", "tls", "upstream",
        ],
    ),
    (
        "dispatch",
        &["control", "dns", "proxy", "state", "transport"],
    ),
    ("refresher", &["state"]),
    (
        "broker",
        &[
            "audit",
            "dispatch",
            "fair",
            "inbox",
            "metrics",
            "policy",
            "proxy",
            "refresher",
            "secrets",
            "state",
            "tls",
            "transport",
            "upstream",
            "vm_runtime",
        ],
    ),
    // The daemon layer may use the whole core (its modules and the root's re-exports);
    // no row above names it, so the core never uses the daemon layer.
    (
        "daemon",
        &[
            "root",
            "audit",
            "broker",
            "control",
            "dispatch",
            "dns",
            "fair",
            "fsutil",
            "idle",
            "inbox",
            "metrics",
            "outcome",
            "policy",
            "proxy",
            "refresher",
            "secrets",
            "state",
            "tls",
            "transport",
            "upstream",
            "vm_runtime",
        ],
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file under `src/` belongs to (`None`: the root or the binary).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" => None,
        m => Some(m.to_owned()),
    }
}

/// The leading identifier of `s` (after whitespace).
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `src` names through `crate::`: `crate::a::..`, and every item of
/// `crate::{a::.., b, c::{..}}`. A capitalised name (`crate::Broker`) is `root`.
fn crate_refs(src: &str) -> BTreeSet<String> {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut add = |name: &str| {
        if name.is_empty() || name == "self" {
            return;
        }
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            out.insert("root".to_owned());
        } else {
            out.insert(name.to_owned());
        }
    };
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // Not the tail of another identifier (`my_crate::x`).
        let prev = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        add(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        add(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            add(ident(rest));
        }
    }
    out
}

/// Every cross-module edge in `src/`: `(from, to) -> files`.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src").to_path_buf();
        let Some(from) = module_of(&rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read source");
        for to in crate_refs(&text) {
            if to != from {
                out.entry((from.clone(), to))
                    .or_default()
                    .push(format!("src/{}", rel.display()));
            }
        }
    }
    out
}

fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect()
}

/// The edges not in `table`, one line each, naming the files.
fn violations(
    edges: &BTreeMap<(String, String), Vec<String>>,
    table: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<String> {
    edges
        .iter()
        .filter(|((from, to), _)| {
            !table
                .get(from.as_str())
                .is_some_and(|deps| deps.contains(to.as_str()))
        })
        .map(|((from, to), files)| {
            format!(
                "{from} -> {to} (in {}) is not an allowed edge; fix the dependency or, if the \
                 direction is right, add it to ALLOWED and docs/architecture.md \"Layers\"",
                files.join(", ")
            )
        })
        .collect()
}

/// A cycle in `table`, as `a -> b -> .. -> a`, if there is one.
fn cycle(table: &BTreeMap<&str, BTreeSet<&str>>) -> Option<String> {
    fn visit<'a>(
        m: &'a str,
        table: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|x| *x == m) {
            let mut c = path[i..].to_vec();
            c.push(m);
            return Some(c.join(" -> "));
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for d in table.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, table, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in table.keys() {
        if let Some(c) = visit(m, table, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn module_dependencies_follow_the_layers() {
    let found = edges();
    assert!(
        found.len() > 20,
        "the scan found only {} edges; is src/ where it used to be?",
        found.len()
    );
    let bad = violations(&found, &allowed());
    assert!(bad.is_empty(), "layering violated:\n{}", bad.join("\n"));
}

#[test]
fn the_layers_have_no_cycle() {
    let table = allowed();
    assert_eq!(cycle(&table), None, "ALLOWED has a cycle");
    // Every module under src/ has a row (a new module must be placed in a layer).
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    for f in files {
        let rel = f.strip_prefix(src_dir()).unwrap().to_path_buf();
        if let Some(m) = module_of(&rel) {
            assert!(
                table.contains_key(m.as_str()),
                "module {m} (src/{}) has no row in ALLOWED",
                rel.display()
            );
        }
    }
}

#[test]
fn the_check_catches_a_back_edge() {
    // The scanner reads groups, nested groups and plain paths, and skips comments.
    let refs = crate_refs(
        "use crate::{audit::{self, AuditRecord}, policy::Policy, Broker};\n\
         /// [`crate::dns`] in a doc comment\n\
         let x = crate::secrets::CredentialSet::empty(); my_crate::ignored();\n\
         pub(crate) fn f() {}",
    );
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(refs, ["audit", "policy", "root", "secrets"]);
    // policy -> secrets (the edge this layering removed) is reported with its file.
    let mut found = BTreeMap::new();
    found.insert(
        ("policy".to_owned(), "secrets".to_owned()),
        vec!["src/policy/model.rs".to_owned()],
    );
    let bad = violations(&found, &allowed());
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].starts_with("policy -> secrets (in src/policy/model.rs)"),
        "{}",
        bad[0]
    );
    // And a table with a back edge has a cycle.
    let mut table = allowed();
    table.get_mut("metrics").unwrap().insert("audit");
    assert_eq!(cycle(&table).as_deref(), Some("audit -> metrics -> audit"));
}
