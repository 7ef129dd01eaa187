//! Real skopeo/umoci: a tree with every kind of entry is stashed, restored
//! with umoci, and compared entry by entry; a re-stash stores only a delta.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::images::{private_podman_storage, restore, restore_with};
use common::tree::{assert_same_tree, make_special_tree, snapshot};
use kiwi_stackbuild::oci::DescriptorExt;
use kiwi_stackbuild::restore::Unpacker;
use kiwi_stackbuild::store::Store;

fn run(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("running kiwi-stackbuild");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A temp dir, and in it the paths of a root, a store and `out` (none made).
fn work_dirs(out: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str| tmp.path().join(name);
    let (root, home, out) = (at("root"), at("store"), at(out));
    (tmp, root, home, out)
}

fn list(home: &Path) -> Vec<serde_json::Value> {
    let out = run(home, &["stash", "--list", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_stash_restores_every_entry_exactly() {
    let (_tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    stash(&home, &root, "special", "1");
    restore(&home, "special:1", &out);
    assert_same_tree(&snapshot(&root), &snapshot(&out));
    // dev/, proc/ and sys/ are kept as the root's own file system has them:
    // what KIWI leaves in dev/ belongs to the image.
    assert!(out.join("dev/null").exists() && out.join("proc/cpuinfo").exists());
}

/// Mounts `what` (a tmpfs, or a bind of a directory) on `at`; unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn new(args: &[&str], at: &Path) -> Mounted {
        let status = Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .expect("running mount");
        assert!(status.success(), "mount {args:?} {} failed", at.display());
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn what_is_mounted_inside_the_root_is_left_out_by_the_mount() {
    let (tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    let host_cache = tmp.path().join("host-cache");
    std::fs::create_dir_all(&host_cache).unwrap();
    std::fs::write(host_cache.join("package.deb"), "from the host").unwrap();
    let cache = root.join("var/cache/kiwi");
    std::fs::create_dir_all(&cache).unwrap();
    let before = snapshot(&root);
    {
        // A bind mount of the same file system: only the mount table tells.
        let _bind = Mounted::new(&["--bind", host_cache.to_str().unwrap()], &cache);
        let _proc = Mounted::new(&["-t", "tmpfs", "none"], &root.join("sys"));
        std::fs::write(root.join("sys/mounted-file"), "on the tmpfs").unwrap();
        stash(&home, &root, "mounted", "1");
    }
    restore(&home, "mounted:1", &out);
    assert!(out.join("var/cache/kiwi").is_dir(), "the mount point is kept");
    assert!(
        !out.join("var/cache/kiwi/package.deb").exists(),
        "a bind-mounted file was stored"
    );
    assert!(out.join("sys").is_dir(), "the mount point is kept");
    assert!(
        !out.join("sys/mounted-file").exists(),
        "a file on a mounted tmpfs was stored"
    );
    let restored = snapshot(&out);
    for (path, entry) in &before {
        if path.starts_with(b"sys") || path.starts_with(b"var/cache/kiwi") {
            continue;
        }
        assert_eq!(restored.get(path), Some(entry), "{}", String::from_utf8_lossy(path));
    }
}

#[test]
fn a_restash_adds_one_small_layer_that_deletes() {
    let (_tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    stash(&home, &root, "special", "latest");
    let victim = root.join("etc/hostname");
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(root.join("added.txt"), "new in layer two\n").unwrap();
    stash(&home, &root, "special", "2");

    let stashes = list(&home);
    assert_eq!(stashes.len(), 2, "{stashes:?}");
    let second = stashes
        .iter()
        .find(|s| s["reference"] == "special:2")
        .expect("special:2 listed");
    assert_eq!(second["layers"], 2);
    assert!(
        second["base"].as_str().unwrap().contains("special:latest@sha256:"),
        "{second}"
    );

    restore(&home, "special:2", &out);
    assert!(
        !out.join(victim.strip_prefix(&root).unwrap()).exists(),
        "the deleted file came back"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("added.txt")).unwrap(),
        "new in layer two\n"
    );
    assert_same_tree(&snapshot(&root), &snapshot(&out));

    let store = Store::new(&home);
    let index = store.index().unwrap();
    let d = store.find(&index, "special:2").unwrap();
    let m = store.manifest(&d.sha256().unwrap()).unwrap();
    let (first, delta) = (m.layers()[0].size(), m.layers()[1].size());
    assert!(
        delta * 100 < first,
        "delta layer {delta} B is not under 1% of the first {first} B"
    );
}

#[test]
fn the_same_tree_and_epoch_give_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_special_tree(&root);
    let mut digests = Vec::new();
    for n in 0..2 {
        let home = tmp.path().join(format!("store{n}"));
        let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .args(["stash", "--root", root.to_str().unwrap(), "--container-name", "same"])
            .env("KIWI_STACKBUILD_HOME", &home)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&run(&home, &["stash", "--list", "--json"]).stdout).unwrap();
        assert_eq!(list[0]["created"], "2023-11-14T22:13:20Z");
        digests.push(list[0]["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(digests[0], digests[1]);
}

/// A first stash and a delta on it, each stashed by its own process into
/// a fresh store, give the same manifests, written as canonical JSON: the
/// manifest annotations are a HashMap, iterated in another order by every
/// process.
#[test]
fn a_delta_on_the_same_base_and_epoch_gives_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_special_tree(&root);
    // The second root is made once, so both stores see the same mtimes.
    let grown = tmp.path().join("grown");
    let copied = Command::new("cp").arg("-a").arg(&root).arg(&grown).status().unwrap();
    assert!(copied.success());
    std::fs::write(grown.join("added.txt"), "new in layer two\n").unwrap();
    let mut digests = Vec::new();
    for n in 0..2 {
        let home = tmp.path().join(format!("store{n}"));
        for (tag, root) in [("1", &root), ("2", &grown)] {
            let out = stash_cmd(&home, root, "same", tag)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let store = Store::new(&home);
        let index = store.index().unwrap();
        let mut found = Vec::new();
        for key in ["same:1", "same:2"] {
            let d = store.find(&index, key).unwrap();
            let bytes = std::fs::read(store.blob_path(&d.sha256().unwrap())).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                serde_json::to_vec(&value).unwrap(),
                bytes,
                "{key}'s manifest is canonical JSON"
            );
            let annotations = value["annotations"].as_object().map_or(0, |a| a.len());
            assert!(
                annotations >= 2,
                "{key}: {annotations} annotations cannot show their order"
            );
            found.push(d.digest().to_string());
        }
        assert_eq!(
            store
                .manifest(&store.find(&index, "same:2").unwrap().sha256().unwrap())
                .unwrap()
                .layers()
                .len(),
            2
        );
        digests.push(found);
    }
    assert_eq!(digests[0], digests[1]);
}

/// Stashes `root` as `name:tag` into the store at `home`; it must succeed.
fn stash(home: &Path, root: &Path, name: &str, tag: &str) {
    let out = stash_cmd(home, root, name, tag)
        .output()
        .expect("running kiwi-stackbuild");
    assert!(
        out.status.success(),
        "stash {name}:{tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stash_cmd(home: &Path, root: &Path, name: &str, tag: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"));
    cmd.args(["stash", "--root"])
        .arg(root)
        .args(["--container-name", name, "--tag", tag]);
    cmd.env("KIWI_STACKBUILD_HOME", home).env_remove("SOURCE_DATE_EPOCH");
    cmd
}

#[test]
fn concurrent_stashes_lose_no_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_special_tree(&root);
    let jobs = [
        ("same", "1"),
        ("same", "2"),
        ("same", "3"),
        ("other", "1"),
        ("third", "x"),
    ];
    let children: Vec<_> = jobs
        .iter()
        .map(|(n, t)| {
            stash_cmd(&home, &root, n, t)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, job) in children.into_iter().zip(&jobs) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{job:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut refs: Vec<String> = list(&home)
        .iter()
        .map(|e| e["reference"].as_str().unwrap().to_string())
        .collect();
    refs.sort();
    assert_eq!(refs, ["other:1", "same:1", "same:2", "same:3", "third:x"]);
}

/// Fills `dir` with incompressible files, so that stashing it takes a while.
fn write_noise(dir: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for n in 0..files {
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(dir.join(format!("noise-{n}")), &data).unwrap();
    }
}

#[test]
fn a_killed_stash_leaves_existing_tags_readable() {
    let (_tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    stash(&home, &root, "victim", "old");
    let before = list(&home);
    let stored = snapshot(&root);
    write_noise(&root.join("var/noise"), 64, 4 << 20);
    let mut killed = 0;
    for delay_ms in [50u64, 300, 900] {
        let mut child = stash_cmd(&home, &root, "victim", "new").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the kill: nothing to prove with this delay.
            continue;
        }
        killed += 1;
        let after = list(&home);
        assert_eq!(after, before, "a killed stash (after {delay_ms} ms) changed the store");
    }
    assert!(killed > 0, "every stash finished before it could be killed");
    restore(&home, "victim:old", &out);
    assert_same_tree(&stored, &snapshot(&out));
    // The next change collects what the killed runs left behind.
    stash(&home, &root, "spare", "latest");
    run(&home, &["stash", "--rm", "spare"]);
    let leftovers: Vec<_> = std::fs::read_dir(home.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left in the store: {leftovers:?}");
}

#[test]
fn podman_loads_a_stash() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_special_tree(&root);
    stash(&home, &root, "for-podman", "7");
    let archive = tmp.path().join("for-podman.tar");
    run(
        &home,
        &[
            "push",
            "for-podman:7",
            &format!("oci-archive:{}:for-podman:7", archive.display()),
        ],
    );
    let conf = private_podman_storage(tmp.path());
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .output()
            .expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let images = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.lines().any(|l| l.ends_with("for-podman:7")),
        "podman images: {images}"
    );
    let labels = podman(&[
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"io.kiwi-stackbuild.image.name\"}}",
        "for-podman:7",
    ]);
    assert_eq!(labels.trim(), "special-tree", "the image name label as podman reads it");
}

#[test]
fn a_restash_reads_the_same_tree_from_its_cache_as_from_the_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_special_tree(&root);
    let (cached, uncached) = (tmp.path().join("cached"), tmp.path().join("uncached"));
    for home in [&cached, &uncached] {
        stash(home, &root, "c", "latest");
    }
    let cache_dir = uncached.join(".kiwi-stackbuild-trees");
    assert_eq!(
        std::fs::read_dir(&cache_dir).unwrap().count(),
        1,
        "the first stash cached its tree"
    );
    std::fs::remove_dir_all(&cache_dir).unwrap();
    std::fs::remove_file(root.join("etc/hostname")).unwrap();
    std::fs::write(root.join("etc/new"), "new\n").unwrap();
    let mut layers = Vec::new();
    for home in [&cached, &uncached] {
        stash(home, &root, "c", "2");
        let store = Store::new(home);
        let index = store.index().unwrap();
        let m = store
            .manifest(&store.find(&index, "c:2").unwrap().sha256().unwrap())
            .unwrap();
        layers.push(m.layers()[1].digest().clone());
    }
    assert_eq!(
        layers[0], layers[1],
        "the delta differs with and without the cached tree"
    );
    run(&cached, &["stash", "--rm", "c"]);
    assert_eq!(
        std::fs::read_dir(cached.join(".kiwi-stackbuild-trees"))
            .unwrap()
            .count(),
        0,
        "rm left cached trees"
    );
}

#[test]
fn the_extractor_restores_what_umoci_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
    make_special_tree(&root);
    stash(&home, &root, "x", "latest");
    std::fs::remove_file(root.join("etc/hostname")).unwrap();
    std::fs::write(root.join("etc/new"), "new\n").unwrap();
    stash(&home, &root, "x", "2");
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    restore_with(&home, "x:2", &ours, Unpacker::Builtin);
    restore_with(&home, "x:2", &theirs, Unpacker::Umoci);
    assert_same_tree(&snapshot(&root), &snapshot(&ours));
    assert_same_tree(&snapshot(&theirs), &snapshot(&ours));
}

#[test]
fn a_rebuild_unpacks_many_directories_at_a_low_open_file_limit() {
    let (_tmp, root, home, target) = work_dirs("target");
    make_special_tree(&root);
    // More directories than descriptors: 40 x 30 + a chain 60 deep.
    for a in 0..40 {
        for b in 0..30 {
            let d = root.join(format!("usr/share/many/d{a}/e{b}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), format!("{a}/{b}")).unwrap();
        }
    }
    let deep: std::path::PathBuf = (0..60).map(|i| format!("n{i}")).collect();
    std::fs::create_dir_all(root.join("deep").join(&deep)).unwrap();
    std::fs::write(root.join("deep").join(&deep).join("leaf"), "leaf").unwrap();
    stash(&home, &root, "many", "1");
    let out = Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["rebuild", "--root", "many:1", "--", "--target-dir"])
        .arg(&target)
        .env("KIWI_STACKBUILD_HOME", &home)
        .env("KIWI_NG", "/bin/true")
        .output()
        .expect("running prlimit");
    assert!(
        out.status.success(),
        "a rebuild at 64 open files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&snapshot(&root), &snapshot(&target.join("build/image-root")));
}

#[test]
fn a_read_only_store_is_listed_and_restored_from_by_anyone_who_can_read_it() {
    let (tmp, root, home, target) = work_dirs("target");
    make_special_tree(&root);
    stash(&home, &root, "shared", "1");
    let ro = tmp.path().join("ro-store");
    std::fs::create_dir(&ro).unwrap();
    let _bind = Mounted::new(&["--bind", home.to_str().unwrap()], &ro);
    let status = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(status.success(), "remounting the store read-only failed");
    assert!(
        std::fs::write(ro.join("probe"), "x").is_err(),
        "the store is still writable"
    );

    let listed = list(&ro);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["rebuild", "--root", "shared:1", "--", "--target-dir"])
        .arg(&target)
        .env("KIWI_STACKBUILD_HOME", &ro)
        .env("KIWI_NG", "/bin/true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restoring from a read-only store failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&snapshot(&root), &snapshot(&target.join("build/image-root")));

    // A user who is not root, and can only read the store, lists it.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--list", "--json"])
        .env("KIWI_STACKBUILD_HOME", &ro)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nobody could not list a readable store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_nobody: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(as_nobody, listed);
}

#[test]
fn the_next_stash_removes_what_a_killed_one_left() {
    let (_tmp, root, home, _) = work_dirs("out");
    make_special_tree(&root);
    stash(&home, &root, "victim", "old");
    write_noise(&root.join("var/noise"), 64, 4 << 20);
    let leftovers = || -> Vec<String> {
        [home.clone(), home.join("blobs/sha256")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    };
    let mut left = Vec::new();
    for delay_ms in [200u64, 400, 800] {
        let mut child = stash_cmd(&home, &root, "victim", "new").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        if !child.wait().unwrap().success() {
            left = leftovers();
            if !left.is_empty() {
                break;
            }
        }
    }
    assert!(!left.is_empty(), "no kill left a temp file behind: nothing to prove");
    stash(&home, &root, "other", "1");
    assert_eq!(leftovers(), Vec::<String>::new(), "the next stash kept {left:?}");
}

/// The manifest digest, layer count and history length of `key`.
fn image_of(home: &Path, key: &str) -> (String, usize, usize) {
    let store = Store::new(home);
    let index = store.index().unwrap();
    let d = store
        .find(&index, key)
        .unwrap_or_else(|| panic!("{key} is not in the store"));
    let m = store.manifest(&d.sha256().unwrap()).unwrap();
    let config = store.config(&m.config().sha256().unwrap()).unwrap();
    (d.digest().to_string(), m.layers().len(), config.history.len())
}

fn blob_count(home: &Path) -> usize {
    std::fs::read_dir(home.join("blobs/sha256")).unwrap().count()
}

/// Stashes `root` as `name:tag` and gives back its stderr.
fn stash_log(home: &Path, root: &Path, name: &str, tag: &str, env: &[(&str, &str)]) -> String {
    let out = stash_cmd(home, root, name, tag)
        .env_remove("BUILD_DISTURL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stash {name}:{tag} failed: {stderr}");
    stderr
}

#[test]
fn an_unchanged_restash_adds_no_layer_and_a_changed_one_adds_one() {
    let (_tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    stash_log(&home, &root, "u", "latest", &[]);
    let first = image_of(&home, "u:latest");
    assert_eq!(first.1, 1);
    let blobs = blob_count(&home);

    let log = stash_log(&home, &root, "u", "2", &[]);
    assert!(
        log.contains("u:2 is unchanged since u:latest: tagged, no layer added"),
        "{log}"
    );
    assert_eq!(image_of(&home, "u:2"), first, "the unchanged tree got another image");
    assert_eq!(blob_count(&home), blobs, "an unchanged re-stash wrote blobs");

    // Without the cached tree, the base's layers are read, with the same answer.
    std::fs::remove_dir_all(home.join(".kiwi-stackbuild-trees")).unwrap();
    stash_log(&home, &root, "u", "3", &[]);
    assert_eq!(image_of(&home, "u:3"), first);
    assert_eq!(blob_count(&home), blobs);
    assert_eq!(
        std::fs::read_dir(home.join(".kiwi-stackbuild-trees")).unwrap().count(),
        1,
        "the tree read from the layers was not cached again"
    );

    // Other facts, the same tree: a new config with the same layers, and no
    // history entry that claims a layer.
    let log = stash_log(&home, &root, "u", "obs", &[("BUILD_DISTURL", "obs://build/p/r/x-1")]);
    assert!(log.contains("no layer added"), "{log}");
    let relabelled = image_of(&home, "u:obs");
    assert_ne!(relabelled.0, first.0);
    assert_eq!((relabelled.1, relabelled.2), (first.1, first.2));
    assert_eq!(
        list(&home).iter().find(|s| s["reference"] == "u:obs").unwrap()["layers"],
        1
    );

    // One file touched: exactly one layer more, and the tree comes back.
    let touched = root.join("etc/hostname");
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_890, 5);
    let file = std::fs::File::options().write(true).open(&touched).unwrap();
    file.set_modified(t).unwrap();
    let log = stash_log(&home, &root, "u", "4", &[]);
    assert!(!log.contains("no layer added"), "{log}");
    let changed = image_of(&home, "u:4");
    assert_eq!((changed.1, changed.2), (first.1 + 1, first.2 + 1));
    restore(&home, "u:4", &out);
    assert_same_tree(&snapshot(&root), &snapshot(&out));
}

/// The numbers of a re-stash's debug line "read N entries of ROOT in T (M
/// as the last scan of it recorded)": N and M.
fn entries_read(log: &str) -> (usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains("as the last scan of it recorded"))
        .unwrap_or_else(|| panic!("no line about the scan in {log}"));
    let number = |after: &str, before: &str| -> usize {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest[..rest.find(before).unwrap()].parse().unwrap()
    };
    (number("read ", " entries"), number("(", " as the last"))
}

/// A re-stash takes from the record of the root's last scan only inodes
/// that have not changed, and finds every change made since: an xattr, a
/// link target, a mode, and content whose mtime was set back.
#[test]
fn a_restash_finds_every_change_made_since_the_recorded_scan() {
    let (_tmp, root, home, out) = work_dirs("out");
    make_special_tree(&root);
    let at = |p: &str| root.join(p);
    std::fs::write(at("etc/data"), b"one").unwrap();
    xattr::set(at("etc/empty"), "user.note", b"1").unwrap();
    std::os::unix::fs::symlink("one", at("etc/pointer")).unwrap();
    // The record trusts only inodes that changed a few seconds before the
    // scan that recorded them.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let debug = [("RUST_LOG", "debug")];
    stash_log(&home, &root, "r", "1", &[]);
    let log = stash_log(&home, &root, "r", "2", &debug);
    assert!(log.contains("no layer added"), "{log}");
    let (entries, reused) = entries_read(&log);
    assert_eq!(reused, entries, "an unchanged root was read anew: {log}");

    std::thread::sleep(std::time::Duration::from_millis(50));
    xattr::set(at("etc/empty"), "user.note", b"2").unwrap();
    std::fs::remove_file(at("etc/pointer")).unwrap();
    std::os::unix::fs::symlink("two", at("etc/pointer")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(at("etc/hostname"), mode).unwrap();
    let mtime = std::fs::metadata(at("etc/data")).unwrap().modified().unwrap();
    std::fs::write(at("etc/data"), b"three").unwrap();
    let data = std::fs::File::options().write(true).open(at("etc/data")).unwrap();
    data.set_modified(mtime).unwrap();
    // etc itself changed too: a name in it was made anew.
    let log = stash_log(&home, &root, "r", "3", &debug);
    assert!(!log.contains("no layer added"), "{log}");
    assert_eq!(entries_read(&log), (entries, entries - 5), "{log}");
    restore(&home, "r:3", &out);
    assert_same_tree(&snapshot(&root), &snapshot(&out));
    let log = stash_log(&home, &root, "r", "4", &debug);
    assert!(log.contains("no layer added"), "{log}");
}

/// The layer blob of the one-layer stash `key`, and its media type.
fn only_layer(home: &Path, key: &str) -> (PathBuf, String) {
    let store = Store::new(home);
    let d = store.find(&store.index().unwrap(), key).unwrap();
    let manifest = store.manifest(&d.sha256().unwrap()).unwrap();
    assert_eq!(manifest.layers().len(), 1, "{key}");
    let layer = &manifest.layers()[0];
    (
        store.blob_path(&layer.sha256().unwrap()),
        layer.media_type().to_string(),
    )
}

/// gzip on one thread, gzip on two and zstd each restore the tree exactly;
/// gzip gives the same layer whatever the number of threads, and what it
/// writes (one gzip member per block) is read by gzip itself and by umoci.
#[test]
fn every_compression_and_number_of_jobs_restores_the_tree_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_special_tree(&root);
    // Several compression blocks of the layer, not all of them alike.
    write_noise(&root.join("var/noise"), 3, 1 << 20);
    std::fs::write(root.join("var/zeros"), vec![0u8; 5 << 20]).unwrap();
    let want = snapshot(&root);
    let mut layers = Vec::new();
    for (n, args) in [
        ["--compression", "gzip", "--jobs", "1"],
        ["--compression", "gzip", "--jobs", "2"],
        ["--compression", "zstd", "--jobs", "2"],
    ]
    .iter()
    .enumerate()
    {
        let home = tmp.path().join(format!("store{n}"));
        let out = stash_cmd(&home, &root, "c", "1")
            .args(args.as_slice())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (blob, media_type) = only_layer(&home, "c:1");
        let format = args[1];
        assert_eq!(media_type, format!("application/vnd.oci.image.layer.v1.tar+{format}"));
        let restored = tmp.path().join(format!("restored{n}"));
        restore(&home, "c:1", &restored);
        assert_same_tree(&want, &snapshot(&restored));
        layers.push((home, blob));
    }
    assert_eq!(
        std::fs::read(&layers[0].1).unwrap(),
        std::fs::read(&layers[1].1).unwrap(),
        "gzip --jobs 1 and --jobs 2 wrote different layers"
    );
    let gzip = &layers[1].1;
    let tested = Command::new("gzip").arg("-t").arg(gzip).status().unwrap();
    assert!(tested.success(), "gzip -t refuses the layer");
    let plain = Command::new("gzip").arg("-dc").arg(gzip).output().unwrap();
    assert!(plain.status.success());
    let mut listing = Command::new("tar")
        .args(["-tf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = listing.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &plain.stdout));
    let listed = listing.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(listed.status.success(), "tar -t refuses the layer");
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(names.lines().any(|l| l == "var/zeros"), "{names}");
    let by_umoci = tmp.path().join("by-umoci");
    restore_with(&layers[1].0, "c:1", &by_umoci, Unpacker::Umoci);
    assert_same_tree(&want, &snapshot(&by_umoci));
}

/// The manifest of the image `name` in the OCI layout `dir`, its layer
/// descriptors (media type, digest) and its config's diff_ids.
fn layout_image(dir: &Path, name: &str) -> (Vec<(String, String)>, Vec<String>) {
    use kiwi_stackbuild::oci::{self, ImageConfig, ImageIndex, ImageManifest};
    let index: ImageIndex = oci::read_json(&dir.join("index.json")).unwrap();
    let d = index.manifests().iter().find(|d| d.ref_name() == Some(name)).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(&oci::read_blob(dir, &d.sha256().unwrap()).unwrap()).unwrap();
    let config: ImageConfig =
        serde_json::from_slice(&oci::read_blob(dir, &manifest.config().sha256().unwrap()).unwrap()).unwrap();
    let layers = manifest
        .layers()
        .iter()
        .map(|l| (l.media_type().to_string(), l.digest().to_string()))
        .collect();
    (layers, config.rootfs.diff_ids.iter().map(|d| d.to_string()).collect())
}

/// A push with --compression zstd of a gzip stash gives zstd layers that
/// decompress to the config's diff_ids, and they are the very blobs a zstd
/// stash of the same tree has: compressed by us, not again by skopeo.
#[test]
fn a_zstd_push_to_a_layout_gives_our_zstd_layers_with_the_same_diff_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    make_special_tree(&root);
    write_noise(&root.join("var/noise"), 2, 1 << 20);
    let (gz, zst) = (tmp.path().join("gz"), tmp.path().join("zst"));
    stash(&gz, &root, "p", "1");
    let out = stash_cmd(&zst, &root, "p", "1")
        .args(["--compression", "zstd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pushed = tmp.path().join("pushed");
    let dest = format!("oci:{}:p", pushed.display());
    run(&gz, &["--compression", "zstd", "--jobs", "1", "push", "p:1", &dest]);
    let (layers, diff_ids) = layout_image(&pushed, "p");
    let (stashed, stashed_ids) = layout_image(&zst, "p:1");
    assert_eq!(layers, stashed, "the pushed layers are not the zstd stash's");
    assert_eq!(diff_ids, stashed_ids);
    let (gz_layers, gz_ids) = layout_image(&gz, "p:1");
    assert_eq!(gz_ids, diff_ids, "the config changed");
    assert!(gz_layers[0].0.ends_with("+gzip"), "{gz_layers:?}");
    for ((media_type, digest), diff_id) in layers.iter().zip(&diff_ids) {
        assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        let blob = pushed
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        let plain = Command::new("zstd").arg("-dc").arg(&blob).output().unwrap();
        assert!(plain.status.success());
        assert_eq!(kiwi_stackbuild::oci::Digest::of(&plain.stdout).to_string(), *diff_id);
    }
    // Pushed again with the layers as stored, they stay gzip.
    let kept = tmp.path().join("kept");
    run(&gz, &["push", "p:1", &format!("oci:{}:p", kept.display())]);
    assert_eq!(layout_image(&kept, "p").0, gz_layers);
}
