//! A store of three real stashes, damaged the ways disks, users and other
//! tools damage it: `--list` still shows what is readable and names what is
//! broken, `--rm` frees exactly what it should or changes nothing,
//! `--check` names every problem and `--check --repair` removes only what
//! no stash needs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::tree::make_special_tree;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The exit status of a command that found damage.
const DAMAGED: i32 = 3;

/// A store with `a:1`, `a:2` (a delta on `a:1`, sharing its layer) and `b:1`.
struct Damage {
    tmp: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
}

impl Damage {
    fn new() -> Damage {
        let tmp = tempfile::tempdir().unwrap();
        let (root, home) = (tmp.path().join("root"), tmp.path().join("store"));
        make_special_tree(&root);
        let d = Damage { tmp, home, root };
        d.stash("a", "1");
        fs::write(d.root.join("etc/added"), "in a:2 and b:1\n").unwrap();
        d.stash("a", "2");
        d.stash("b", "1");
        d
    }

    fn stash(&self, name: &str, tag: &str) {
        let root = self.root.to_str().unwrap();
        self.ok(&["stash", "--root", root, "--container-name", name, "--tag", tag]);
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .arg("--stash-home")
            .arg(&self.home)
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KIWI_STACKBUILD_HOME")
            .output()
            .expect("running kiwi-stackbuild")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        out
    }

    /// Runs `args`, which must exit with `code`.
    fn fails(&self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: stdout {}\nstderr {}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    fn index(&self) -> Value {
        serde_json::from_slice(&fs::read(self.home.join("index.json")).unwrap()).unwrap()
    }

    /// The index entry of `key`.
    fn entry(&self, key: &str) -> Value {
        let index = self.index();
        let found = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == key)
            .cloned();
        found.unwrap_or_else(|| panic!("no {key} in the index"))
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.home.join("blobs/sha256").join(hex(digest))
    }

    fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&fs::read(self.blob(digest)).unwrap()).unwrap()
    }

    /// The manifest, config and layer digests of `key`.
    fn parts(&self, key: &str) -> (String, String, Vec<String>) {
        let manifest = self.entry(key)["digest"].as_str().unwrap().to_string();
        let m = self.json(&manifest);
        let layers = m["layers"].as_array().unwrap();
        let layers = layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        (manifest, m["config"]["digest"].as_str().unwrap().to_string(), layers)
    }

    /// Every file name in `blobs/sha256`.
    fn blobs(&self) -> BTreeSet<String> {
        fs::read_dir(self.home.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Puts `bytes` into the store as a blob; returns its descriptor.
    fn put(&self, bytes: &[u8], media_type: &str) -> Value {
        let digest = sha256(bytes);
        fs::write(self.blob(&digest), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Adds `descriptor` to the index as `key`, as another tool would.
    fn tag(&self, key: &str, mut descriptor: Value) {
        descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": key});
        let mut index = self.index();
        index["manifests"].as_array_mut().unwrap().push(descriptor);
        fs::write(self.home.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// The store, bind-mounted read-only at a new place (undo with
    /// [`Damage::unmount`]).
    fn read_only_view(&self) -> PathBuf {
        let ro = self.tmp.path().join("ro-store");
        fs::create_dir(&ro).unwrap();
        let mount = |args: &[&str]| {
            let status = Command::new("mount").args(args).status().expect("running mount");
            assert!(status.success(), "mount {args:?} failed");
        };
        mount(&["--bind", self.home.to_str().unwrap(), ro.to_str().unwrap()]);
        mount(&["-o", "remount,bind,ro", ro.to_str().unwrap()]);
        ro
    }

    fn unmount(&self, ro: &std::path::Path) {
        let _ = Command::new("umount").arg(ro).status();
    }

    /// `--list --json`, with its exit status.
    fn list(&self) -> (Vec<Value>, Option<i32>) {
        let out = self.run(&["stash", "--list", "--json"]);
        let list = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
        (list, out.status.code())
    }

    /// What `--list --json` says is wrong with each stash, in index order.
    fn broken(&self) -> Vec<(String, Option<String>)> {
        self.list()
            .0
            .iter()
            .map(|e| {
                let broken = e["broken"].as_str().map(str::to_string);
                (e["reference"].as_str().unwrap().to_string(), broken)
            })
            .collect()
    }

    /// Removes `key`; it must succeed and free exactly `freed` (digests).
    fn rm_frees(&self, key: &str, freed: &[&str]) {
        let before = self.blobs();
        let out = self.ok(&["stash", "--rm", key]);
        let gone: BTreeSet<String> = before.difference(&self.blobs()).cloned().collect();
        let want: BTreeSet<String> = freed.iter().map(|d| hex(d).to_string()).collect();
        assert_eq!(gone, want, "--rm {key} freed the wrong blobs");
        assert!(
            stderr(&out).contains(&format!("removed {key} ({} unused blobs freed)", freed.len())),
            "{}",
            stderr(&out)
        );
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The row of `key` in the text listing.
fn row<'a>(text: &'a str, key: &str) -> &'a str {
    let found = text.lines().find(|l| l.starts_with(&format!("{key} ")));
    found.unwrap_or_else(|| panic!("no row for {key} in\n{text}"))
}

#[test]
fn a_missing_manifest_breaks_only_its_stash() {
    let d = Damage::new();
    let (a1, a1_config, _) = d.parts("a:1");
    let (b1, b1_config, b1_layers) = d.parts("b:1");
    fs::remove_file(d.blob(&a1)).unwrap();

    let out = d.fails(&["stash", "--list"], DAMAGED);
    let text = stdout(&out);
    assert!(
        row(&text, "a:1").contains(&format!("broken: manifest {a1} missing")),
        "{text}"
    );
    assert!(!row(&text, "a:2").contains("broken") && !row(&text, "b:1").contains("broken"));
    assert!(
        stderr(&out).contains("1 of 3 stashes is broken; see kiwi-stackbuild stash --check"),
        "{}",
        stderr(&out)
    );
    let (list, code) = d.list();
    assert_eq!(code, Some(DAMAGED));
    assert_eq!(list[1]["layers"], 2, "a:2 is still listed whole");
    assert_eq!(
        d.broken(),
        [
            ("a:1".into(), Some(format!("manifest {a1} missing"))),
            ("a:2".into(), None),
            ("b:1".into(), None),
        ]
    );

    let out = d.fails(&["stash", "--check"], DAMAGED);
    let text = stdout(&out);
    assert!(text.contains(&format!("a:1: manifest {a1} missing")), "{text}");
    assert!(text.contains("stash --rm a:1"), "{text}");
    // Nothing can be found through a missing manifest: a:1's config is
    // unused now.
    assert!(
        text.contains(&format!("blob {a1_config} is not used by any stash")),
        "{text}"
    );

    // Restashing onto it names it rather than a blob.
    let index = fs::read(d.home.join("index.json")).unwrap();
    let root = d.root.to_str().unwrap();
    let out = d.fails(&["stash", "--root", root, "--container-name", "a", "--tag", "1"], 1);
    assert!(
        stderr(&out).contains("reading a:1, the stash to add a layer to"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("kiwi-stackbuild stash --rm a:1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(d.home.join("index.json")).unwrap(), index);

    // b:1's blobs go, and so does the config nothing reaches any more.
    let mut freed = vec![b1.as_str(), b1_config.as_str(), a1_config.as_str()];
    freed.extend(b1_layers.iter().map(String::as_str));
    d.rm_frees("b:1", &freed);
    assert_eq!(d.broken()[0], ("a:1".into(), Some(format!("manifest {a1} missing"))));
}

#[test]
fn a_missing_config_or_layer_is_named_and_healthy_stashes_are_removed() {
    let d = Damage::new();
    let (_, b1_config, _) = d.parts("b:1");
    let (a2, a2_config, a2_layers) = d.parts("a:2");
    let (_, _, a1_layers) = d.parts("a:1");
    assert_eq!(a1_layers[0], a2_layers[0], "a:2 shares a:1's layer");
    fs::remove_file(d.blob(&b1_config)).unwrap();

    let (list, code) = d.list();
    assert_eq!(code, Some(DAMAGED));
    assert_eq!(list[2]["broken"], format!("config {b1_config} missing"));
    assert_eq!(list[2]["kind"], "oci image");
    d.rm_frees("a:2", &[&a2, &a2_config, &a2_layers[1]]);
    assert!(d.blob(&a1_layers[0]).exists(), "a:1's layer went with a:2");

    fs::remove_file(d.blob(&a1_layers[0])).unwrap();
    assert_eq!(
        d.broken(),
        [
            ("a:1".into(), Some(format!("layer {} missing", a1_layers[0]))),
            ("b:1".into(), Some(format!("config {b1_config} missing"))),
        ]
    );
    let out = d.fails(&["stash", "--list"], DAMAGED);
    assert!(stderr(&out).contains("2 of 2 stashes are broken"), "{}", stderr(&out));
}

#[test]
fn a_truncated_layer_is_listed_and_a_flipped_byte_is_found_by_check() {
    let d = Damage::new();
    let (_, _, a1_layers) = d.parts("a:1");
    let (_, _, b1_layers) = d.parts("b:1");
    let shared = d.blob(&a1_layers[0]);
    let size = fs::metadata(&shared).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&shared)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let flipped = d.blob(&b1_layers[0]);
    let mut bytes = fs::read(&flipped).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&flipped, bytes).unwrap();

    let short = format!("layer {} is {} bytes, {size} recorded", a1_layers[0], size / 2);
    assert_eq!(
        d.broken(),
        [
            ("a:1".into(), Some(short.clone())),
            ("a:2".into(), Some(short)),
            // --list only looks a layer up: same size, so it looks whole.
            ("b:1".into(), None),
        ]
    );

    let out = d.fails(&["stash", "--check"], DAMAGED);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "blob {} is corrupt ({} bytes, {size} recorded); needed by a:1, a:2",
            a1_layers[0],
            size / 2
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "blob {} is corrupt (its content does not match its digest); needed by b:1; \
             re-pull or re-stash b:1, or remove it with kiwi-stackbuild stash --rm b:1",
            b1_layers[0]
        )),
        "{text}"
    );
    let before = d.blobs();
    let out = d.fails(&["stash", "--check", "--repair"], DAMAGED);
    assert!(!stdout(&out).contains("removed"), "{}", stdout(&out));
    assert_eq!(d.blobs(), before, "a repair removed a blob a stash needs");
    assert!(stderr(&out).contains("2 problems remain"), "{}", stderr(&out));
}

#[test]
fn foreign_media_types_are_listed_and_keep_their_blobs() {
    let d = Damage::new();
    let docker_layer = d.put(b"a docker layer", "application/vnd.docker.image.rootfs.diff.tar.gzip");
    let config = json!({"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Labels": {"made.by": "docker"}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"a docker layer")]}});
    let docker_config = d.put(
        &serde_json::to_vec(&config).unwrap(),
        "application/vnd.docker.container.image.v1+json",
    );
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": docker_config, "layers": [docker_layer]});
    let docker = d.put(
        &serde_json::to_vec(&manifest).unwrap(),
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    let mut platform = docker.clone();
    platform["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let list = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": [platform]});
    let list = d.put(
        &serde_json::to_vec(&list).unwrap(),
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
    let mut a2 = d.entry("a:2");
    a2.as_object_mut().unwrap().remove("annotations");
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [a2]});
    let index = d.put(
        &serde_json::to_vec(&index).unwrap(),
        "application/vnd.oci.image.index.v1+json",
    );
    d.tag("docker:1", docker.clone());
    d.tag("list:1", list.clone());
    d.tag("multi:1", index.clone());

    let (entries, code) = d.list();
    assert_eq!(code, Some(0), "{entries:#?}");
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["reference"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("a:1", "oci image"),
            ("a:2", "oci image"),
            ("b:1", "oci image"),
            ("docker:1", "docker image"),
            ("list:1", "docker manifest list"),
            ("multi:1", "oci index"),
        ]
    );
    assert_eq!(entries[3]["labels"]["made.by"], "docker");
    assert!(entries.iter().all(|e| e["broken"].is_null()), "{entries:#?}");
    let text = stdout(&d.ok(&["stash", "--list"]));
    assert!(row(&text, "list:1").ends_with("(docker manifest list)"), "{text}");

    // a:2's manifest is the index's image: removing the tag frees nothing.
    let (a1, a1_config, _) = d.parts("a:1");
    let (b1, b1_config, b1_layers) = d.parts("b:1");
    let (_, a2_config, a2_layers) = d.parts("a:2");
    d.rm_frees("a:2", &[]);
    d.rm_frees("a:1", &[&a1, &a1_config]);
    let mut freed = vec![b1.as_str(), b1_config.as_str()];
    freed.extend(b1_layers.iter().map(String::as_str));
    d.rm_frees("b:1", &freed);
    for blob in [&docker, &docker_config, &docker_layer, &list, &index] {
        assert!(d.blob(blob["digest"].as_str().unwrap()).exists(), "{blob} went");
    }
    for digest in [&a2_config, &a2_layers[0], &a2_layers[1]] {
        assert!(d.blob(digest).exists(), "{digest}, which multi:1 needs, went");
    }
    let out = d.ok(&["stash", "--check"]);
    assert!(stderr(&out).contains("no problems (3 refs"), "{}", stderr(&out));
}

