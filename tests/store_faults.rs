//! The store under faults and concurrency, with real skopeo (and a real
//! registry for the zstd push): a run killed
//! (SIGKILL) at every named fault point (`KIWI_STACKBUILD_FAULT`) or at a
//! random moment leaves every tag that existed before readable and
//! verified, no torn blob under its final name, and nothing the next writer
//! does not clean up; concurrent stashes and removals lose nothing and leave
//! nothing half removed; a long run holding only the shared lock lets
//! listing and restoring go on.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::registry::Registry;
use common::tree::{assert_same_tree, make_special_tree, snapshot, Snapshot};
use rustix::process::{waitpid, Pid, WaitOptions};
use sha2::{Digest as _, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_kiwi-stackbuild");
const FAULT: &str = "KIWI_STACKBUILD_FAULT";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The binary on the store at `home`, with no fault set and no kiwi-ng to
/// ask for its version (a rebuild's `system create` is `/bin/true`).
fn cmd(home: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env("KIWI_NG", "/bin/true")
        .env_remove(FAULT)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null());
    cmd
}

fn os<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
}

fn stash_args<'a>(root: &'a Path, name: &'a str, tag: &'a str) -> Vec<&'a OsStr> {
    let mut args = os(&["stash", "--root"]);
    args.push(root.as_os_str());
    args.extend(os(&["--container-name", name, "--tag", tag]));
    args
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(home: &Path, args: &[&OsStr]) -> Output {
    let out = cmd(home, args).output().expect("running kiwi-stackbuild");
    check(&out, &format!("{args:?}"));
    out
}

fn stash(home: &Path, root: &Path, name: &str, tag: &str) {
    run(home, &stash_args(root, name, tag));
}

/// Runs `args` with the fault point `point` set; the run must die there.
fn run_killed_at(home: &Path, args: &[&OsStr], point: &str) {
    let out = cmd(home, args).env(FAULT, point).output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{args:?} was not killed at {point} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    format!("{:x}", hash.finalize())
}

fn blob(home: &Path, digest: &str) -> PathBuf {
    home.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

/// Checks that the blob `d` (a descriptor) is there, of its size and digest.
fn verify_blob(home: &Path, d: &serde_json::Value, what: &str) -> PathBuf {
    let digest = d["digest"].as_str().unwrap();
    let path = blob(home, digest);
    assert!(path.is_file(), "{what}: blob {digest} is missing");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        d["size"].as_u64().unwrap(),
        "{what}: blob {digest} has the wrong size"
    );
    assert_eq!(
        format!("sha256:{}", sha256_file(&path)),
        digest,
        "{what}: blob {digest} is damaged"
    );
    path
}

/// Reads index.json and verifies every blob each ref reaches; returns the
/// refs with their manifest digests.
fn verify_store(home: &Path) -> BTreeMap<String, String> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(home.join("index.json")).unwrap()).unwrap();
    let mut refs = BTreeMap::new();
    for d in index["manifests"].as_array().unwrap() {
        let name = d["annotations"][REF_NAME].as_str().unwrap().to_string();
        let path = verify_blob(home, d, &name);
        let manifest: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
        verify_blob(home, &manifest["config"], &name);
        for layer in manifest["layers"].as_array().unwrap() {
            verify_blob(home, layer, &name);
        }
        let old = refs.insert(name.clone(), d["digest"].as_str().unwrap().to_string());
        assert!(old.is_none(), "{name} is in the index twice");
    }
    refs
}

/// Every file in the blob directory under a final name is whole: its
/// content has the digest its name says.
fn assert_no_torn_blob(home: &Path, what: &str) {
    for entry in fs::read_dir(home.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        assert_eq!(
            sha256_file(&entry.path()),
            name,
            "{what}: a torn blob under its final name"
        );
    }
}

