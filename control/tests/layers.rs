//! The crate's layering, checked from the source text: every `crate::` / `super::`
//! path (and every path through a child module) in `src/` is resolved to the file it
//! names, and
//!
//! 1. each top-level module only imports the layers below it ([`ALLOWED`]);
//! 2. lower layers do not use the crates that belong to higher ones (no axum below
//!    `http/`, no redb outside `store/`, ...: [`FORBIDDEN_CRATES`]);
//! 3. the file graph has no cycle (a `mod.rs` that re-exports a child counts as
//!    importing it, so a child must not import its siblings through the parent).
//!
//! Unit-test modules (`#[cfg(test)] mod tests` at the end of a file) are left out.
//! Run `cargo test -p rollout-control --test layers -- --nocapture` to see the graph.

// Test code: failing loudly is its job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules it may import. `lib` (lib.rs) declares
/// and re-exports everything; nothing may import through it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("validate", &[]),
    ("testutil", &[]),
    ("api", &["util"]),
    ("store", &["api", "util"]),
    ("report", &["store", "api", "util"]),
    ("engine", &["report", "store", "api", "util"]),
    ("notify", &["engine", "store", "api", "util"]),
    (
        "http",
        &["notify", "engine", "report", "store", "api", "util"],
    ),
    ("cli", &["api", "util", "validate"]),
    (
        "serve",
        &["http", "notify", "engine", "store", "api", "util"],
    ),
];

