//! A store of hand-written blobs, damaged on purpose: listing, garbage
//! collection, removal and `--check` against every kind of damage.

use std::collections::BTreeSet;
use std::fs;

use serde_json::{json, Value};

use super::walk::{DOCKER_LIST, DOCKER_MANIFEST};
use super::*;

// Spelled out: the blobs here are hand-written JSON.
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A store in a temp dir, with helpers to put blobs and refs into it.
struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("store"));
        drop(store.lock_exclusive().unwrap());
        Fixture { _tmp: tmp, store }
    }

    fn blob(&self, bytes: &[u8], media_type: &str) -> Value {
        let digest = Digest::of(bytes);
        fs::write(oci::blob_path(self.store.root(), &digest), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
    }

    /// An image of `layers` (their contents) with a config naming them.
    fn image(&self, media_type: &str, layers: &[&str]) -> Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l.as_bytes()).to_string()).collect();
        let config = json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config = self.blob(config.to_string().as_bytes(), MEDIA_CONFIG);
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| self.blob(l.as_bytes(), MEDIA_LAYER_GZIP))
            .collect();
        let manifest = json!({"schemaVersion": 2, "mediaType": media_type, "config": config, "layers": layers});
        self.blob(manifest.to_string().as_bytes(), media_type)
    }

    fn index_of(&self, media_type: &str, manifests: &[&Value]) -> Value {
        let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        self.blob(index.to_string().as_bytes(), media_type)
    }

    fn tag(&self, key: &str, d: &Value) {
        let lock = self.store.lock_exclusive().unwrap();
        let mut index = self.store.index().unwrap();
        Store::set_ref(&mut index, key, serde_json::from_value(d.clone()).unwrap());
        self.store.write_index(&index, &lock).unwrap();
    }

    fn path(&self, d: &Value) -> PathBuf {
        self.store.blob_dir().join(hex(d))
    }

    fn blobs(&self) -> BTreeSet<String> {
        fs::read_dir(self.store.blob_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn entry(&self, key: &str) -> Entry {
        let list = self.store.list().unwrap();
        list.into_iter().find(|e| e.reference == key).unwrap()
    }
}

fn hex(d: &Value) -> String {
    d["digest"].as_str().unwrap()["sha256:".len()..].to_string()
}

/// The blobs of a manifest descriptor: itself, its config and layers.
fn blobs_of(f: &Fixture, d: &Value) -> Vec<String> {
    let m: Value = serde_json::from_slice(&fs::read(f.path(d)).unwrap()).unwrap();
    let mut out = vec![hex(d), hex(&m["config"])];
    out.extend(m["layers"].as_array().unwrap().iter().map(hex));
    out
}

#[test]
fn every_kind_of_entry_is_listed_and_keeps_its_blobs() {
    let f = Fixture::new();
    let oci = f.image(MEDIA_MANIFEST, &["shared", "oci only"]);
    let docker = f.image(DOCKER_MANIFEST, &["shared", "docker only"]);
    let nested = f.image(MEDIA_MANIFEST, &["nested only"]);
    let list = f.index_of(DOCKER_LIST, &[&docker]);
    let index = f.index_of(MEDIA_INDEX, &[&nested]);
    for (key, d) in [
        ("oci:1", &oci),
        ("docker:1", &docker),
        ("list:1", &list),
        ("index:1", &index),
    ] {
        f.tag(key, d);
    }
    let kinds: Vec<(String, String, Option<String>)> = f
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.reference, e.kind.to_string(), e.broken))
        .collect();
    assert_eq!(
        kinds,
        [
            ("oci:1".into(), "oci image".into(), None),
            ("docker:1".into(), "docker image".into(), None),
            ("list:1".into(), "docker manifest list".into(), None),
            ("index:1".into(), "oci index".into(), None),
        ]
    );
    assert_eq!(f.entry("docker:1").layers, 2);

    let before = f.blobs();
    let oci_blobs = blobs_of(&f, &oci);
    let freed = f.store.remove(&["oci:1".into()]).unwrap();
    let mut gone: Vec<String> = before.difference(&f.blobs()).cloned().collect();
    gone.sort();
    let mut want = vec![oci_blobs[0].clone(), oci_blobs[1].clone(), oci_blobs[3].clone()];
    want.sort();
    assert_eq!(gone, want, "only oci:1's unshared blobs go");
    assert_eq!(freed, 3);
    for d in [&docker, &nested, &list, &index] {
        assert!(f.path(d).exists());
    }
    f.store.remove(&["docker:1".into()]).unwrap();
    assert!(f.path(&docker).exists(), "the manifest list still needs it");
}

