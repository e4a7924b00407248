//! The layers of `src/` import each other without loops (issue #13).
//!
//! Reads the source tree (no build, no extra dependencies) and collects, for
//! each top-level module (`src/<m>.rs` or `src/<m>/**.rs`), the other
//! modules it names as `crate::<m>` or, through a re-export of `src/lib.rs`,
//! as `crate::<Name>`. Unit-test files (`tests.rs`, `loom_tests.rs`, and
//! `testkit.rs`, the helpers they share, compiled only in tests) and
//! `src/lib.rs` itself (the crate root: re-exports and the `__private` test
//! hooks) are not modules of the graph. `//` comments and doc comments are
//! stripped first, so a `crate::x` in prose does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Known cycles, allowed until they are removed: each pair's two modules
/// import each other. (None left: the storage seam removed engine <-> redis.)
const KNOWN_CYCLES: &[(&str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its `//` comments (doc comments included).
/// A `//` inside a string literal cuts the rest of that line too, which
/// can only lose a reference written after a URL on the same line.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    strip_comments(&text)
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |cut| &line[..cut]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level modules and the files each is made of (test files left out).
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let mut files = Vec::new();
        if path.is_dir() {
            if name == "bin" {
                continue; // the command-line tool: a crate of its own
            }
            rust_files(&path, &mut files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            files.push(path);
        }
        files.retain(|f| {
            let file = f.file_name().unwrap().to_str().unwrap();
            !matches!(file, "tests.rs" | "loom_tests.rs" | "testkit.rs")
        });
        if !files.is_empty() {
            modules.entry(name).or_insert_with(Vec::new).extend(files);
        }
    }
    modules
}

/// The first path segment of each item of a `use` tree body: `a::B, c`
/// gives `a` and `c`; nested groups are skipped over.
fn group_heads(body: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in body.chars().chain(std::iter::once(',')) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let head = item.trim().split("::").next().unwrap().trim().to_owned();
                if !head.is_empty() {
                    heads.push(head);
                }
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    heads
}

/// The text of a `{...}` group starting at `s[0] == '{'`, without braces.
fn group(s: &str) -> &str {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[1..i];
                }
            }
            _ => {}
        }
    }
    panic!("unclosed group: {s}")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The names that follow `prefix` (`crate::`) in `code`: `crate::a::b` gives
/// `a`, `crate::{a, B}` gives `a` and `B`.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if rest.starts_with('{') {
            names.extend(group_heads(group(rest)));
        } else {
            names.push(ident(rest).to_owned());
        }
    }
    names
}

/// What `crate::<Name>` means: each name `src/lib.rs` re-exports with
/// `pub use <module>::...`, mapped to its module.
fn root_names(modules: &BTreeMap<String, Vec<PathBuf>>) -> BTreeMap<String, String> {
    let lib = code(&src().join("lib.rs"));
    let mut names = BTreeMap::new();
    for (at, _) in lib.match_indices("pub use ") {
        let stmt = &lib[at + "pub use ".len()..];
        let stmt = &stmt[..stmt.find(';').expect("a use ends with ';'")];
        let module = ident(stmt);
        if !modules.contains_key(module) {
            continue; // `crate::...` inside `__private`, or another crate
        }
        let items = &stmt[module.len()..].trim_start_matches("::");
        let items = if items.starts_with('{') {
            group_heads(group(items))
        } else {
            vec![items.rsplit("::").next().unwrap().trim().to_owned()]
        };
        for item in items {
            // `a::B` in a group re-exports `B`.
            let name = item.rsplit("::").next().unwrap().to_owned();
            names.insert(name, module.to_owned());
        }
    }
    names
}

/// Which other top-level modules each module uses.
fn graph() -> Graph {
    let modules = modules();
    let roots = root_names(&modules);
    let mut graph = Graph::new();
    for (module, files) in &modules {
        let deps = graph.entry(module.clone()).or_default();
        for file in files {
            for name in names_after(&code(file), "crate::") {
                if name == "self" {
                    continue;
                }
                let target = if modules.contains_key(&name) {
                    name
                } else {
                    roots.get(&name).cloned().unwrap_or_else(|| {
                        panic!(
                            "{}: crate::{name} is neither a module of src/ nor a \
                             re-export of src/lib.rs this test can read",
                            file.display()
                        )
                    })
                };
                if &target != module {
                    deps.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph` (first module repeated at the end), if it has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        graph: &Graph,
        m: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_owned(), Mark::OnPath);
        path.push(m.to_owned());
        for dep in graph.get(m).into_iter().flatten() {
            match marks.get(dep).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|p| p == dep).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(dep.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(graph, dep, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(graph, m, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", deps.join(", "))
        })
        .collect()
}

#[test]
fn the_modules_of_src_import_each_other_without_loops() {
    let mut graph = graph();
    let shown = show(&graph);
    println!("module -> modules it imports:\n{shown}");
    for &(a, b) in KNOWN_CYCLES {
        let both = graph[a].contains(b) && graph[b].contains(a);
        assert!(
            both,
            "{a} and {b} no longer import each other: delete their exception \
             from KNOWN_CYCLES\n{shown}"
        );
        graph.get_mut(b).unwrap().remove(a);
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import loop: {}\n{shown}", cycle.join(" -> "));
    }
}

#[test]
fn the_shared_file_module_knows_bytes_and_files_not_policies() {
    let graph = graph();
    let allowed = ["clock", "error", "hash", "os", "sync"];
    let extra: Vec<&String> = graph["shm"]
        .iter()
        .filter(|m| !allowed.contains(&m.as_str()))
        .collect();
    assert!(extra.is_empty(), "shm imports {extra:?}\n{}", show(&graph));
}

#[test]
fn the_algorithms_own_their_vocabulary() {
    let graph = graph();
    assert!(
        !graph["algo"].contains("policy"),
        "algo imports the spec parser\n{}",
        show(&graph)
    );
}

#[test]
fn the_reader_finds_references_in_code_and_not_in_comments() {
    let code = "use crate::{a::B, c, d::{e, f}};\nlet x = crate::g::h; // crate::i\n$crate::j";
    let code = strip_comments(code);
    assert_eq!(names_after(&code, "crate::"), ["a", "c", "d", "g", "j"]);
    let triangle: Graph = [("x", "y"), ("y", "z"), ("z", "x")]
        .iter()
        .map(|&(a, b)| (a.to_owned(), BTreeSet::from([b.to_owned()])))
        .collect();
    assert_eq!(find_cycle(&triangle).unwrap(), ["x", "y", "z", "x"]);
}

/// The one way data flows (README "Architecture"): binding (the C ABI) →
/// engine → store → table → algorithm. No layer names one above it, and
/// nothing below the engine names the engine or the store.
#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let graph = graph();
    let order = ["ffi", "engine", "store", "table", "algo"];
    for (i, upper) in order.iter().enumerate() {
        for lower in &order[i + 1..] {
            assert!(
                !graph[*lower].contains(*upper),
                "{lower} imports {upper}, a layer above it\n{}",
                show(&graph)
            );
        }
    }
    for m in [
        "redis", "shm", "policy", "options", "events", "stats", "os", "wait",
    ] {
        for upper in ["ffi", "engine", "store"] {
            assert!(
                !graph[m].contains(upper),
                "{m} imports {upper}\n{}",
                show(&graph)
            );
        }
    }
}