/// Top-level module -> external crates it must not name.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("util", &["axum", "redb", "tokio", "ureq", "clap"]),
    ("validate", &["axum", "redb", "tokio", "ureq"]),
    ("api", &["axum", "redb", "tokio", "ureq"]),
    ("store", &["axum", "ureq", "clap"]),
    ("report", &["axum", "redb", "ureq", "clap"]),
    ("engine", &["axum", "redb", "clap"]),
    ("notify", &["axum", "redb", "clap"]),
    ("http", &["redb", "ureq", "clap"]),
    ("cli", &["axum", "redb", "tokio"]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` except the binary's `main.rs`, as module paths
/// (`["engine", "source", "mod"]` for `src/engine/source/mod.rs`).
fn files(dir: &Path, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            files(&p, &next, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if prefix.is_empty() && stem == "main" {
                continue;
            }
            let mut m = prefix.to_vec();
            m.push(stem.to_string());
            out.push(m);
        }
    }
}

fn path_of(module: &[String]) -> PathBuf {
    let mut p = src_dir();
    for m in module {
        p.push(m);
    }
    p.set_extension("rs");
    p
}

/// The module a file defines: `engine/mod.rs` and `engine.rs` are `engine`,
/// `lib.rs` is the crate root (empty).
fn module_of(file: &[String]) -> Vec<String> {
    match file {
        [only] if only == "lib" => Vec::new(),
        [rest @ .., last] if last == "mod" => rest.to_vec(),
        all => all.to_vec(),
    }
}

/// The file a module path names: the deepest prefix that is a file.
fn resolve(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    for n in (1..=path.len()).rev() {
        let prefix = &path[..n];
        let plain = prefix.to_vec();
        if known.contains(&plain) {
            return Some(plain);
        }
        let mut with_mod = prefix.to_vec();
        with_mod.push("mod".to_string());
        if known.contains(&with_mod) {
            return Some(with_mod);
        }
    }
    None
}

/// The text without comments, string literals and the trailing unit-test module.
fn code_of(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(body.len());
    let b: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == 'r' && (next == Some('"') || next == Some('#')) {
            // raw string: r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) == Some(&'"') {
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
                continue;
            }
        }
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
            continue;
        }
        if c == '\'' {
            // a char literal ('x', '\n', '{'), not a lifetime ('a)
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            if b.get(i + 2) == Some(&'\'') {
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the path starting at `s` (just after a `crate::`-like root): segments
/// and, after a `::{`, every path of the brace tree. Returns the paths and the
/// characters read.
fn paths_at(s: &[char]) -> (Vec<Vec<String>>, usize) {
    fn seg(s: &[char], i: &mut usize) -> Option<String> {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
        let start = *i;
        while *i < s.len() && is_ident(s[*i]) {
            *i += 1;
        }
        (*i > start).then(|| s[start..*i].iter().collect())
    }
    fn sep(s: &[char], i: &mut usize) -> bool {
        let mut j = *i;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if s.get(j) == Some(&':') && s.get(j + 1) == Some(&':') {
            *i = j + 2;
            true
        } else {
            false
        }
    }
    fn tree(s: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if s.get(*i) == Some(&'{') {
                *i += 1;
                loop {
                    while *i < s.len() && (s[*i].is_whitespace() || s[*i] == ',') {
                        *i += 1;
                    }
                    if *i >= s.len() || s[*i] == '}' {
                        *i += 1;
                        return;
                    }
                    let before = *i;
                    tree(s, i, path.clone(), out);
                    // skip `as name`
                    while *i < s.len() && !matches!(s[*i], ',' | '}') {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
            }
            match seg(s, i) {
                Some(name) if name == "self" => {}
                Some(name) => path.push(name),
                None => {
                    // `*` or the end of the path
                    if s.get(*i) == Some(&'*') {
                        *i += 1;
                    }
                    out.push(path);
                    return;
                }
            }
            if !sep(s, i) {
                out.push(path);
                return;
            }
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    tree(s, &mut i, Vec::new(), &mut out);
    (out, i)
}

/// Module paths (absolute, from the crate root) that a file's code names, and the
/// external crates it names.
fn references(
    file: &[String],
    code: &str,
    children: &BTreeSet<String>,
) -> (Vec<Vec<String>>, BTreeSet<String>) {
    let module = module_of(file);
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut crates = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        if !at_word_start || !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let followed_by_path = chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':');
        if !followed_by_path {
            continue;
        }
        let rest = &chars[i + 2..];
        let base: Option<Vec<String>> = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(module.clone()),
            "super" => {
                let mut m = module.clone();
                m.pop();
                Some(m)
            }
            w if children.contains(w) => Some({
                let mut m = module.clone();
                m.push(w.to_string());
                m
            }),
            w => {
                crates.insert(w.to_string());
                None
            }
        };
        if let Some(base) = base {
            let (paths, read) = paths_at(rest);
            i += 2 + read;
            for p in paths {
                let mut full = base.clone();
                let mut p = p;
                // `super::super::x`
                while p.first().map(String::as_str) == Some("super") {
                    p.remove(0);
                    full.pop();
                }
                full.extend(p);
                out.push(full);
            }
        }
    }
    (out, crates)
}

/// Child modules a file declares (`mod x;` / `pub mod x;`).
fn declared_children(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let t = line.trim();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("mod ") {
            if let Some(name) = rest.strip_suffix(';') {
                out.insert(name.trim().to_string());
            }
        }
    }
    out
}

fn top(file: &[String]) -> String {
    match file {
        [only] => only.clone(),
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

struct Graph {
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    crates: BTreeMap<Vec<String>, BTreeSet<String>>,
}

fn graph() -> Graph {
    let mut all = Vec::new();
    files(&src_dir(), &[], &mut all);
    let known: BTreeSet<Vec<String>> = all.iter().cloned().collect();
    let mut edges = BTreeMap::new();
    let mut crates = BTreeMap::new();
    for f in &all {
        let text = std::fs::read_to_string(path_of(f)).unwrap();
        let code = code_of(&text);
        let children = declared_children(&code);
        let (refs, names) = references(f, &code, &children);
        let mut to = BTreeSet::new();
        for r in refs {
            if let Some(target) = resolve(&r, &known) {
                if &target != f {
                    to.insert(target);
                }
            }
        }
        edges.insert(f.clone(), to);
        crates.insert(f.clone(), names);
    }
    Graph { edges, crates }
}

fn show(f: &[String]) -> String {
    format!("src/{}.rs", f.join("/"))
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        n: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        t.index.insert(v, t.n);
        t.low.insert(v, t.n);
        t.n += 1;
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        n: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn imports_point_down_and_never_in_a_cycle() {
    let g = graph();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let forbidden: BTreeMap<&str, &[&str]> = FORBIDDEN_CRATES.iter().copied().collect();
    let mut problems = Vec::new();
    for (from, tos) in &g.edges {
        let layer = top(from);
        println!("{}", show(from));
        for to in tos {
            println!("    -> {}", show(to));
        }
        if layer == "lib" {
            continue;
        }
        let Some(ok) = allowed.get(layer.as_str()) else {
            problems.push(format!(
                "{}: top-level module {layer:?} has no place in the layer table",
                show(from)
            ));
            continue;
        };
        for to in tos {
            let target = top(to);
            if target == "lib" {
                problems.push(format!(
                    "{} imports through the crate root ({})",
                    show(from),
                    show(to)
                ));
            } else if target != layer && !ok.contains(&target.as_str()) {
                problems.push(format!(
                    "{} ({layer}) imports {} ({target}): {layer} may import only {ok:?}",
                    show(from),
                    show(to)
                ));
            }
        }
        for c in &g.crates[from] {
            if forbidden
                .get(layer.as_str())
                .is_some_and(|f| f.contains(&c.as_str()))
            {
                problems.push(format!("{} ({layer}) uses the crate {c}", show(from)));
            }
        }
    }
    for comp in cycles(&g.edges) {
        let names: Vec<String> = comp.iter().map(|f| show(f)).collect();
        problems.push(format!("import cycle: {}", names.join(" <-> ")));
    }
    let n_files = g.edges.len();
    let n_edges: usize = g.edges.values().map(BTreeSet::len).sum();
    println!("{n_files} files, {n_edges} imports between them");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_paths() {
    let children: BTreeSet<String> = ["window".to_string()].into_iter().collect();
    let file = vec!["engine".to_string(), "mod".to_string()];
    let code = code_of(
        "use crate::api::{status::{A, B}, Plan as P};\nuse super::x;\n\
         pub use window::Series;\nfn f() { crate::util::now(); let s = \"crate::cli::x\"; }\n\
         // crate::http::y\n#[cfg(test)]\nmod tests { use crate::cli::z; }\n",
    );
    let (refs, crates) = references(&file, &code, &children);
    let refs: BTreeSet<String> = refs.iter().map(|r| r.join("::")).collect();
    let want: BTreeSet<String> = [
        "api::status::A",
        "api::status::B",
        "api::Plan",
        "x",
        "engine::window::Series",
        "util::now",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(refs, want);
    assert!(crates.is_empty(), "{crates:?}");
}