/// The `.tmp-*` files and directories in the store and its blob directory.
fn leftovers(home: &Path) -> Vec<String> {
    [home.to_path_buf(), home.join("blobs/sha256")]
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

/// Restores `key` with the binary (a rebuild whose kiwi-ng does nothing)
/// and compares it with `expected`.
fn assert_restores(home: &Path, key: &str, expected: &Snapshot) {
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("t");
    let mut args = os(&["rebuild", "--root", key, "--", "--target-dir"]);
    args.push(dir.as_os_str());
    run(home, &args);
    assert_same_tree(expected, &snapshot(&dir.join("build/image-root")));
}

/// A store with three tags to copy for each fault: `base:1`, `base:2` (a
/// delta on it) and `other:1`, and the roots they came from.
struct Fixture {
    tmp: tempfile::TempDir,
    store: PathBuf,
    /// The root of `base:2`, and of the next stash on it.
    root: PathBuf,
    /// A root no tag holds.
    spare: PathBuf,
    /// What `base:2` restores to.
    base2: Snapshot,
    refs: BTreeMap<String, String>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let at = |n: &str| tmp.path().join(n);
        let (store, root, other, spare) = (at("template"), at("root"), at("other"), at("spare"));
        make_special_tree(&root);
        stash(&store, &root, "base", "1");
        fs::remove_file(root.join("etc/hostname")).unwrap();
        fs::write(root.join("etc/second"), "in base:2\n").unwrap();
        stash(&store, &root, "base", "2");
        let base2 = snapshot(&root);
        fs::write(root.join("etc/third"), "in base:3\n").unwrap();
        make_special_tree(&other);
        fs::write(other.join("other.txt"), "only in other:1\n").unwrap();
        stash(&store, &other, "other", "1");
        make_special_tree(&spare);
        fs::write(spare.join("spare.txt"), "in no tag\n").unwrap();
        let refs = verify_store(&store);
        assert_eq!(refs.len(), 3, "{refs:?}");
        Fixture {
            tmp,
            store,
            root,
            spare,
            base2,
            refs,
        }
    }

    /// A fresh copy of the store, for one run.
    fn copy(&self, name: &str) -> PathBuf {
        let home = self.tmp.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.store)
            .arg(&home)
            .status()
            .unwrap();
        assert!(status.success());
        home
    }

    /// After a run killed at `point`: every tag of the fixture but those in
    /// `changed` is there as it was and verifies, `base:2` restores, no blob
    /// is torn, and the next stash leaves no temp file. Returns the refs the
    /// killed run left.
    fn assert_survived(&self, home: &Path, point: &str, changed: &[&str]) -> BTreeMap<String, String> {
        let refs = verify_store(home);
        for (key, digest) in &self.refs {
            if !changed.contains(&key.as_str()) {
                assert_eq!(refs.get(key), Some(digest), "{point}: {key} changed");
            }
        }
        assert_no_torn_blob(home, point);
        assert_restores(home, "base:2", &self.base2);
        stash(home, &self.spare, "next", "1");
        assert_eq!(
            leftovers(home),
            Vec::<String>::new(),
            "{point}: the next stash left these"
        );
        verify_store(home);
        refs
    }
}

#[test]
fn a_stash_killed_at_any_point_leaves_every_tag() {
    let f = Fixture::new();
    let points = [
        ("stash-layer-written", false),
        ("stash-between-locks", false),
        ("stash-after-layer", false),
        ("stash-after-config", false),
        ("stash-after-manifest", false),
        ("stash-before-index", false),
        ("stash-after-index", true),
    ];
    for (point, tagged) in points {
        let home = f.copy(point);
        run_killed_at(&home, &stash_args(&f.root, "base", "3"), point);
        let refs = f.assert_survived(&home, point, &[]);
        assert_eq!(refs.contains_key("base:3"), tagged, "{point}: {refs:?}");
    }
}