#[test]
fn an_unparseable_manifest_makes_rm_change_nothing() {
    let d = Damage::new();
    let (a1, a1_config, _) = d.parts("a:1");
    // Another tool tagged a manifest that is cut short, digest and all.
    let junk = d.put(
        b"{\"schemaVersion\": 2, \"config\": ",
        "application/vnd.oci.image.manifest.v1+json",
    );
    let mut index = d.index();
    for m in index["manifests"].as_array_mut().unwrap() {
        if m["annotations"]["org.opencontainers.image.ref.name"] == "b:1" {
            m["digest"] = junk["digest"].clone();
            m["size"] = junk["size"].clone();
        }
    }
    fs::write(d.home.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let b1 = junk["digest"].as_str().unwrap();
    let (index, blobs) = (fs::read(d.home.join("index.json")).unwrap(), d.blobs());

    let (_, code) = d.list();
    assert_eq!(code, Some(DAMAGED));
    let broken = d.broken()[2].1.clone().unwrap();
    assert!(
        broken.starts_with(&format!("manifest {b1} cannot be parsed: ")),
        "{broken}"
    );
    for key in ["a:1", "a"] {
        let out = d.fails(&["stash", "--rm", key], 1);
        let err = stderr(&out);
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(
            err.contains(&format!("cannot tell which blobs b:1 needs: its manifest {b1}")),
            "{err}"
        );
        assert!(err.contains("kiwi-stackbuild stash --rm b:1"), "{err}");
        assert_eq!(
            fs::read(d.home.join("index.json")).unwrap(),
            index,
            "--rm {key} changed the index"
        );
        assert_eq!(d.blobs(), blobs, "--rm {key} changed the blobs");
    }
    // Removing the ref that blocks unblocks the rest.
    d.ok(&["stash", "--rm", "b:1"]);
    d.rm_frees("a:1", &[&a1, &a1_config]);
}

#[test]
fn a_missing_index_is_an_error_for_every_command() {
    let d = Damage::new();
    fs::remove_file(d.home.join("index.json")).unwrap();
    let blobs = d.blobs();
    let root = d.root.to_str().unwrap();
    let archive = format!("oci:{}:x", d.tmp.path().join("elsewhere").display());
    let commands: [&[&str]; 8] = [
        &["stash", "--list"],
        &["stash", "--list", "--json"],
        &["stash", "--root", root, "--container-name", "c"],
        &["stash", "--rm", "a:1"],
        &["stash", "--check"],
        &["stash", "--check", "--repair"],
        &["pull", &archive, "c:1"],
        &["push", "a:1", &archive],
    ];
    let store = d.home.display().to_string();
    for args in commands {
        let out = d.fails(args, 1);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "the stash store {store} has {} blobs but no index.json",
                blobs.len()
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains(&format!("restore {store}/index.json")), "{args:?}: {err}");
        assert!(
            err.contains(&format!("remove the directory {store}")),
            "{args:?}: {err}"
        );
        assert!(!d.home.join("index.json").exists(), "{args:?} wrote an index");
        assert_eq!(d.blobs(), blobs, "{args:?} changed the blobs");
    }
    // A store directory with nothing in it is simply empty.
    let empty = d.tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--list", "--json", "--stash-home"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "[]\n");
}

