//! Helpers around images for the real-tool tests: restore a stash with the
//! library, list a KIWI result archive, keep podman's storage private.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiwi_stackbuild::reference::ImageReference;
use kiwi_stackbuild::registry::RegistryAuth;
use kiwi_stackbuild::restore;
use kiwi_stackbuild::store::Store;

/// Unpacks `reference` (a stash of the store at `home`, or any image
/// reference) into `into`, as `rebuild --root` does.
pub fn restore(home: &Path, reference: &str, into: &Path) {
    restore_with(home, reference, into, restore::Unpacker::Builtin);
}

/// Like [`restore`], with the given unpacker.
pub fn restore_with(home: &Path, reference: &str, into: &Path, unpacker: restore::Unpacker) {
    try_restore_with(home, reference, into, unpacker).unwrap();
}

/// Like [`restore_with`], returning the product's error instead of
/// panicking, for tests that report failures themselves (proptest).
pub fn try_restore_with(
    home: &Path,
    reference: &str,
    into: &Path,
    unpacker: restore::Unpacker,
) -> color_eyre::Result<()> {
    let store = Store::new(home);
    let scratch = tempfile::tempdir()?;
    let r: ImageReference = reference.parse()?;
    let image = restore::fetch(
        &store,
        &r,
        &mut restore::FetchLayout::in_scratch(scratch.path()),
        &RegistryAuth::anonymous(),
    )?;
    let layers = restore::stack(&[image])?;
    restore::unpack(&layers, scratch.path(), into, unpacker)
}

/// The file list of the root archive (`*.tar.xz`) KIWI wrote into `target`,
/// without a leading `./`; dev/ with what KIWI put there, since a stash
/// keeps it (DESIGN §4).
pub fn archive_list(target: &Path) -> BTreeSet<String> {
    let archive = super::archive::result_archive(target);
    let out = Command::new("tar").arg("-tJf").arg(&archive).output().unwrap();
    assert!(out.status.success(), "tar -tJf {} failed", archive.display());
    let names = String::from_utf8_lossy(&out.stdout);
    names.lines().map(|p| p.trim_start_matches("./").to_string()).collect()
}

/// The last 40 lines of a command's output, for failure messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A storage.conf that keeps podman's images in `dir` (vfs driver), so
/// tests leave the machine's container storage alone. Hand it to podman,
/// skopeo and kiwi-ng as `CONTAINERS_STORAGE_CONF`.
pub fn private_podman_storage(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let conf = dir.join("storage.conf");
    let text = format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
        dir.join("graph").display(),
        dir.join("run").display()
    );
    fs::write(&conf, text).unwrap();
    conf
}

/// The layer digests of the stash `key` in the store at `home`.
pub fn layer_digests(home: &Path, key: &str) -> Vec<String> {
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(home.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value = serde_json::from_slice(&fs::read(home.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == key)
        .unwrap_or_else(|| panic!("{key} not in {}", home.join("index.json").display()));
    let manifest = read(manifest["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}
