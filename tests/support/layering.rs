//! The import graph of a crate's top-level components (`config`, `server`,
//! `upstream`, ...) and the circles in it, for `tests/layering.rs`.
//!
//! It reads `src/` as text, so it needs no compiler: comments and literals
//! are skipped, `crate::` and `super::` paths are read off the tokens, and
//! `#[cfg(test)]` items are left out, since tests may reach anywhere. The
//! crate root only declares and re-exports, so it is no source of edges.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// Identifiers, `::` and single punctuation, each with its line.
type Toks = Vec<(String, usize)>;
/// Each edge between two components, with one file and line that makes it.
pub type Edges = BTreeMap<(String, String), (PathBuf, usize)>;

/// Comments and literals are skipped: a `crate::` in prose or in a string is no import.
fn lex(text: &str) -> Toks {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, x)| c.get(i + k) == Some(&x));
    let word = |i: usize| c.get(i).is_some_and(|x| x.is_alphanumeric() || *x == '_');
    let find = |from: usize, s: &str| (from..c.len()).find(|&j| at(j, s)).map(|j| j + s.len());
    let (mut toks, mut i, mut line) = (Vec::new(), 0, 1);
    while i < c.len() {
        let (start, mut depth) = (i, 0);
        i = if at(i, "//") {
            find(i, "\n").unwrap_or(c.len())
        } else if at(i, "/*") {
            while i < c.len() && (i == start || depth > 0) {
                depth += at(i, "/*") as i32 - at(i, "*/") as i32;
                i += if at(i, "/*") || at(i, "*/") { 2 } else { 1 };
            }
            i
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i + 1
        } else if at(i, "'\\") {
            find(i + 3, "'").unwrap_or(c.len())
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i + 3
        } else if word(i) {
            while word(i) {
                i += 1;
            }
            let w: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&x| x == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            match (w.as_str(), c.get(i + hashes)) {
                ("r" | "br", Some('"')) => find(i + hashes + 1, &close).unwrap_or(c.len()),
                _ => {
                    toks.push((w, line));
                    i
                }
            }
        } else {
            let len = if at(i, "::") { 2 } else { 1 };
            if !c[i].is_whitespace() {
                toks.push((c[i..i + len].iter().collect(), line));
            }
            i + len
        };
        i = i.min(c.len());
        line += c[start..i].iter().filter(|&&x| x == '\n').count();
    }
    toks
}

fn is(toks: &Toks, i: usize, tok: &str) -> bool {
    toks.get(i).is_some_and(|t| t.0 == tok)
}

/// Removes every `#[cfg(test)]` item, up to its `;` or its closing brace;
/// returns the names of `#[cfg(test)] mod NAME;` files.
fn drop_tests(toks: &mut Toks) -> Vec<String> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let (mut files, mut k) = (Vec::new(), 0);
    while k + CFG_TEST.len() <= toks.len() {
        if (0..CFG_TEST.len()).any(|n| toks[k + n].0 != CFG_TEST[n]) {
            k += 1;
            continue;
        }
        let (mut depth, mut end) = (0, toks.len());
        for (j, (tok, _)) in toks.iter().enumerate().skip(k + CFG_TEST.len()) {
            match tok.as_str() {
                "}" if depth == 1 => end = j + 1,
                ";" if depth == 0 => end = j + 1,
                "{" | "(" | "[" => depth += 1,
                "}" | ")" | "]" => depth -= 1,
                _ => {}
            }
            if end == j + 1 {
                break;
            }
        }
        if is(toks, end - 3, "mod") && is(toks, end - 1, ";") {
            files.push(toks[end - 2].0.clone());
        }
        toks.drain(k..end);
    }
    files
}