#[test]
fn a_removal_killed_at_any_point_leaves_every_other_tag() {
    let f = Fixture::new();
    for (point, tagged) in [
        ("rm-before-index", true),
        ("rm-after-index", false),
        ("gc-between-removals", false),
    ] {
        let home = f.copy(point);
        run_killed_at(&home, &os(&["stash", "--rm", "other:1"]), point);
        let refs = f.assert_survived(&home, point, &["other:1"]);
        assert_eq!(refs.contains_key("other:1"), tagged, "{point}: {refs:?}");
        // Removing it again (or what is left of it) collects every blob.
        if tagged {
            run(&home, &os(&["stash", "--rm", "other:1"]));
        }
        run(&home, &os(&["stash", "--rm", "next"]));
        assert_eq!(
            count_blobs(&home),
            count_blobs(&f.store) - 3,
            "{point}: other:1 has 3 blobs of its own"
        );
    }
}

#[test]
fn a_squash_killed_at_any_point_leaves_every_tag() {
    let f = Fixture::new();
    for point in ["squash-unpacked", "squash-between-locks", "squash-before-index"] {
        let home = f.copy(point);
        run_killed_at(&home, &os(&["stash", "--squash", "base:2"]), point);
        f.assert_survived(&home, point, &[]);
        // The next squash does it.
        run(&home, &os(&["stash", "--squash", "base:2"]));
        let refs = verify_store(&home);
        assert_ne!(refs["base:2"], f.refs["base:2"], "{point}: base:2 was not squashed");
        assert_eq!(refs["base:1"], f.refs["base:1"], "{point}: base:1 changed");
        assert_restores(&home, "base:2", &f.base2);
    }
}

#[test]
fn an_interrupted_squash_removes_its_unpacked_tree() {
    let f = Fixture::new();
    for signal in ["INT", "TERM", "HUP"] {
        let home = f.copy(&format!("squash-{signal}"));
        let child = stopped_at(&home, &os(&["stash", "--squash", "base:2"]), "squash-unpacked");
        let unpacked: Vec<String> = leftovers(&home)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-squash-"))
            .collect();
        assert_eq!(
            unpacked.len(),
            1,
            "{signal}: no unpacked tree in the store: {:?}",
            leftovers(&home)
        );
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        resume(&child);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.signal().is_some(),
            "{signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(leftovers(&home), Vec::<String>::new(), "{signal}: left behind");
        assert_eq!(verify_store(&home), f.refs, "{signal}: the store changed");
    }
}

#[test]
fn a_tag_removed_or_stashed_again_while_it_is_squashed_is_left_so() {
    let f = Fixture::new();
    let meanwhile: [(&str, Vec<&OsStr>, &str); 2] = [
        (
            "removed",
            os(&["stash", "--rm", "base:2"]),
            "base:2 was removed while squashing it",
        ),
        (
            "restashed",
            stash_args(&f.root, "base", "2"),
            "base:2 names another image now (stashed again, or squashed by another run)",
        ),
    ];
    for (what, args, says) in meanwhile {
        let home = f.copy(what);
        let child = stopped_at(&home, &os(&["stash", "--squash", "base:2"]), "squash-between-locks");
        run_within_a_minute(&home, &args);
        let after_change = verify_store(&home);
        resume(&child);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert_eq!(
            verify_store(&home),
            after_change,
            "{what}: the squash changed the store"
        );
        assert_no_torn_blob(&home, what);
        stash(&home, &f.spare, "next", "1");
        assert_eq!(leftovers(&home), Vec::<String>::new(), "{what}: left behind");
    }
}

/// The blobs of the store no ref reaches.
fn unreferenced(home: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(home.join("index.json")).unwrap()).unwrap();
    let mut reached = std::collections::BTreeSet::new();
    for d in index["manifests"].as_array().unwrap() {
        let digest = d["digest"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(home, digest)).unwrap()).unwrap();
        reached.insert(digest.to_string());
        reached.insert(manifest["config"]["digest"].as_str().unwrap().to_string());
        for layer in manifest["layers"].as_array().unwrap() {
            reached.insert(layer["digest"].as_str().unwrap().to_string());
        }
    }
    fs::read_dir(home.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !reached.contains(&format!("sha256:{n}")))
        .collect()
}