#[test]
fn repair_removes_only_unused_blobs_and_temp_files() {
    let d = Damage::new();
    let unused = d.put(b"no stash uses this", "");
    let unused = unused["digest"].as_str().unwrap().to_string();
    let corrupt = sha256(b"what this blob should hold");
    fs::write(d.blob(&corrupt), b"what this blob holds").unwrap();
    let temps = [d.home.join(".tmp-index"), d.home.join("blobs/sha256/.tmp-layer")];
    for t in &temps {
        fs::write(t, "half written").unwrap();
    }
    let needed = d.blobs().len() - 2 - 1;

    let out = d.fails(&["stash", "--check"], DAMAGED);
    let text = stdout(&out);
    let want = [
        format!("blob {unused} is not used by any stash"),
        format!("blob {corrupt} is corrupt (its content does not match its digest) and not used by any stash"),
        format!("leftover temp file {}", temps[0].display()),
        format!("leftover temp file {}", temps[1].display()),
    ];
    for line in &want {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(stderr(&out).contains("4 problems found"), "{}", stderr(&out));

    let out = d.ok(&["stash", "--check", "--repair"]);
    let text = stdout(&out);
    for removed in [
        format!("removed blob {unused}, which no stash used"),
        format!("removed blob {corrupt}, which no stash used"),
        format!("removed leftover temp file {}", temps[0].display()),
        format!("removed leftover temp file {}", temps[1].display()),
    ] {
        assert!(text.contains(&removed), "{removed:?} not in\n{text}");
    }
    assert!(!d.blob(&unused).exists() && !d.blob(&corrupt).exists());
    assert!(temps.iter().all(|t| !t.exists()));
    assert_eq!(d.blobs().len(), needed, "the repair removed a blob a stash needs");
    let out = d.ok(&["stash", "--check"]);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no problems (3 refs"), "{}", stderr(&out));
    assert_eq!(d.list().1, Some(0));

    let out = d.fails(&["stash", "--repair"], 2);
    assert!(stderr(&out).contains("--check"), "{}", stderr(&out));
}

#[test]
fn a_read_only_store_is_checked() {
    let d = Damage::new();
    let ro = d.read_only_view();
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--check", "--stash-home"])
        .arg(&ro)
        .output()
        .unwrap();
    d.unmount(&ro);
    assert!(
        out.status.success(),
        "checking a read-only store failed: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("no problems (3 refs"), "{}", stderr(&out));
}

#[test]
fn entries_of_unknown_shape_stop_gc_and_schema_1_layers_are_kept() {
    let d = Damage::new();
    let layer = d.put(b"a schema 1 layer", "application/octet-stream");
    let schema1 = json!({"schemaVersion": 1, "name": "x", "tag": "1",
        "fsLayers": [{"blobSum": layer["digest"]}]});
    let schema1 = d.put(
        &serde_json::to_vec(&schema1).unwrap(),
        "application/vnd.docker.distribution.manifest.v1+json",
    );
    d.tag("old:1", schema1);
    // a:1's config and layers are a:2's and b:1's too, but its manifest is
    // its own: --rm a:1 frees exactly that, and the schema 1 layer stays.
    let (a1, _, _) = d.parts("a:1");
    let (_, a1_config, _) = d.parts("a:1");
    d.rm_frees("a:1", &[&a1, &a1_config]);
    assert!(
        d.blob(layer["digest"].as_str().unwrap()).exists(),
        "the schema 1 layer went"
    );

    let part = d.put(b"part of a thing", "application/octet-stream");
    let thing = json!({"mediaType": "application/vnd.example.thing+json", "parts": [part]});
    let thing = d.put(
        &serde_json::to_vec(&thing).unwrap(),
        "application/vnd.example.thing+json",
    );
    d.tag("thing:1", thing);
    let broken = d.broken();
    let thing_says = broken.iter().find(|(r, _)| r == "thing:1").and_then(|(_, b)| b.clone());
    assert!(
        thing_says
            .as_deref()
            .is_some_and(|b| b.contains("which blobs it needs cannot be told")),
        "{broken:?}"
    );
    let before = (d.index(), d.blobs());
    let out = d.fails(&["stash", "--rm", "b:1"], 1);
    assert!(
        stderr(&out).contains("cannot tell which blobs thing:1 needs"),
        "{}",
        stderr(&out)
    );
    assert_eq!((d.index(), d.blobs()), before, "--rm changed the store");
    let out = d.fails(&["stash", "--check", "--repair"], DAMAGED);
    assert!(
        d.blob(part["digest"].as_str().unwrap()).exists(),
        "repair took a blob of thing:1"
    );
    assert!(!stdout(&out).contains("removed blob"), "{}", stdout(&out));
}

#[test]
fn blobs_that_are_no_regular_files_are_named_not_read() {
    let d = Damage::new();
    let (_, b1_config, _) = d.parts("b:1");
    let (_, _, a1_layers) = d.parts("a:1");
    // A config that is a FIFO: reading it would never end.
    fs::remove_file(d.blob(&b1_config)).unwrap();
    let made = Command::new("mkfifo").arg(d.blob(&b1_config)).status().unwrap();
    assert!(made.success());
    // A layer that is a link to a device that never ends.
    fs::remove_file(d.blob(&a1_layers[0])).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.blob(&a1_layers[0])).unwrap();
    let started = std::time::Instant::now();
    let broken = d.broken();
    let says = |key: &str| {
        broken
            .iter()
            .find(|(r, _)| r == key)
            .and_then(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    assert!(says("b:1").contains("not a regular file"), "{broken:?}");
    assert!(says("a:1").contains("not a regular file"), "{broken:?}");
    let out = d.fails(&["stash", "--check"], DAMAGED);
    assert!(
        stdout(&out).contains(&format!("blob {b1_config} cannot be read: it is not a regular file")),
        "{}",
        stdout(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "it hung on the FIFO"
    );
}

#[test]
fn check_spares_a_live_runs_temp_file_and_names_a_missing_blob_directory() {
    let d = Damage::new();
    let live = d.home.join("blobs/sha256/.tmp-layer-live");
    let held = fs::File::create(&live).unwrap();
    held.lock().unwrap();
    let out = d.ok(&["stash", "--check"]);
    assert!(!stdout(&out).contains("leftover"), "{}", stdout(&out));
    drop(held);
    let out = d.fails(&["stash", "--check"], DAMAGED);
    assert!(
        stdout(&out).contains(&format!("leftover temp file {}", live.display())),
        "{}",
        stdout(&out)
    );
    fs::remove_file(&live).unwrap();

    fs::remove_dir_all(d.home.join("blobs")).unwrap();
    let out = d.fails(&["stash", "--check"], DAMAGED);
    let text = stdout(&out);
    assert!(
        text.contains("the blob directory") && text.contains("is missing"),
        "{text}"
    );
    assert!(text.contains("a:1: manifest sha256:"), "{text}");
}

#[test]
fn repair_of_a_read_only_store_says_where_it_can_run() {
    let d = Damage::new();
    d.put(b"unused", "application/octet-stream");
    let ro = d.read_only_view();
    let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--check", "--repair", "--stash-home"])
        .arg(&ro)
        .output()
        .unwrap();
    d.unmount(&ro);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run stash --check --repair where the store is writable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_index_entry_that_cannot_be_read_is_listed_kept_and_removable() {
    let d = Damage::new();
    let mut bad = d.entry("a:1");
    bad.as_object_mut().unwrap().remove("size");
    d.tag("nosize:1", bad.clone());
    let mut unnamed = d.entry("b:1");
    unnamed.as_object_mut().unwrap().remove("annotations");
    let mut index = d.index();
    index["manifests"].as_array_mut().unwrap().push(unnamed.clone());
    fs::write(d.home.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let (entries, code) = d.list();
    assert_eq!(code, Some(DAMAGED));
    let names: Vec<&str> = entries.iter().map(|e| e["reference"].as_str().unwrap()).collect();
    let unnamed_digest = unnamed["digest"].as_str().unwrap();
    assert_eq!(names, ["a:1", "a:2", "b:1", unnamed_digest, "nosize:1"]);
    assert!(
        entries[4]["broken"]
            .as_str()
            .is_some_and(|b| b.contains("index entry cannot be read: missing field `size`")),
        "{entries:#?}"
    );
    // A change of the index keeps the entry it cannot read, and gc stops.
    d.stash("c", "1");
    let before = d.blobs();
    let out = d.fails(&["stash", "--rm", "a:2"], 1);
    assert!(
        stderr(&out).contains("cannot tell which blobs nosize:1 needs"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.blobs(), before);
    let out = d.fails(&["stash", "--check"], DAMAGED);
    assert!(
        stdout(&out).contains("nosize:1: its index entry cannot be read"),
        "{}",
        stdout(&out)
    );
    // Removed by name, it goes, and gc runs again.
    d.ok(&["stash", "--rm", "nosize:1"]);
    assert!(d.index()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.get("size").is_some()));
    d.ok(&["stash", "--rm", "a:2"]);
    let (entries, code) = d.list();
    assert_eq!(code, Some(0), "{entries:#?}");
}
