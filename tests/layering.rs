//! The crate's top-level components (`config`, `server`, `upstream`, ...) form layers: each
//! uses only those below it, so a newcomer reads the crate from the bottom up, and there
//! is no import circle. A module may use anything inside its own component; tests
//! (`#[cfg(test)]` items) may reach anywhere.

mod support;

use std::fs;
use std::path::Path;

use support::layering::{Edges, cycles, edges, report};

#[test]
fn top_level_components_import_no_circle() {
    let edges = edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let cycles = cycles(&edges);
    assert!(cycles.is_empty(), "{}", report(&edges, &cycles));
}

/// The components from the bottom up, as the README lists them: each may use only those
/// before it.
const LAYERS: &[&str] = &[
    "vars", "outcome", "util", "callback", "observe", "dedup", "upstream", "openapi", "respond",
    "pipeline", "server", "config", "app", "cli",
];

#[test]
fn every_component_uses_only_those_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut unlisted = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !["lib", "main"].contains(&name.as_str()) && !LAYERS.contains(&name.as_str()) {
            unlisted.push(name);
        }
    }
    assert!(
        unlisted.is_empty(),
        "components missing from LAYERS: {unlisted:?}"
    );
    let rank = |c: &str| LAYERS.iter().position(|l| *l == c);
    let upward: Vec<String> = edges(&src)
        .iter()
        .filter(|((from, to), _)| rank(to) > rank(from))
        .map(|((from, to), (file, line))| format!("{from} -> {to}: {}:{line}", file.display()))
        .collect();
    assert!(
        upward.is_empty(),
        "imports from a layer above:\n{}",
        upward.join("\n")
    );
}

/// A `src/` in a temporary directory from `== path` lines, each followed by the file.
fn tree(spec: &str) -> (tempfile::TempDir, Edges) {
    let dir = tempfile::tempdir().unwrap();
    for file in spec.split("== ").skip(1) {
        let (path, text) = file.split_once('\n').unwrap();
        let path = dir.path().join("src").join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let edges = edges(&dir.path().join("src"));
    (dir, edges)
}

#[test]
fn a_circle_through_grouped_inline_and_super_paths_is_found() {
    let (_dir, edges) = tree(
        "
== lib.rs
pub mod a; pub mod b; pub mod c;
use crate::c::x;
== a.rs
//! Uses [`crate::c`] in prose only.
use crate::{
    b::{self, f},
};
== b/mod.rs
pub mod inner;
== b/inner.rs
fn g() {
    super::super::c::h();
}
== c.rs
pub fn h() { let _ = '{'; }
mod deep {
    fn i() { super::super::a::j() }
}
",
    );
    let found = cycles(&edges);
    assert_eq!(found, [["a", "b", "c", "a"]], "{edges:?}");
    let report = report(&edges, &found);
    for site in [
        "a -> b: src/a.rs:3",
        "b -> c: src/b/inner.rs:2",
        "c -> a: src/c.rs:3",
    ] {
        assert!(report.contains(site), "{site} not in\n{report}");
    }
}

#[test]
fn comments_literals_and_tests_make_no_circle() {
    let (_dir, edges) = tree(
        r###"
== lib.rs
pub mod a; pub mod b;
== a.rs
use crate::b::{f, g as _};
== b/mod.rs
/// See crate::a::g.
// use crate::a;
/* crate::a::g() /* nested */ crate::a */
pub fn f() -> &'static str { "crate::a::g \" crate::a" }
fn r() -> &'static str { r#"crate::a " crate::a"# }
#[cfg(test)]
#[allow(unused)]
mod tests {
    use crate::a::g;
    fn t() { super::super::a::g() }
}
#[cfg(test)]
mod more;
== b/more.rs
use crate::a::g;
"###,
    );
    assert_eq!(
        edges.keys().collect::<Vec<_>>(),
        [&("a".into(), "b".into())]
    );
    assert!(cycles(&edges).is_empty());
}