/// The first segment under the crate root of each `crate::` and `super::`
/// path, with its line, for code in `module`; inline `mod x { }` are followed.
fn references(toks: &Toks, module: &[String]) -> Vec<(String, usize)> {
    let (mut scopes, mut depth, mut out) = (vec![(module.to_vec(), 0)], 0, Vec::new());
    for (i, (tok, line)) in toks.iter().enumerate() {
        let here = scopes.last().unwrap().0.clone();
        if tok == "{" {
            depth += 1;
            if i > 1 && is(toks, i - 2, "mod") {
                scopes.push(([here, vec![toks[i - 1].0.clone()]].concat(), depth));
            }
        } else if tok == "}" {
            if scopes.len() > 1 && scopes.last().unwrap().1 == depth {
                scopes.pop();
            }
            depth -= 1;
        } else if (tok == "crate" || tok == "super")
            && is(toks, i + 1, "::")
            && !(i > 0 && is(toks, i - 1, "::"))
        {
            let (mut base, mut j) = if tok == "crate" {
                (vec![], i + 2)
            } else {
                (here, i)
            };
            while is(toks, j, "super") && is(toks, j + 1, "::") {
                base.pop();
                j += 2;
            }
            if let Some(component) = base.first() {
                out.push((component.clone(), *line));
                continue;
            }
            // `crate::x`, or each item of `crate::{x, y::{z}}`.
            let (mut d, mut expecting) = (0, true);
            for (tok, l) in &toks[j..] {
                d += (tok == "{") as i32 - (tok == "}") as i32;
                if expecting && d <= 1 && tok != "{" {
                    out.push((tok.clone(), *l));
                }
                expecting = d == 1 && (tok == "{" || tok == ",");
                if d == 0 {
                    break;
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`, the crate roots are
/// empty; `None` for `bin/`, whose files are crates of their own.
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let stem = rel.with_extension("");
    let mut path: Vec<String> = stem.iter().map(|s| s.to_string_lossy().into()).collect();
    if path[0] == "bin" && path.len() > 1 {
        return None;
    }
    if path.last().unwrap() == "mod" || path == ["lib"] || path == ["main"] {
        path.pop();
    }
    Some(path)
}

/// One edge per pair of top-level components, from files outside the crate root.
pub fn edges(src: &Path) -> Edges {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let (mut parsed, mut test_only) = (Vec::new(), Vec::new());
    for file in files {
        let Some(module) = module_of(file.strip_prefix(src).unwrap()) else {
            continue;
        };
        let mut toks = lex(&fs::read_to_string(&file).unwrap());
        for name in drop_tests(&mut toks) {
            test_only.push([module.clone(), vec![name]].concat());
        }
        parsed.push((file, module, toks));
    }
    let components: BTreeSet<_> = parsed.iter().filter_map(|p| p.1.first().cloned()).collect();
    let mut edges = Edges::new();
    for (file, module, toks) in &parsed {
        let Some(from) = module.first() else { continue };
        if test_only.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        let shown = file.strip_prefix(src.parent().unwrap()).unwrap();
        for (to, line) in references(toks, module) {
            if &to != from && components.contains(&to) {
                let edge = edges.entry((from.clone(), to));
                edge.or_insert((shown.into(), line));
            }
        }
    }
    edges
}

/// For each edge on a circle, the circle it closes by the shortest way back,
/// from its smallest name round to it again; each circle once.
pub fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for (a, b) in edges.keys() {
        let mut came_from = BTreeMap::from([(b, b)]);
        let mut queue = VecDeque::from([b]);
        while let Some(n) = queue.pop_front() {
            for (_, m) in edges.keys().filter(|(x, _)| x == n) {
                if !came_from.contains_key(m) {
                    came_from.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        if !came_from.contains_key(a) {
            continue;
        }
        let mut circle = vec![a.clone()];
        while circle.last().unwrap() != b {
            circle.push(came_from[circle.last().unwrap()].to_string());
        }
        circle.reverse();
        let low = (0..circle.len()).min_by_key(|&k| &circle[k]).unwrap();
        circle.rotate_left(low);
        circle.push(circle[0].clone());
        found.insert(circle);
    }
    found.into_iter().collect()
}

pub fn report(edges: &Edges, cycles: &[Vec<String>]) -> String {
    let on: BTreeSet<_> = cycles.iter().flatten().collect();
    let on: Vec<_> = on.into_iter().cloned().collect();
    let mut out = format!(
        "{} components on import circles: {}\n",
        on.len(),
        on.join(", ")
    );
    for circle in cycles {
        out += &format!("\n{}\n", circle.join(" -> "));
        for pair in circle.windows(2) {
            let (file, line) = &edges[&(pair[0].clone(), pair[1].clone())];
            let (a, b, file) = (&pair[0], &pair[1], file.display());
            out += &format!("    {a} -> {b}: {file}:{line}\n");
        }
    }
    out
}
