//! `stash --squash`: a chain of re-stashes rewritten as one layer restores
//! the same tree, other tags keep the image before, a one-layer image is
//! left alone, a non-root run refuses; and the warning past 100 layers.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use common::images::{restore, restore_with};
use common::tree::{assert_same_tree, make_special_tree, snapshot, snapshot_nanos};
use kiwi_stackbuild::oci::DescriptorExt;
use kiwi_stackbuild::restore::Unpacker;
use kiwi_stackbuild::store::Store;

fn kiwi_stackbuild(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env("KIWI_NG", "/bin/false")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running kiwi-stackbuild")
}

/// Runs kiwi-stackbuild, which must succeed; returns its stderr.
fn run(home: &Path, args: &[&str]) -> String {
    let out = kiwi_stackbuild(home, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    stderr
}

fn stash(home: &Path, root: &Path, name: &str, tag: &str) -> String {
    let root = root.to_str().unwrap();
    run(home, &["stash", "--root", root, "--container-name", name, "--tag", tag])
}

/// `stash --list --json`'s entry of `key`.
fn listed(home: &Path, key: &str) -> serde_json::Value {
    let out = kiwi_stackbuild(home, &["stash", "--list", "--json"]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .find(|e| e["reference"] == key)
        .unwrap_or_else(|| panic!("{key} is not listed"))
}

/// The manifest digest, layer count and config of the stash `key`.
fn image(home: &Path, key: &str) -> (String, usize, serde_json::Value) {
    let store = Store::new(home);
    let d = store.resolve(key).unwrap();
    let manifest = store.manifest(&d.sha256().unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(store.blob_path(&manifest.config().sha256().unwrap())).unwrap()).unwrap();
    (d.digest().to_string(), manifest.layers().len(), config)
}

fn touch(path: &Path, stamp: &str) {
    let status = Command::new("touch")
        .args(["-h", "-d", stamp])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn mknod(path: &Path, kind: &str, major: &str, minor: &str) {
    let status = Command::new("mknod")
        .arg(path)
        .args([kind, major, minor])
        .status()
        .unwrap();
    assert!(status.success(), "mknod {}", path.display());
}

/// What a user checks of a restored root's own directory.
fn root_dir(path: &Path) -> (u32, u32, u32, i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec())
}

/// Re-stashes `root` three times with changes that make deltas of every
/// kind: deletions (whiteouts, a whole directory too), a type change,
/// new hard links, xattrs, a device node, nanosecond times.
fn make_chain(home: &Path, root: &Path, name: &str) {
    make_special_tree(root);
    stash(home, root, name, "1");

    fs::remove_file(root.join("etc/hostname")).unwrap();
    fs::remove_dir_all(root.join("usr/share/doc")).unwrap();
    fs::write(root.join("etc/added"), "new in layer two\n").unwrap();
    fs::hard_link(root.join("etc/added"), root.join("var/added-link")).unwrap();
    xattr::set(root.join("etc/added"), "user.layer", b"two").unwrap();
    fs::write(root.join("usr/bin/capable"), "#!/bin/sh\n").unwrap();
    xattr::set(
        root.join("usr/bin/capable"),
        "security.capability",
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    )
    .unwrap();
    mknod(&root.join("devices/layer-two"), "c", "10", "200");
    std::os::unix::fs::chown(root.join("devices/layer-two"), Some(4321), Some(8765)).unwrap();
    touch(&root.join("etc/added"), "@1600000123.123456789");
    touch(&root.join("etc"), "@1600000124.987654321");
    stash(home, root, name, "2");

    // A symlinked directory becomes a real one; a file a directory.
    fs::remove_file(root.join("sbin")).unwrap();
    fs::create_dir(root.join("sbin")).unwrap();
    fs::write(root.join("sbin/own"), "sbin is a directory now\n").unwrap();
    fs::remove_file(root.join("etc/empty")).unwrap();
    fs::create_dir(root.join("etc/empty")).unwrap();
    fs::write(root.join("etc/added"), "changed in layer three\n").unwrap();
    xattr::remove(root.join("etc/added"), "user.layer").unwrap();
    fs::hard_link(root.join("etc/added"), root.join("etc/added-again")).unwrap();
    fs::remove_file(root.join("var/added-link")).unwrap();
    mknod(&root.join("devices/layer-three"), "b", "8", "17");
    touch(&root.join("sbin/own"), "@1500000000.000000001");
    stash(home, root, name, "3");

    fs::write(root.join("etc/layer-four"), "four\n").unwrap();
    stash(home, root, name, "latest");
}

#[test]
fn a_squashed_chain_restores_the_same_tree_and_other_tags_keep_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_chain(&home, &root, "chain");
    // A second tag of the same image, as pull or --keep-root make them.
    {
        let store = Store::new(&home);
        let lock = store.lock_exclusive().unwrap();
        let mut index = store.index().unwrap();
        let d = store.find(&index, "chain:latest").unwrap();
        Store::set_ref(&mut index, "chain:alias", d);
        store.write_index(&index, &lock).unwrap();
    }
    let before = tmp.path().join("before");
    restore(&home, "chain:latest", &before);
    let three = tmp.path().join("three");
    restore(&home, "chain:3", &three);
    assert_same_tree(&snapshot_nanos(&root), &snapshot_nanos(&before));
    let (old_digest, old_layers, old_config) = image(&home, "chain:latest");
    assert_eq!(old_layers, 4);

    let said = run(&home, &["stash", "--squash", "chain"]);
    assert!(said.contains("squashed chain:latest: 4 layers into one"), "{said}");
    assert!(said.contains("chain:alias keep the image before"), "{said}");

    let (new_digest, new_layers, new_config) = image(&home, "chain:latest");
    assert_ne!(new_digest, old_digest);
    assert_eq!(new_layers, 1);
    assert_eq!(listed(&home, "chain:latest")["layers"], 1);
    assert_eq!(new_config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    let history = new_config["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let comment = history[0]["comment"].as_str().unwrap();
    assert!(comment.starts_with("squash of 4 layers"), "{comment}");
    for kept in ["architecture", "os", "author"] {
        assert_eq!(new_config[kept], old_config[kept], "{kept}");
    }
    assert_eq!(new_config["config"], old_config["config"], "labels and runtime config");

    let after = tmp.path().join("after");
    restore(&home, "chain:latest", &after);
    assert_same_tree(&snapshot_nanos(&before), &snapshot_nanos(&after));
    assert_eq!(root_dir(&before), root_dir(&after), "the root directory itself");
    // umoci reads the squashed layer as our unpacker does.
    let by_umoci = tmp.path().join("umoci");
    restore_with(&home, "chain:latest", &by_umoci, Unpacker::Umoci);
    assert_same_tree(&snapshot_nanos(&before), &snapshot_nanos(&by_umoci));
    assert_eq!(
        xattr::get(after.join("usr/bin/capable"), "security.capability")
            .unwrap()
            .map(|v| v.len()),
        Some(20)
    );
    assert_eq!(
        fs::metadata(after.join("etc/added")).unwrap().ino(),
        fs::metadata(after.join("etc/added-again")).unwrap().ino()
    );
    assert!(!after.join("etc/hostname").exists() && !after.join("usr/share/doc").exists());

    // The other tags name the images they named, which restore as before.
    let (alias_digest, alias_layers, _) = image(&home, "chain:alias");
    assert_eq!((alias_digest, alias_layers), (old_digest, 4));
    let alias = tmp.path().join("alias");
    restore(&home, "chain:alias", &alias);
    assert_same_tree(&snapshot_nanos(&before), &snapshot_nanos(&alias));
    let three_again = tmp.path().join("three-again");
    restore(&home, "chain:3", &three_again);
    assert_same_tree(&snapshot_nanos(&three), &snapshot_nanos(&three_again));
    let checked = kiwi_stackbuild(&home, &["stash", "--check"]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));

    // A stash on the squashed image adds one layer to it.
    fs::write(root.join("etc/layer-five"), "five\n").unwrap();
    stash(&home, &root, "chain", "latest");
    assert_eq!(image(&home, "chain:latest").1, 2);
    let five = tmp.path().join("five");
    restore(&home, "chain:latest", &five);
    assert_same_tree(&snapshot_nanos(&root), &snapshot_nanos(&five));
}

#[test]
fn an_image_of_one_layer_is_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_special_tree(&root);
    stash(&home, &root, "single", "1");
    let before = snapshot_nanos(&home);
    let said = run(&home, &["stash", "--squash", "single:1"]);
    assert!(
        said.contains("single:1 has 1 layer already: nothing to squash"),
        "{said}"
    );
    assert_eq!(snapshot_nanos(&home), before, "the store changed");
}

#[test]
fn squashing_as_non_root_refuses_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_special_tree(&root);
    stash(&home, &root, "mine", "1");
    stash(&home, &root, "mine", "1");
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = snapshot(&home);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--squash", "mine:1"])
        .env("KIWI_STACKBUILD_HOME", &home)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let messages: Vec<&str> = stderr.lines().filter(|l| l.trim_start().starts_with("0: ")).collect();
    assert_eq!(messages.len(), 1, "{stderr}");
    assert!(
        messages[0].contains("stash --squash mine:1 needs root: its one new layer must keep every owner"),
        "{stderr}"
    );
    assert!(!stderr.contains("   1: "), "more than one line: {stderr}");
    assert!(stderr.contains("Suggestion: run it as root"), "{stderr}");
    assert_eq!(snapshot(&home), before, "the store changed");
}

