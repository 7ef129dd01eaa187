//! The module layers README.md's design section shows: a module uses
//! modules of its own layer or of those below it, never above, and no two
//! modules import each other. Read from the `crate::` paths of src/ (tests
//! and comments left out).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level modules by layer, highest first.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &[
        "workflow", "derive", "stash", "restore", "transfer", "listing", "inputs",
    ],
    &["store"],
    &["tools", "registry", "obs"],
    &["oci", "layer", "description", "reference", "labels"],
    &["fsutil", "interrupt", "fault", "progress", "suggest"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to README.md's table and here"))
}

/// Which top-level modules each top-level module uses, with the files.
fn uses() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if !rel.ends_with(".rs") || rel == "lib.rs" || rel == "main.rs" || rel.contains("tests") {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(entry.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for piece in line.split("crate::").skip(1) {
                let used: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !used.is_empty() && used != module {
                    out.entry(module.clone())
                        .or_default()
                        .entry(used)
                        .or_default()
                        .insert(rel.clone());
                }
            }
        }
    }
    out
}

#[test]
fn modules_use_only_their_layer_and_those_below() {
    let uses = uses();
    assert!(uses.len() > 10, "{uses:?}");
    let mut wrong = Vec::new();
    for (module, used) in &uses {
        for (other, files) in used {
            if layer_of(other) < layer_of(module) {
                wrong.push(format!("{module} uses {other}, a higher layer ({files:?})"));
            }
            if uses.get(other).is_some_and(|u| u.contains_key(module)) {
                wrong.push(format!("{module} and {other} import each other"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