#[test]
fn an_artifact_keeps_its_blobs_and_its_subject() {
    const ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
    let f = Fixture::new();
    let image = f.image(MEDIA_MANIFEST, &["signed"]);
    let signature = f.blob(b"a signature", "application/vnd.example.signature");
    let elsewhere = json!({"mediaType": MEDIA_MANIFEST, "digest": Digest::of(b"not here").to_string(), "size": 8});
    for (key, subject) in [("sig:1", &image), ("sig:2", &elsewhere)] {
        let artifact = json!({"mediaType": ARTIFACT, "artifactType": "application/vnd.example.signature",
            "blobs": [signature], "subject": subject});
        f.tag(key, &f.blob(artifact.to_string().as_bytes(), ARTIFACT));
    }
    let image_blobs = blobs_of(&f, &image);
    f.tag("other:1", &f.image(MEDIA_MANIFEST, &["other"]));
    f.store.remove(&["other:1".into()]).unwrap();
    for blob in image_blobs.iter().chain([&hex(&signature)]) {
        assert!(f.store.blob_dir().join(blob).exists(), "{blob} went");
    }
    assert_eq!(f.entry("sig:2").broken, None, "a subject the store lacks is no damage");
    assert_eq!(f.entry("sig:2").kind, Kind::Other(ARTIFACT.into()));
}

#[test]
fn a_missing_or_short_blob_marks_its_stash_broken_and_names_it() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    let b = f.image(MEDIA_MANIFEST, &["b", "b2"]);
    let c = f.image(MEDIA_MANIFEST, &["c"]);
    f.tag("a:1", &a);
    f.tag("b:1", &b);
    f.tag("c:1", &c);
    let blobs = blobs_of(&f, &b);
    fs::remove_file(f.store.blob_dir().join(&blobs[2])).unwrap();
    fs::write(f.store.blob_dir().join(&blobs[3]), "b").unwrap();
    fs::remove_file(f.path(&c)).unwrap();
    assert_eq!(f.entry("a:1").broken, None);
    let broken = f.entry("b:1").broken.unwrap();
    assert!(
        broken.contains(&format!("layer sha256:{} missing", blobs[2])),
        "{broken}"
    );
    assert!(
        broken.contains(&format!("layer sha256:{} is 1 bytes, 2 recorded", blobs[3])),
        "{broken}"
    );
    let broken = f.entry("c:1").broken.unwrap();
    assert_eq!(broken, format!("manifest sha256:{} missing", hex(&c)));
}

#[test]
fn a_corrupt_config_is_named() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    f.tag("a:1", &a);
    let config = blobs_of(&f, &a)[1].clone();
    let path = f.store.blob_dir().join(&config);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, bytes).unwrap();
    let broken = f.entry("a:1").broken.unwrap();
    assert_eq!(
        broken,
        format!("config sha256:{config} corrupt: its content does not match its digest")
    );
}

#[test]
fn an_unparseable_manifest_stops_removal_and_repair_from_deleting_blobs() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    let b = f.image(MEDIA_MANIFEST, &["b"]);
    f.tag("a:1", &a);
    f.tag("b:1", &b);
    let junk = f.blob(b"not json", "");
    fs::write(f.path(&b), b"{ no longer json").unwrap();
    let index = fs::read(f.store.root().join("index.json")).unwrap();
    let before = f.blobs();
    let err = f.store.remove(&["a:1".into()]).unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("removing a:1: nothing was changed"), "{text}");
    assert!(text.contains("cannot tell which blobs b:1 needs"), "{text}");
    assert_eq!(fs::read(f.store.root().join("index.json")).unwrap(), index);
    assert_eq!(f.blobs(), before);

    let lock = f.store.lock_exclusive_as_is().unwrap();
    let checked = f.store.check(&lock).unwrap();
    assert_eq!(checked.blocked_by.as_deref(), Some("b:1"));
    let (removed, _) = f.store.repair(&checked, &lock).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(f.path(&junk).exists());
    drop(lock);

    // Removing the ref that blocks is what unblocks.
    f.store.remove(&["b:1".into()]).unwrap();
    assert!(!f.path(&junk).exists());
    assert!(f.path(&a).exists());
}

