//! KIWI image descriptions: find, parse, inspect, merge and write them.
//!
//! The [`Document`] model keeps everything of the source in order (XML
//! declaration, comments such as `<!-- OBS-Profiles: @BUILD_FLAVOR@ -->`,
//! processing instructions, attribute order, whitespace, CDATA, unknown
//! elements), so writing an unchanged document gives back the same bytes.
//! See [`merge`] for how a derived description (DESIGN §5) is merged into
//! the one stored in an image, and [`check_derived`] for what is checked
//! before anything is fetched.
//!
//! Safety: entities are never expanded and nothing external is opened. A
//! DOCTYPE that declares entities is rejected, as is a reference to any
//! entity but the five predefined ones; another DOCTYPE is kept verbatim
//! and inert. Malformed XML is one error `FILE:LINE:COLUMN: ...`.

mod check;
mod edit;
mod facts;
mod merge;
mod model;
mod parse;
mod schema;

#[cfg(test)]
mod corpus_tests;

use std::path::{Path, PathBuf};

use color_eyre::eyre::eyre;
use color_eyre::{Result, Section};

pub use check::check_derived;
pub use facts::{distribution_from_apt, distribution_from_source};
pub use merge::{merge, remove_bootstrap_packages};
pub use model::{Document, Element, Node};

/// Finds the description in `dir` the way KIWI does: `DIR/config.xml`, else
/// `DIR/image/config.xml`, else the first `*.kiwi` file by name. A path to a
/// file is returned as it is.
pub fn find(dir: &Path) -> Result<PathBuf> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    if !dir.exists() {
        return Err(eyre!("the description {} does not exist", dir.display()))
            .suggestion("give the directory of a KIWI description, or its .kiwi or config.xml file");
    }
    for candidate in [dir.join("config.xml"), dir.join("image").join("config.xml")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let mut kiwi_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "kiwi") && p.is_file())
        .collect();
    kiwi_files.sort();
    match kiwi_files.into_iter().next() {
        Some(path) => Ok(path),
        None => Err(eyre!(
            "no KIWI description in {} (looked for config.xml, image/config.xml, *.kiwi)",
            dir.display()
        ))
        .suggestion("give the directory of a KIWI description, or its .kiwi or config.xml file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_follows_kiwi_lookup_order() {
        let cases: [(&[&str], &str); 5] = [
            (&["config.xml", "image/config.xml", "a.kiwi"], "config.xml"),
            (&["image/config.xml", "a.kiwi"], "image/config.xml"),
            (&["b.kiwi", "a.kiwi", "c.xml"], "a.kiwi"),
            (&["z.kiwi", "config.sh"], "z.kiwi"),
            (&["a.kiwi/config.xml"], "a.kiwi/config.xml"),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            for file in files {
                let path = dir.path().join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "<image/>").unwrap();
            }
            if expected == "a.kiwi/config.xml" {
                // a directory named *.kiwi is not a description file
                assert!(find(dir.path()).is_err());
                continue;
            }
            assert_eq!(find(dir.path()).unwrap(), dir.path().join(expected), "{files:?}");
        }
    }

    #[test]
    fn find_accepts_a_file_and_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my.xml");
        std::fs::write(&file, "<image/>").unwrap();
        assert_eq!(find(&file).unwrap(), file);
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let error = find(&empty).unwrap_err().to_string();
        let expected = format!(
            "no KIWI description in {} (looked for config.xml, image/config.xml, *.kiwi)",
            empty.display()
        );
        assert_eq!(error, expected);
        let missing = dir.path().join("missing");
        let error = find(&missing).unwrap_err().to_string();
        assert_eq!(error, format!("the description {} does not exist", missing.display()));
    }
}