fn count_blobs(home: &Path) -> usize {
    fs::read_dir(home.join("blobs/sha256"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// An `oci:DIR:pulled` layout holding an image no tag of the fixture has.
fn source_layout(f: &Fixture) -> String {
    let store = f.tmp.path().join("source-store");
    let root = f.tmp.path().join("source-root");
    make_special_tree(&root);
    fs::write(root.join("source.txt"), "only in the source\n").unwrap();
    stash(&store, &root, "src", "1");
    let layout = format!("oci:{}:pulled", f.tmp.path().join("source-layout").display());
    run(&store, &os(&["push", "src:1", &layout]));
    layout
}

#[test]
fn a_pull_killed_at_any_point_leaves_every_tag() {
    let f = Fixture::new();
    let source = source_layout(&f);
    for (point, tagged) in [
        ("pull-after-copy", false),
        ("pull-between-blobs", false),
        ("pull-before-index", false),
        ("pull-after-index", true),
    ] {
        let home = f.copy(point);
        run_killed_at(&home, &os(&["pull", &source, "pulled:1"]), point);
        let refs = f.assert_survived(&home, point, &[]);
        assert_eq!(refs.contains_key("pulled:1"), tagged, "{point}: {refs:?}");
        // The next pull brings what the killed one did not.
        run(&home, &os(&["pull", &source, "pulled:1"]));
        assert!(verify_store(&home).contains_key("pulled:1"));
    }
}

/// A rebuild with `--keep-root` on a foreign image fetches it into the
/// store first: killed while stashing, the fetched image and every tag
/// survive. When the fetched image is removed while the next one stashes,
/// the kept root still gets the source's layer: it is imported from the
/// rebuild's pin.
#[test]
fn a_kept_root_on_a_foreign_image_imports_its_layers_even_after_a_kill() {
    let f = Fixture::new();
    let source = source_layout(&f);
    let home = f.copy("keep-root");
    fn args<'a>(source: &'a str, target: &'a Path) -> Vec<&'a OsStr> {
        let mut args = os(&[
            "rebuild",
            "--root",
            source,
            "--keep-root",
            "kept:1",
            "--",
            "--target-dir",
        ]);
        args.push(target.as_os_str());
        args
    }
    let first = f.tmp.path().join("keep-target-1");
    let out = cmd(&home, &args(&source, &first))
        .env(FAULT, "stash-between-locks")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let left = leftovers(&home);
    assert!(
        left.iter().any(|n| n.starts_with(".tmp-import-")),
        "the source's layer was not staged for import: {left:?}"
    );
    let listed = |home: &Path| -> Vec<serde_json::Value> {
        serde_json::from_slice(&run(home, &os(&["stash", "--list", "--json"])).stdout).unwrap()
    };
    let fetched = listed(&home)
        .into_iter()
        .find(|e| e["fetched_from"] == source.as_str())
        .unwrap_or_else(|| panic!("{source} was not kept in the store"));
    let fetched = fetched["reference"].as_str().unwrap().to_string();
    f.assert_survived(&home, "stash-between-locks", &[]);

    let second = f.tmp.path().join("keep-target-2");
    let child = stopped_at(&home, &args(&source, &second), "stash-between-locks");
    run(&home, &os(&["stash", "--rm", &fetched]));
    resume(&child);
    let out = child.wait_with_output().unwrap();
    check(&out, "the rebuild with --keep-root");
    let refs = verify_store(&home);
    assert!(refs.contains_key("kept:1") && !refs.contains_key(&fetched), "{refs:?}");
    let kept = listed(&home).into_iter().find(|e| e["reference"] == "kept:1").unwrap();
    // The fake kiwi-ng changes nothing: the kept image is the source's
    // layer, imported, and no delta.
    assert_eq!(kept["layers"], 1, "the source's layer alone: {kept}");
    assert_restores(&home, "kept:1", &snapshot(&second.join("build/image-root")));
    assert_eq!(leftovers(&home), Vec::<String>::new());
}

#[test]
fn a_push_killed_leaves_the_store_as_it_was() {
    let f = Fixture::new();
    let home = f.copy("push");
    let out = f.tmp.path().join("pushed");
    let dest = format!("oci:{}:x", out.display());
    run_killed_at(&home, &os(&["push", "base:2", &dest]), "push-before-copy");
    f.assert_survived(&home, "push-before-copy", &[]);
    run(&home, &os(&["push", "base:2", &dest]));
}

#[test]
fn a_zstd_push_killed_between_its_copies_leaves_the_store_as_it_was() {
    let f = Fixture::new();
    let home = f.copy("push-zstd");
    let registry = Registry::plain();
    let dest = registry.docker("faults/base:2");
    let push = os(&[
        "--tls-verify=false",
        "--compress-format",
        "zstd",
        "push",
        "base:2",
        &dest,
    ]);
    // The killed push leaves its scratch layout in TMPDIR: keep it in ours.
    let out = cmd(&home, &push)
        .env(FAULT, "push-between-copies")
        .env("TMPDIR", f.tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    f.assert_survived(&home, "push-between-copies", &[]);
    run(&home, &push);
}

/// A pseudo-random number generator seeded from the clock (xorshift).
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Fills `dir` with `files` files of `size` pseudo-random bytes each.
fn write_noise(dir: &Path, files: usize, size: usize, rng: &mut Rng) {
    fs::create_dir_all(dir).unwrap();
    for n in 0..files {
        let mut data = Vec::with_capacity(size + 8);
        while data.len() < size {
            data.extend_from_slice(&rng.next().to_le_bytes());
        }
        data.truncate(size);
        fs::write(dir.join(format!("f{n}")), &data).unwrap();
    }
}

#[test]
fn a_stash_killed_at_random_moments_leaves_every_tag() {
    let f = Fixture::new();
    let home = f.copy("random");
    let big = f.tmp.path().join("big");
    make_special_tree(&big);
    let mut rng = Rng::from_time();
    println!("seed {}", rng.0);
    for d in 0..30 {
        write_noise(&big.join(format!("usr/share/small/{d}")), 100, 2000, &mut rng);
    }
    write_noise(&big.join("usr/lib/large"), 12, 1 << 20, &mut rng);
    // How long a whole stash of it takes here, to kill within that time.
    let started = Instant::now();
    stash(&f.copy("timing"), &big, "big", "1");
    let whole = started.elapsed();
    println!("a whole stash takes {whole:.2?}");
    let before = verify_store(&home);
    let mut killed = 0;
    for n in 0..8 {
        let delay = Duration::from_micros(rng.next() % (whole.as_micros() as u64 * 11 / 10).max(1));
        let key = format!("big-{n}");
        let mut child = cmd(&home, &stash_args(&big, &key, "1"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        println!(
            "run {n}: SIGKILL sent after {delay:.2?}: {status}, left {:?}",
            leftovers(&home)
        );
        killed += usize::from(status.signal() == Some(9));
        let refs = verify_store(&home);
        for (key, digest) in &before {
            assert_eq!(refs.get(key), Some(digest), "after {delay:.2?}: {key} changed");
        }
        assert_no_torn_blob(&home, &format!("after {delay:.2?}"));
    }
    assert!(killed > 0, "every stash finished before it was killed");
    assert_restores(&home, "base:2", &f.base2);
    stash(&home, &f.spare, "next", "1");
    assert_eq!(leftovers(&home), Vec::<String>::new(), "the next stash left these");
    verify_store(&home);
}

#[test]
fn concurrent_stashes_removals_and_a_pull_lose_nothing_and_leave_nothing_half_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |n: &str| tmp.path().join(n);
    let home = at("store");
    let roots: Vec<PathBuf> = (0..4)
        .map(|n| {
            let root = at(&format!("root{n}"));
            make_special_tree(&root);
            fs::write(root.join("which"), format!("root {n}\n")).unwrap();
            root
        })
        .collect();
    stash(&home, &roots[0], "keep", "1");
    for tag in ["1", "2", "3"] {
        fs::write(roots[1].join("pre"), tag).unwrap();
        stash(&home, &roots[1], "pre", tag);
    }
    stash(&home, &roots[2], "gone", "1");
    stash(&home, &roots[2], "gone", "2");
    let source_store = at("source-store");
    fs::write(roots[0].join("source"), "pulled\n").unwrap();
    stash(&source_store, &roots[0], "src", "1");
    let source = format!("oci:{}:pulled", at("source-layout").display());
    run(&source_store, &os(&["push", "src:1", &source]));
    // Stashes whose layers are those of the tags being removed, so the
    // removals' garbage collection runs between their locks.
    let mut jobs: Vec<(String, Vec<&OsStr>)> = Vec::new();
    for n in 0..4 {
        let name: &'static str = ["n0", "n1", "n2", "n3"][n];
        jobs.push((format!("{name}:1"), stash_args(&roots[[2, 1, 2, 3][n]], name, "1")));
    }
    for tag in ["1", "2", "3", "4"] {
        jobs.push((format!("same:{tag}"), stash_args(&roots[3], "same", tag)));
    }
    jobs.push(("rm pre:1".into(), os(&["stash", "--rm", "pre:1"])));
    jobs.push(("rm gone".into(), os(&["stash", "--rm", "gone"])));
    jobs.push(("pull".into(), os(&["pull", &source, "pulled:1"])));
    let children: Vec<(String, Child)> = jobs
        .iter()
        .map(|(what, args)| {
            let child = cmd(&home, args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (what.clone(), child)
        })
        .collect();
    for (what, child) in children {
        check(&child.wait_with_output().unwrap(), &what);
    }
    let refs = verify_store(&home);
    let keys: Vec<&str> = refs.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "keep:1", "n0:1", "n1:1", "n2:1", "n3:1", "pre:2", "pre:3", "pulled:1", "same:1", "same:2", "same:3",
            "same:4"
        ]
    );
    assert_no_torn_blob(&home, "after the concurrent runs");
    assert_eq!(leftovers(&home), Vec::<String>::new());
    assert_eq!(
        unreferenced(&home),
        Vec::<String>::new(),
        "blobs of removed tags are left"
    );
    let out = at("restored");
    let mut args = os(&["rebuild", "--root", "n0:1", "--", "--target-dir"]);
    args.push(out.as_os_str());
    run(&home, &args);
    assert_same_tree(&snapshot(&roots[2]), &snapshot(&out.join("build/image-root")));
}

/// Starts `args` with the fault point `point` set to stop there, and waits
/// until it has.
fn stopped_at(home: &Path, args: &[&OsStr], point: &str) -> Child {
    let child = cmd(home, args)
        .env(FAULT, format!("{point}:stop"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&child);
    child
}

/// Waits until the child stops itself (SIGSTOP at a fault point).
fn wait_stopped(child: &Child) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let (_, status) = waitpid(Some(pid), WaitOptions::UNTRACED).unwrap().unwrap();
    assert!(status.stopped(), "the run ended instead of stopping: {status:?}");
}

fn resume(child: &Child) {
    let status = Command::new("kill")
        .arg("-CONT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `args` and waits for it at most a minute: a run that blocks on the
/// store lock fails the test instead of hanging it.
fn run_within_a_minute(home: &Path, args: &[&OsStr]) -> Output {
    let mut child = cmd(home, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{args:?} is blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    check(&out, &format!("{args:?}"));
    out
}

/// While another run holds the shared lock, listing and restoring go on.
fn assert_readers_go_on(f: &Fixture, home: &Path) {
    let listed = run_within_a_minute(home, &os(&["stash", "--list", "--json"]));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), f.refs.len(), "{listed:?}");
    let target = f
        .tmp
        .path()
        .join(format!("{}-restored", home.file_name().unwrap().to_string_lossy()));
    let mut args = os(&["rebuild", "--root", "base:2", "--", "--target-dir"]);
    args.push(target.as_os_str());
    run_within_a_minute(home, &args);
    assert_same_tree(&f.base2, &snapshot(&target.join("build/image-root")));
}

#[test]
fn a_paused_stash_lets_listing_and_restoring_go_on() {
    let f = Fixture::new();
    let home = f.copy("paused");
    let child = stopped_at(&home, &stash_args(&f.root, "base", "3"), "stash-layer-written");
    assert_readers_go_on(&f, &home);
    resume(&child);
    check(&child.wait_with_output().unwrap(), "the paused stash");
    assert!(verify_store(&home).contains_key("base:3"));
}

/// Starts `args` with `tool` (as its variable `env_var` names it) wrapped
/// so that it waits, when its first argument is `when` (any call when
/// `None`), for the test to let it go on; `env` is set too. Returns once the
/// tool waits: the run, and the file whose creation lets it go on.
fn start_slowed(
    f: &Fixture,
    home: &Path,
    args: &[&OsStr],
    (tool, env_var, when): (&str, &str, Option<&str>),
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let (started, go) = (
        f.tmp.path().join(format!("{tool}-started")),
        f.tmp.path().join(format!("{tool}-go")),
    );
    let wrapper = f.tmp.path().join(format!("slow-{tool}"));
    let condition = when.map_or("true".to_string(), |w| format!("[ \"$1\" = {w} ]"));
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif {condition}; then\n  touch '{}'\n  while [ ! -e '{}' ]; do sleep 0.05; done\nfi\nexec {tool} \"$@\"\n",
            started.display(),
            go.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let child = cmd(home, args)
        .env(env_var, &wrapper)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !started.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "{args:?} never reached {tool}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, go)
}

/// A skopeo that waits in its copy.
const SLOW_COPY: (&str, &str, Option<&str>) = ("skopeo", "SKOPEO", Some("copy"));

#[test]
fn a_slow_pull_lets_listing_restoring_and_stashing_go_on() {
    let f = Fixture::new();
    let source = source_layout(&f);
    let home = f.copy("slow-pull");
    let (child, go) = start_slowed(&f, &home, &os(&["pull", &source, "pulled:1"]), SLOW_COPY, &[]);
    assert_readers_go_on(&f, &home);
    // A writer's exclusive step does not wait for the copy either.
    run_within_a_minute(&home, &stash_args(&f.root, "during", "1"));
    fs::write(&go, "").unwrap();
    check(&child.wait_with_output().unwrap(), "the slow pull");
    let refs = verify_store(&home);
    assert!(
        refs.contains_key("pulled:1") && refs.contains_key("during:1"),
        "{refs:?}"
    );
}

#[test]
fn a_slow_rebuild_lets_stashes_and_removals_go_on_and_unpacks_what_it_pinned() {
    let f = Fixture::new();
    let home = f.copy("slow-rebuild");
    let target = f.tmp.path().join("slow-rebuild-target");
    let mut args = os(&["rebuild", "--root", "base:2", "--", "--target-dir"]);
    args.push(target.as_os_str());
    // umoci waits before it unpacks.
    let unpacker = [("KIWI_STACKBUILD_UNPACKER", "umoci")];
    let (child, go) = start_slowed(&f, &home, &args, ("umoci", "UMOCI", None), &unpacker);
    run_within_a_minute(&home, &stash_args(&f.root, "during", "1"));
    run_within_a_minute(&home, &os(&["stash", "--rm", "base"]));
    fs::write(&go, "").unwrap();
    check(&child.wait_with_output().unwrap(), "the slow rebuild");
    assert_same_tree(&f.base2, &snapshot(&target.join("build/image-root")));
    assert_eq!(verify_store(&home).keys().collect::<Vec<_>>(), ["during:1", "other:1"]);
    assert_eq!(leftovers(&home), Vec::<String>::new(), "the pin is left");
}

#[test]
fn a_slow_push_lets_stashes_and_removals_go_on_and_pushes_what_it_pinned() {
    let f = Fixture::new();
    let home = f.copy("slow-push");
    let out = f.tmp.path().join("pushed");
    let dest = format!("oci:{}:base", out.display());
    let (child, go) = start_slowed(&f, &home, &os(&["push", "base:2", &dest]), SLOW_COPY, &[]);
    run_within_a_minute(&home, &stash_args(&f.root, "during", "1"));
    // Even the stash being pushed may go meanwhile: the push has it pinned.
    run_within_a_minute(&home, &os(&["stash", "--rm", "base"]));
    fs::write(&go, "").unwrap();
    check(&child.wait_with_output().unwrap(), "the slow push");
    let refs = verify_store(&home);
    assert_eq!(refs.keys().collect::<Vec<_>>(), ["during:1", "other:1"]);
    assert_eq!(leftovers(&home), Vec::<String>::new(), "the pin is left");
    // What was pushed is base:2, whole.
    let restored = f.tmp.path().join("from-pushed");
    let mut args = os(&["rebuild", "--root"]);
    let root = format!("oci:{}:base", out.display());
    args.push(OsStr::new(&root));
    args.extend(os(&["--", "--target-dir"]));
    args.push(restored.as_os_str());
    run(&home, &args);
    assert_same_tree(&f.base2, &snapshot(&restored.join("build/image-root")));
}

#[test]
fn a_base_removed_between_the_locks_fails_the_stash_and_leaves_nothing() {
    let f = Fixture::new();
    let home = f.copy("base-removed");
    let child = stopped_at(&home, &stash_args(&f.root, "base", "3"), "stash-between-locks");
    let layer_files = || -> Vec<String> {
        leftovers(&home)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-layer-"))
            .collect()
    };
    assert_eq!(layer_files().len(), 1, "the paused stash has its layer ready");
    run(&home, &os(&["stash", "--rm", "base"]));
    assert_eq!(
        layer_files().len(),
        1,
        "the removal's cleanup took the layer of a live stash"
    );
    resume(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stash succeeded on a removed base");
    assert!(
        stderr.contains("was removed while stashing") && stderr.contains("run the stash again"),
        "{stderr}"
    );
    assert_eq!(leftovers(&home), Vec::<String>::new(), "the failed stash left these");
    let refs = verify_store(&home);
    assert_eq!(refs.keys().collect::<Vec<_>>(), ["other:1"]);
    assert_no_torn_blob(&home, "after the failed stash");
}

/// Waits until `child` waits for an flock (`/proc/locks` lists it with `->`).
fn wait_blocked_on_a_lock(child: &Child) {
    let waiting = format!(" {} ", child.id());
    let started = Instant::now();
    while !fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.contains(&waiting))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never waited for the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn removing_every_tag_reads_the_tags_under_the_lock() {
    let f = Fixture::new();
    let home = f.copy("rm-all");
    // One removal holds the lock, stopped before it replaces the index...
    let first = stopped_at(&home, &os(&["stash", "--rm", "base:1"]), "rm-before-index");
    // ...while the removal of every tag of base waits for it.
    let all = cmd(&home, &os(&["stash", "--rm", "base"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_blocked_on_a_lock(&all);
    resume(&first);
    check(&first.wait_with_output().unwrap(), "the removal of base:1");
    let out = all.wait_with_output().unwrap();
    check(&out, "the removal of every tag of base");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed base:2 "));
    assert_eq!(verify_store(&home).keys().collect::<Vec<_>>(), ["other:1"]);
    assert_eq!(unreferenced(&home), Vec::<String>::new());
}

#[test]
fn every_fault_point_of_the_source_is_hit_by_a_test_here() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tests = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/store_faults.rs")).unwrap();
    let mut points = Vec::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension() != Some(OsStr::new("rs")) {
            continue;
        }
        let text = fs::read_to_string(entry.path()).unwrap();
        for piece in text.split("fault::point(\"").skip(1) {
            points.push(piece.split('"').next().unwrap().to_string());
        }
    }
    assert!(points.len() >= 10, "{points:?}");
    let missed: Vec<&String> = points
        .iter()
        .filter(|p| !tests.contains(&format!("\"{p}\"")) && !tests.contains(&format!("\"{p}:stop\"")))
        .collect();
    assert!(missed.is_empty(), "fault points no test uses: {missed:?}");
}