#[test]
fn a_missing_manifest_keeps_nothing_and_blocks_nothing() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    let b = f.image(MEDIA_MANIFEST, &["b"]);
    f.tag("a:1", &a);
    f.tag("b:1", &b);
    fs::remove_file(f.path(&b)).unwrap();
    f.store.remove(&["a:1".into()]).unwrap();
    assert!(f.blobs().is_empty(), "{:?}", f.blobs());
}

#[test]
fn removing_several_refs_is_all_or_nothing() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    f.tag("a:1", &a);
    f.tag("a:2", &a);
    let index = fs::read(f.store.root().join("index.json")).unwrap();
    assert!(f.store.remove(&["a:1".into(), "a:3".into()]).is_err());
    assert_eq!(fs::read(f.store.root().join("index.json")).unwrap(), index);
    assert_eq!(f.store.remove(&["a:1".into(), "a:2".into()]).unwrap(), 3);
    assert!(f.store.list().unwrap().is_empty());
}

#[test]
fn a_missing_index_with_blobs_is_an_error_not_an_empty_store() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    f.tag("a:1", &a);
    fs::remove_file(f.store.root().join("index.json")).unwrap();
    let root = f.store.root().display().to_string();
    for err in [
        f.store.index().unwrap_err(),
        f.store.lock_shared().unwrap_err(),
        f.store.lock_exclusive().unwrap_err(),
        f.store.remove(&["a:1".into()]).unwrap_err(),
    ] {
        // (The suggestion is the binary's to show: tests install no handler.)
        let text = format!("{err:?}");
        assert!(
            text.contains(&format!("{root} has 3 blobs but no index.json")),
            "{text}"
        );
    }
    assert!(!f.store.exists(), "an index was written");
    assert_eq!(f.blobs().len(), 3);

    let empty = Store::new(f.store.root().join("empty"));
    assert!(empty.index().unwrap().manifests().is_empty());
    assert!(empty.lock_shared().unwrap().is_none());
}

#[test]
fn check_names_each_problem_and_repair_removes_only_what_no_ref_needs() {
    let f = Fixture::new();
    let a = f.image(MEDIA_MANIFEST, &["a"]);
    let b = f.image(MEDIA_MANIFEST, &["bb"]);
    f.tag("a:1", &a);
    f.tag("b:1", &b);
    let layer = blobs_of(&f, &b)[2].clone();
    fs::write(f.store.blob_dir().join(&layer), "bx").unwrap();
    let unused = f.blob(b"unused", "");
    let corrupt_unused = hex(&f.blob(b"corrupt and unused", ""));
    fs::write(f.store.blob_dir().join(&corrupt_unused), "flipped and unused").unwrap();
    let temp = f.store.blob_dir().join(".tmp-left");
    fs::write(&temp, "x").unwrap();

    let lock = f.store.lock_shared().unwrap().unwrap();
    let checked = f.store.check(&lock).unwrap();
    drop(lock);
    let texts: Vec<&str> = checked.findings.iter().map(|f| f.text.as_str()).collect();
    let has = |needle: &str| {
        assert!(texts.iter().any(|t| t.contains(needle)), "{needle:?} not in {texts:#?}");
    };
    has(&format!(
        "blob sha256:{layer} is corrupt (its content does not match its digest); needed by b:1"
    ));
    has(&format!(
        "blob {} is not used by any stash",
        unused["digest"].as_str().unwrap()
    ));
    has(&format!("blob sha256:{corrupt_unused} is corrupt"));
    has(&format!("leftover temp file {}", temp.display()));
    assert_eq!(checked.findings.len(), 4, "{texts:#?}");

    let lock = f.store.lock_exclusive_as_is().unwrap();
    let (removed, remaining) = f.store.repair(&checked, &lock).unwrap();
    drop(lock);
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(remaining.len(), 1);
    assert!(f.store.blob_dir().join(&layer).exists(), "a blob b:1 needs was removed");
    assert!(!f.path(&unused).exists() && !temp.exists());
    assert!(!f.store.blob_dir().join(&corrupt_unused).exists());
}
