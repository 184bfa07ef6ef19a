//! The crate's top-level modules import each other one way only: down the layers that
//! `src/lib.rs` describes. This test reads every `src/**/*.rs`, collects each
//! `crate::<module>` path (in `use` lines, grouped `use crate::{…}` lines and inline
//! paths), and fails on an arrow that points up or sideways, naming the file and line.
//! Arrows only ever point down, so no cycle between top-level modules can come back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, top first. A module may use modules of lower layers only.
///
/// Keep in step with the module map in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    // Parse flags, call the core, print.
    &["cli"],
    // Consumers of render: the file layout and the Kustomize/KRM plugin.
    &["output", "krm"],
    // The capabilities.
    &["render", "rotate", "build"],
    // The overlay model (its certificate settings use the PKI's types).
    &["overlay"],
    // The PKI, and the cron schedule arithmetic the overlay's rotation timing checks use.
    &["pki", "schedule"],
    // Parsers and small value types.
    &["yaml", "names", "duration", "object", "template"],
    // The leaf: how input appears in errors (used by the parsers); no crate imports at all.
    &["echo"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/pki/parse.rs` and `src/pki.rs` → `pki`;
/// None for `lib.rs` and `main.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The code of a line without its `//` comment (doc comments included). A `//` inside a
/// string literal is rare enough in this crate's `crate::` lines to ignore.
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level names inside a `{…}` group that starts at `text[0] == '{'`, with the
/// number of lines the group spans after the first.
fn group_names(lines: &[&str], start: usize, text: &str) -> Vec<(String, usize)> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut expect_name = true;
    let mut rest = text;
    let mut index = start;
    loop {
        let mut chars = rest.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    depth += 1;
                    expect_name = depth == 1;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return names;
                    }
                }
                ',' if depth == 1 => expect_name = true,
                c if expect_name && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                    names.push((identifier(&rest[at..]).to_string(), index));
                    expect_name = false;
                    while chars
                        .peek()
                        .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
                    {
                        chars.next();
                    }
                }
                _ => {}
            }
        }
        index += 1;
        match lines.get(index) {
            Some(line) => rest = code(line),
            None => return names,
        }
    }
}

/// Every `crate::<name>` reference of a file: (name, 1-based line).
fn references(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let line = code(line);
        for (at, _) in line.match_indices("crate::") {
            // `kiln_crate::` or `$crate::` are not this crate's paths.
            if line[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let rest = &line[at + "crate::".len()..];
            if rest.starts_with('{') {
                for (name, line_index) in group_names(&lines, index, rest) {
                    out.push((name, line_index + 1));
                }
            } else {
                out.push((identifier(rest).to_string(), index + 1));
            }
        }
    }
    out
}

#[test]
fn top_level_modules_import_down_the_layers_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");

    // Every top-level module has a layer.
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let unplaced: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules {unplaced:?} are in src/lib.rs but not in LAYERS (tests/layers.rs): give each a layer"
    );

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut arrows: BTreeMap<(String, String), (String, usize)> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let shown = file.strip_prefix(root).unwrap().display().to_string();
        let text = fs::read_to_string(file).unwrap();
        for (to, line) in references(&text) {
            if to == from || !modules.contains(&to) {
                continue; // a path inside the module, or an item of lib.rs such as VERSION
            }
            arrows
                .entry((from.clone(), to.clone()))
                .or_insert_with(|| (shown.clone(), line));
            let (from_layer, to_layer) = (layer_of(&from).unwrap(), layer_of(&to).unwrap());
            if to_layer <= from_layer {
                wrong.push(format!(
                    "{shown}:{line}: {from} uses crate::{to}, but {to} is {} {from} in the layers \
                     (cli → output | krm → render | rotate | build → overlay → pki → yaml | names | duration | object | template → echo)",
                    if to_layer == from_layer { "beside" } else { "above" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
    // The scan must see the arrows that exist, or it proves nothing.
    for expected in [
        ("cli", "render"),
        ("render", "overlay"),
        ("overlay", "pki"),
        ("pki", "names"),
    ] {
        let key = (expected.0.to_string(), expected.1.to_string());
        assert!(
            arrows.contains_key(&key),
            "no {expected:?} arrow found: {arrows:?}"
        );
    }
}

#[test]
fn references_are_found_in_every_form() {
    let text = "use crate::pki::{self, San};\n\
                use crate::{\n    names::is_dns1123_label,\n    yaml::{self, Node},\n};\n\
                let x = crate::duration::Duration::ZERO; // crate::ignored\n\
                /// See [`crate::overlay`].\n\
                macro_rules! m { () => { $crate::render::x } }\n";
    let names: Vec<(String, usize)> = references(text);
    assert_eq!(
        names,
        [
            ("pki".to_string(), 1),
            ("names".to_string(), 3),
            ("yaml".to_string(), 4),
            ("duration".to_string(), 6),
        ]
    );
}