/// A root of the fewest entries a stash takes: `image/config.xml`.
fn tiny_root(root: &Path) {
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(
        root.join("image/config.xml"),
        r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="tall">
  <description type="system"><author>A</author><contact>a@b</contact><specification>s</specification></description>
  <preferences><version>1.0.0</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
  <repository type="apt-deb" distribution="bookworm"><source path="http://x/debian"/></repository>
</image>
"#,
    )
    .unwrap();
}

#[test]
fn a_stash_past_100_layers_warns_once_and_a_squash_makes_it_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    tiny_root(&root);
    let warning = "container runtimes refuse images past about 127";
    for n in 1..=100 {
        fs::write(root.join("n"), n.to_string()).unwrap();
        let said = stash(&home, &root, "tall", "latest");
        assert!(!said.contains(warning), "warned at {n} layers: {said}");
    }
    fs::write(root.join("n"), "101").unwrap();
    let said = stash(&home, &root, "tall", "latest");
    let want = "tall:latest has 101 layers; container runtimes refuse images past about 127: \
                run `kiwi-stackbuild stash --squash tall:latest`";
    assert_eq!(said.matches(warning).count(), 1, "{said}");
    assert!(said.contains(want), "{said}");
    assert_eq!(listed(&home, "tall:latest")["layers"], 101);

    run(&home, &["stash", "--squash", "tall:latest"]);
    assert_eq!(listed(&home, "tall:latest")["layers"], 1);
    let out = tmp.path().join("out");
    restore(&home, "tall:latest", &out);
    assert_same_tree(&snapshot_nanos(&root), &snapshot_nanos(&out));
    fs::write(root.join("n"), "102").unwrap();
    let said = stash(&home, &root, "tall", "latest");
    assert!(!said.contains(warning), "{said}");
}

#[test]
fn a_squash_keeps_the_selinux_labels_the_layers_had() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    tiny_root(&root);
    let label = b"system_u:object_r:etc_t:s0";
    fs::write(root.join("labelled"), "x\n").unwrap();
    xattr::set(root.join("labelled"), "security.selinux", label).unwrap();
    stash(&home, &root, "labels", "latest");
    fs::write(root.join("n"), "2").unwrap();
    stash(&home, &root, "labels", "latest");
    // No unpacker restores security.selinux (it is the host's policy), so
    // the unpacked tree lacks it; the squashed layer must carry it anyway.
    run(&home, &["stash", "--squash", "labels"]);
    let store = Store::new(&home);
    let d = store.resolve("labels:latest").unwrap();
    let manifest = store.manifest(&d.sha256().unwrap()).unwrap();
    assert_eq!(manifest.layers().len(), 1);
    let blob = fs::File::open(store.blob_path(&manifest.layers()[0].sha256().unwrap())).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob).read_to_end(&mut tar).unwrap();
    let record = [b"SCHILY.xattr.security.selinux=".as_slice(), label].concat();
    assert!(
        tar.windows(record.len()).any(|w| w == record.as_slice()),
        "the squashed layer lost the label"
    );
}
