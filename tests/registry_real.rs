//! Real registries (Debian's docker-registry on 127.0.0.1), real skopeo,
//! podman's containers-storage and oci-archive files: push and pull stashes,
//! fetch only what is missing, read the registry's access log to prove it,
//! fail clearly without touching the store, and keep passwords out of
//! `ps` and logs.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::images::{archive_list, private_podman_storage, restore, tail};
use common::registry::{blob_gets, blob_upload_requests, request, uploaded_blobs, Login, Registry};
use common::tree::{assert_same_tree, make_special_tree, snapshot};
use kiwi_stackbuild::oci::DescriptorExt;
use kiwi_stackbuild::registry::{auth_json, Credentials};
use kiwi_stackbuild::store::Store;

/// What a plain-HTTP test registry needs.
const PLAIN: &str = "--tls-verify=false";

/// A temp dir with stores (`store-NAME`) and trees in it.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn store(&self, name: &str) -> PathBuf {
        self.path(&format!("store-{name}"))
    }

    /// `make_special_tree` in `root`, stashed in `home` as `name:tag`.
    fn special_stash(&self, home: &Path, name: &str, tag: &str) -> PathBuf {
        let root = self.path(&format!("tree-{name}"));
        make_special_tree(&root);
        ok(
            home,
            &[
                "stash",
                "--root",
                root.to_str().unwrap(),
                "--container-name",
                name,
                "--tag",
                tag,
            ],
        );
        root
    }
}

/// kiwi-stackbuild with `home` as its store and no password in its environment.
fn cmd<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"));
    cmd.args(args)
        .env("KIWI_STACKBUILD_HOME", home)
        .env_remove("KIWI_STACKBUILD_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null());
    cmd
}

fn run<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Output {
    cmd(home, args).output().expect("running kiwi-stackbuild")
}

fn ok<S: AsRef<OsStr> + std::fmt::Debug>(home: &Path, args: &[S]) -> Output {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn list(home: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&ok(home, &["stash", "--list", "--json"]).stdout).unwrap()
}

fn digest_of(home: &Path, key: &str) -> String {
    let entries = list(home);
    let e = entries
        .iter()
        .find(|e| e["reference"] == key)
        .unwrap_or_else(|| panic!("{key} not in {entries:?}"));
    e["digest"].as_str().unwrap().to_string()
}

/// The config and layer digests of a stash, read from its store.
fn blobs_of(home: &Path, key: &str) -> (String, Vec<String>) {
    let store = Store::new(home);
    let index = store.index().unwrap();
    let m = store
        .manifest(&store.find(&index, key).unwrap().sha256().unwrap())
        .unwrap();
    (
        m.config().digest().to_string(),
        m.layers().iter().map(|l| l.digest().to_string()).collect(),
    )
}

fn assert_restores_to(home: &Path, key: &str, root: &Path, scratch: &Path) {
    restore(home, key, scratch);
    assert_same_tree(&snapshot(root), &snapshot(scratch));
}

fn sorted<I: IntoIterator<Item = String>>(items: I) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// The number of new blobs a pull reported (`... (N new blobs, SIZE)`).
fn new_blobs(out: &Output) -> usize {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("pulled "))
        .unwrap_or_else(|| panic!("no 'pulled' line in:\n{stderr}"));
    let count = line.split(" new blobs").next().unwrap().rsplit('(').next().unwrap();
    count.parse().unwrap_or_else(|_| panic!("no blob count in {line:?}"))
}

#[test]
fn a_pushed_stash_pulls_into_an_empty_store_entry_by_entry_and_a_second_pull_fetches_nothing() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.special_stash(&a, "x", "latest");
    let reg = Registry::plain();
    let remote = reg.docker("ns/x:1");
    ok(&a, &[PLAIN, "push", "x", &remote]);

    let before = reg.access_log();
    let out = ok(&b, &[PLAIN, "pull", &remote]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "x:1",
        "a pull without a name is named after the reference"
    );
    assert_eq!(
        digest_of(&b, "x:1"),
        digest_of(&a, "x:latest"),
        "the manifest changed on its way through the registry"
    );
    let (config, layers) = blobs_of(&a, "x:latest");
    // An empty store: the config and every layer come from the registry,
    // and the count includes the manifest, which is a blob of the layout too.
    let fetched = blob_gets(&reg.access_log()[before.len()..], "ns/x");
    assert_eq!(
        sorted(fetched.clone()),
        sorted(layers.iter().cloned().chain([config])),
        "{fetched:?}"
    );
    assert_eq!(fetched.len(), layers.len() + 1, "a blob was fetched twice: {fetched:?}");
    assert_eq!(new_blobs(&out), layers.len() + 2);
    assert_restores_to(&b, "x:1", &root, &env.path("out"));

    let before = reg.access_log();
    let out = ok(&b, &[PLAIN, "pull", &remote, "x:again"]);
    let after = reg.access_log();
    assert_eq!(
        blob_gets(&after[before.len()..], "ns/x"),
        Vec::<String>::new(),
        "the second pull fetched blobs"
    );
    assert_eq!(new_blobs(&out), 0);
    assert_eq!(digest_of(&b, "x:again"), digest_of(&b, "x:1"));
}

#[test]
fn a_derived_push_uploads_only_its_new_layer_and_config_and_a_pull_fetches_only_those() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.special_stash(&a, "derived", "1");
    let reg = Registry::plain();
    ok(&a, &[PLAIN, "push", "derived:1", &reg.docker("ns/derived:1")]);

    fs::write(root.join("etc/hostname"), "changed for tag 2\n").unwrap();
    ok(
        &a,
        &[
            "stash",
            "--root",
            root.to_str().unwrap(),
            "--container-name",
            "derived",
            "--tag",
            "2",
        ],
    );
    let (config1, layers1) = blobs_of(&a, "derived:1");
    let (config2, layers2) = blobs_of(&a, "derived:2");
    assert_eq!(layers2.len(), 2, "the re-stash should add one delta layer");
    assert_eq!(layers2[0], layers1[0]);
    assert_ne!(config2, config1);

    let before = reg.access_log();
    ok(&a, &[PLAIN, "push", "derived:2", &reg.docker("ns/derived:2")]);
    let pushed = &reg.access_log()[before.len()..];
    // What is new to the registry is the delta layer and the config (its
    // diff_ids and labels differ): exactly those two blobs are uploaded, each
    // as one upload session (POST, then a PUT with the digest that ends it);
    // the first layer is only checked (HEAD) and never sent again.
    let uploads = blob_upload_requests(pushed, "ns/derived");
    let starts = uploads.iter().filter(|(m, _)| m == "POST").count();
    assert_eq!(starts, 2, "upload sessions: {uploads:?}");
    assert_eq!(
        sorted(uploaded_blobs(pushed, "ns/derived")),
        sorted([layers2[1].clone(), config2.clone()]),
        "{uploads:?}"
    );
    let manifests: Vec<_> = pushed
        .iter()
        .filter_map(|l| request(l))
        .filter(|(m, p, _)| *m == "PUT" && p.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");

    ok(&b, &[PLAIN, "pull", &reg.docker("ns/derived:1")]);
    let before = reg.access_log();
    let out = ok(&b, &[PLAIN, "pull", &reg.docker("ns/derived:2")]);
    let fetched = blob_gets(&reg.access_log()[before.len()..], "ns/derived");
    assert_eq!(
        sorted(fetched.clone()),
        sorted([layers2[1].clone(), config2]),
        "{fetched:?}"
    );
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    // Manifest, config and delta layer are new to the store.
    assert_eq!(new_blobs(&out), 3);
    assert_restores_to(&b, "derived:2", &root, &env.path("out"));
}

#[test]
fn a_zstd_push_stores_zstd_layers_in_the_registry() {
    let env = Env::new();
    let a = env.store("a");
    env.special_stash(&a, "z", "1");
    let digest = digest_of(&a, "z:1");
    let reg = Registry::plain();
    let remote = reg.docker("ns/z:1");
    ok(&a, &[PLAIN, "--compress-format", "zstd", "push", "z:1", &remote]);
    let types = layer_media_types(&remote);
    assert!(!types.is_empty());
    assert!(
        types.iter().all(|t| t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    assert_eq!(digest_of(&a, "z:1"), digest, "the push changed the stash");
}

/// skopeo 1.9 reuses a blob the registry has (here the gzip layer of the
/// same stash, pushed before) instead of recompressing it: the zstd push
/// must still give zstd layers, or say that it cannot.
#[test]
fn a_zstd_push_recompresses_layers_the_registry_has_as_gzip() {
    let env = Env::new();
    let a = env.store("a");
    env.special_stash(&a, "z", "1");
    let reg = Registry::plain();
    ok(&a, &[PLAIN, "push", "z:1", &reg.docker("ns/z:gzip")]);
    let remote = reg.docker("ns/z:zstd");
    ok(&a, &[PLAIN, "--compress-format", "zstd", "push", "z:1", &remote]);
    let types = layer_media_types(&remote);
    assert!(
        types.iter().all(|t| t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "--compress-format zstd pushed {types:?}"
    );
}

/// A stash pushed with zstd layers is usable again: pulled into an empty
/// store, it restores entry by entry (what stackbuild --from-registry does).
#[test]
fn a_zstd_pushed_stash_pulls_back_and_restores() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.special_stash(&a, "z", "1");
    let reg = Registry::plain();
    let remote = reg.docker("ns/z:1");
    ok(&a, &[PLAIN, "--compress-format", "zstd", "push", "z:1", &remote]);
    ok(&b, &[PLAIN, "pull", &remote]);
    assert_restores_to(&b, "z:1", &root, &env.path("out"));
}

/// The media types of a registry image's layers, as skopeo reads them.
fn layer_media_types(remote: &str) -> Vec<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", remote])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn containers_storage_both_ways() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.special_stash(&a, "x", "latest");
    let storage = env.path("containers");
    let conf = private_podman_storage(&storage);

    let out = cmd(&a, &["push", "x:latest", "containers-storage:localhost/x:1"])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let podman = Command::new("podman")
        .args(["images", "--format", "json"])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .unwrap();
    assert!(podman.status.success(), "{}", String::from_utf8_lossy(&podman.stderr));
    let images: Vec<serde_json::Value> = serde_json::from_slice(&podman.stdout).unwrap();
    let names: Vec<&str> = images
        .iter()
        .flat_map(|i| i["Names"].as_array().into_iter().flatten())
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(
        names,
        ["localhost/x:1"],
        "podman with the private storage sees {names:?}"
    );
    // The image is in the private storage, not the machine's.
    let images_json = fs::read_to_string(storage.join("graph/vfs-images/images.json"))
        .expect("the private graphroot holds the image");
    assert!(images_json.contains("localhost/x:1"), "{images_json}");

    let out = cmd(&b, &["pull", "containers-storage:localhost/x:1", "y:1"])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "y:1");
    assert_restores_to(&b, "y:1", &root, &env.path("out"));
}

#[test]
fn oci_archive_both_ways() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.special_stash(&a, "x", "latest");
    let archive = env.path("x.tar");
    let reference = format!("oci-archive:{}:x:1", archive.display());
    ok(&a, &["push", "x:latest", &reference]);
    assert!(archive.is_file());
    let out = ok(&b, &["pull", &reference]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "x:1",
        "a pull without a name is named after the archive's ref"
    );
    assert_eq!(digest_of(&b, "x:1"), digest_of(&a, "x:latest"));
    assert_restores_to(&b, "x:1", &root, &env.path("out"));
}

// --- Errors -----------------------------------------------------------------

/// The error chain color-eyre prints (`Error:` then `   N: message` lines)
/// and the `Suggestion:` line.
fn error_report(stderr: &str) -> (Vec<String>, Option<String>) {
    let mut lines = stderr.lines().skip_while(|l| !l.starts_with("Error:")).skip(1);
    let mut chain = Vec::new();
    for line in lines.by_ref() {
        let t = line.trim_start();
        let Some((n, msg)) = t.split_once(": ") else { break };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        chain.push(msg.to_string());
    }
    let suggestion = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Suggestion: "))
        .map(str::to_string);
    (chain, suggestion)
}

/// Entries of the store directory, to prove a failed command left nothing.
fn store_entries(home: &Path) -> BTreeSet<String> {
    fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `args`, which must fail: non-zero exit, the error chain ends with
/// `message` and names `names`, a suggestion containing `suggestion`, and
/// the store exactly as it was.
fn assert_clean_failure(home: &Path, args: &[&str], names: &str, message: &str, suggestion: &str) -> String {
    let (refs, entries) = (list(home), store_entries(home));
    let out = run(home, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded:\n{stderr}");
    let (chain, hint) = error_report(&stderr);
    assert!(
        chain.first().is_some_and(|c| c.contains(names)),
        "the error does not name {names}: {chain:?}\n{stderr}"
    );
    assert_eq!(chain.last().map(String::as_str), Some(message), "{args:?}:\n{stderr}");
    let hint = hint.unwrap_or_else(|| panic!("no suggestion:\n{stderr}"));
    assert!(hint.contains(suggestion), "suggestion {hint:?} lacks {suggestion:?}");
    assert_eq!(list(home), refs, "{args:?} changed the store's refs");
    assert_eq!(store_entries(home), entries, "{args:?} left files in the store");
    stderr
}

/// A store holding one stash, so that "unchanged" means something.
fn store_with_one_stash(env: &Env) -> PathBuf {
    let home = env.store("b");
    env.special_stash(&home, "kept", "1");
    home
}

fn login() -> Login {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Login {
        user: "builder".into(),
        password: format!("pw-{}-{nanos}", std::process::id()),
    }
}

/// The registry serves the manifest but lost the config blob: the pull
/// fails in skopeo's copy after a layer was staged, and the store must not
/// change; the message must not claim the tag is missing.
#[test]
fn a_pull_that_fails_midway_leaves_the_store_as_it_was() {
    let env = Env::new();
    let home = store_with_one_stash(&env);
    let a = env.store("a");
    let root = env.path("tree-x");
    make_special_tree(&root);
    // A layer the store lacks (the special tree alone would give kept:1's).
    fs::write(root.join("etc/only-in-x"), "x\n").unwrap();
    ok(
        &a,
        &[
            "stash",
            "--root",
            root.to_str().unwrap(),
            "--container-name",
            "x",
            "--tag",
            "1",
        ],
    );
    let reg = Registry::plain();
    let remote = reg.docker("ns/x:1");
    ok(&a, &[PLAIN, "push", "x:1", &remote]);
    // skopeo copies the layers first and the config last: losing the config
    // makes the copy fail after the layer was staged.
    let (config, _) = blobs_of(&a, "x:1");
    reg.lose_blob(&config);
    let blobs = store_entries(&home.join("blobs/sha256"));
    let (refs, entries) = (list(&home), store_entries(&home));
    let out = run(&home, &[PLAIN, "pull", &remote, "x:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull succeeded without the layer:\n{stderr}");
    assert_eq!(list(&home), refs, "the failed pull changed the refs");
    assert_eq!(store_entries(&home), entries, "the failed pull left files in the store");
    assert_eq!(
        store_entries(&home.join("blobs/sha256")),
        blobs,
        "the failed pull left blobs in the store"
    );
    assert!(
        reg.access_log()
            .iter()
            .any(|l| l.contains("GET /v2/ns/x/blobs/") && l.contains("\" 200 ")),
        "no layer was fetched before the failure"
    );
    // The tag exists (its manifest was read): the error must not say otherwise.
    let (chain, _) = error_report(&stderr);
    let last = chain.last().cloned().unwrap_or_default();
    assert_ne!(
        last, "the image or tag does not exist",
        "a missing blob is reported as a missing tag:\n{stderr}"
    );
    assert!(
        chain.iter().any(|c| c.contains("blob")),
        "the error does not say a blob is missing:\n{stderr}"
    );
}

#[test]
fn a_wrong_password_is_one_clear_error() {
    let env = Env::new();
    let home = store_with_one_stash(&env);
    let reg = Registry::tls_auth(login());
    let certs = reg.cert_dir();
    let certs = certs.to_str().unwrap();
    let remote = reg.docker("ns/x:1");
    let refused = "the registry refused the credentials (401 unauthorized)";
    let wrong = "builder:not-the-password";
    let stderr = assert_clean_failure(
        &home,
        &["--cert-dir", certs, "--creds", wrong, "pull", &remote, "x:1"],
        &remote,
        refused,
        "--creds",
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    let stderr = assert_clean_failure(
        &home,
        &["--cert-dir", certs, "--creds", wrong, "push", "kept:1", &remote],
        "kept:1",
        refused,
        "--creds",
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[test]
fn an_unknown_tag_is_one_clear_error() {
    let env = Env::new();
    let home = store_with_one_stash(&env);
    let reg = Registry::plain();
    ok(&home, &[PLAIN, "push", "kept:1", &reg.docker("ns/kept:1")]);
    let remote = reg.docker("ns/kept:nope");
    assert_clean_failure(
        &home,
        &[PLAIN, "pull", &remote, "kept:nope"],
        &remote,
        "the image or tag does not exist",
        "list-tags",
    );
}

#[test]
fn a_stopped_registry_is_one_clear_error() {
    let env = Env::new();
    let home = store_with_one_stash(&env);
    let mut reg = Registry::plain();
    reg.stop();
    let remote = reg.docker("ns/kept:1");
    let gone = "the registry cannot be reached";
    assert_clean_failure(&home, &[PLAIN, "pull", &remote, "kept:2"], &remote, gone, "running");
    assert_clean_failure(&home, &[PLAIN, "push", "kept:1", &remote], "kept:1", gone, "running");
    // skopeo's output names the port: one with "401" in it is still no
    // refused login.
    let port = (40100..40200)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port 40100-40199");
    let remote = format!("docker://127.0.0.1:{port}/ns/kept:1");
    assert_clean_failure(&home, &[PLAIN, "pull", &remote, "kept:2"], &remote, gone, "running");
}

#[test]
fn an_untrusted_certificate_is_one_clear_error() {
    let env = Env::new();
    let home = store_with_one_stash(&env);
    let reg = Registry::tls_auth(login());
    let creds = format!("builder:{}", reg.login().unwrap().password);
    let remote = reg.docker("ns/kept:1");
    let untrusted = "the registry's TLS certificate is not trusted";
    assert_clean_failure(
        &home,
        &["--creds", &creds, "pull", &remote, "kept:2"],
        &remote,
        untrusted,
        "--cert-dir",
    );
}

// --- Credentials ------------------------------------------------------------

/// What `/proc/*/cmdline` showed while a command ran.
#[derive(Default, Debug)]
struct Sightings {
    /// Scans of the whole process table.
    scans: usize,
    /// Scans that saw a skopeo child talking to the registry.
    skopeo_seen: usize,
    /// Sightings of the secret in a skopeo child's environment (`ps e`).
    environ_leaks: usize,
    /// Every process whose argv held the secret.
    leaks: Vec<Leak>,
}

/// One process seen with the secret in its argv.
#[derive(Debug)]
struct Leak {
    cmdline: String,
}

/// Runs `command` to its end, reading every process's argv over and over.
fn watch_argv(mut command: Command, secrets: &[String], host: &str) -> (Output, Sightings) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut seen = Sightings::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the command did not finish in time");
        seen.scans += 1;
        let mut skopeo_now = false;
        let mut leaks = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            let argv0 = text.split(' ').next().unwrap_or_default();
            if argv0.ends_with("skopeo") && text.contains(host) {
                skopeo_now = true;
                let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
                if secrets
                    .iter()
                    .any(|s| environ.windows(s.len()).any(|w| w == s.as_bytes()))
                {
                    seen.environ_leaks += 1;
                }
            }
            if secrets.iter().any(|s| text.contains(s.as_str())) {
                leaks.push(text);
            }
        }
        if skopeo_now {
            seen.skopeo_seen += 1;
        }
        seen.leaks.extend(leaks.into_iter().map(|cmdline| Leak { cmdline }));
    };
    let stderr = fs::read(log.path()).unwrap();
    (
        Output {
            status,
            stdout: Vec::new(),
            stderr,
        },
        seen,
    )
}

/// The forms a password could leak in: itself and the base64 auth token.
fn secret_forms(login: &Login) -> Vec<String> {
    let creds = Credentials::parse(&format!("{}:{}", login.user, login.password), None).unwrap();
    let json: serde_json::Value = serde_json::from_str(&auth_json(&creds, &["h".to_string()])).unwrap();
    vec![
        login.password.clone(),
        json["auths"]["h"]["auth"].as_str().unwrap().to_string(),
    ]
}

/// The `--dest-authfile` a `--debug` log shows skopeo was given.
fn authfile_in(log: &str) -> Option<PathBuf> {
    let line = log
        .lines()
        .find(|l| l.contains("running") && l.contains("--dest-authfile"))?;
    let mut words = line.split_whitespace().skip_while(|w| *w != "--dest-authfile");
    words.next();
    words.next().map(PathBuf::from)
}

fn assert_push_hides_password(command: Command, login: &Login, reg: &Registry, what: &str) {
    let secrets = secret_forms(login);
    let (out, seen) = watch_argv(command, &secrets, &reg.host());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: the authenticated push failed:\n{log}");
    assert!(
        seen.skopeo_seen > 0,
        "{what}: no scan of {} saw skopeo running; the proof is empty",
        seen.scans
    );
    // Neither our argv nor a child's may ever show it.
    let bad: Vec<&str> = seen.leaks.iter().map(|l| l.cmdline.as_str()).collect();
    assert!(bad.is_empty(), "{what}: the password was visible in ps: {bad:?}");
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "{what}: the --debug log shows the password or its token:\n{log}"
        );
    }
    let authfile =
        authfile_in(&log).unwrap_or_else(|| panic!("{what}: --debug did not log skopeo's command line:\n{log}"));
    assert!(
        !authfile.exists(),
        "{what}: the credentials file {} outlived the run",
        authfile.display()
    );
}

#[test]
fn creds_stay_out_of_ps_and_debug_logs_and_authenticated_transfers_work() {
    let env = Env::new();
    let (a, b) = (env.store("a"), env.store("b"));
    let root = env.path("tree-x");
    make_special_tree(&root);
    // Something to upload for a while, so that skopeo is seen running.
    let mut noise = Vec::with_capacity(32 << 20);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while noise.len() < 32 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(root.join("var/noise.bin"), &noise).unwrap();
    ok(
        &a,
        &["stash", "--root", root.to_str().unwrap(), "--container-name", "x"],
    );

    let login = login();
    let reg = Registry::tls_auth(login.clone());
    let certs = reg.cert_dir();
    let user_pass = format!("{}:{}", login.user, login.password);

    let password_file = env.path("password");
    fs::write(&password_file, format!("{}\n", login.password)).unwrap();
    let mut push = cmd(
        &a,
        &[
            OsStr::new("--debug"),
            OsStr::new("--cert-dir"),
            certs.as_os_str(),
            OsStr::new("--creds"),
            OsStr::new(&login.user),
            OsStr::new("--password-stdin"),
        ],
    );
    push.args(["push", "x", &reg.docker("ns/x:1")])
        .stdin(fs::File::open(&password_file).unwrap());
    assert_push_hides_password(push, &login, &reg, "--creds USER --password-stdin");

    let mut push = cmd(
        &a,
        &[
            OsStr::new("--debug"),
            OsStr::new("--cert-dir"),
            certs.as_os_str(),
            OsStr::new("--creds"),
            OsStr::new(&login.user),
        ],
    );
    push.args(["push", "x", &reg.docker("ns/x:2")])
        .env("KIWI_STACKBUILD_PASSWORD", &login.password);
    assert_push_hides_password(push, &login, &reg, "--creds USER and KIWI_STACKBUILD_PASSWORD");

    let certs = certs.to_str().unwrap();
    for tag in ["1", "2"] {
        let out = ok(
            &b,
            &[
                "--cert-dir",
                certs,
                "--creds",
                &user_pass,
                "pull",
                &reg.docker(&format!("ns/x:{tag}")),
                &format!("x:{tag}"),
            ],
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&login.password));
        assert_eq!(digest_of(&b, &format!("x:{tag}")), digest_of(&a, "x:latest"));
    }
    assert_restores_to(&b, "x:1", &root, &env.path("out"));
}

/// `ps e` shows a process's environment: a password that came to us in
/// KIWI_STACKBUILD_PASSWORD has no business in skopeo's, which reads the
/// auth file we wrote.
#[test]
fn the_password_variable_is_not_handed_to_skopeo() {
    let env = Env::new();
    let a = env.store("a");
    env.special_stash(&a, "x", "latest");
    let login = login();
    let reg = Registry::tls_auth(login.clone());
    let certs = reg.cert_dir();
    let mut push = cmd(
        &a,
        &[
            OsStr::new("--cert-dir"),
            certs.as_os_str(),
            OsStr::new("--creds"),
            OsStr::new(&login.user),
        ],
    );
    push.args(["push", "x", &reg.docker("ns/x:1")])
        .env("KIWI_STACKBUILD_PASSWORD", &login.password);
    let (out, seen) = watch_argv(push, std::slice::from_ref(&login.password), &reg.host());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(seen.skopeo_seen > 0, "no scan of {} saw skopeo running", seen.scans);
    assert_eq!(
        seen.environ_leaks, 0,
        "skopeo's environment held KIWI_STACKBUILD_PASSWORD in {} of {} scans",
        seen.environ_leaks, seen.skopeo_seen
    );
}

// --- Real KIWI builds from a registry ----------------------------------------

/// kiwi-stackbuild as the KIWI tests run it: fast xz, a private cache.
fn kiwi_cmd<S: AsRef<OsStr>>(home: &Path, cache: &Path, args: &[S]) -> Command {
    let mut c = cmd(
        home,
        &[
            OsStr::new("--kiwi-config"),
            common::fixture::kiwi_config().as_os_str(),
            OsStr::new("--shared-cache-dir"),
            cache.as_os_str(),
        ],
    );
    c.args(args).env("KIWI_NG", common::fixture::kiwi_ng());
    c
}

fn kiwi_ok<S: AsRef<OsStr> + std::fmt::Debug>(home: &Path, cache: &Path, args: &[S]) {
    let out = kiwi_cmd(home, cache, args).output().expect("running kiwi-stackbuild");
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
}

/// One real Debian build (W1) keeps its root; pushed to a registry, it is
/// what `stackbuild --from-registry` and `rebuild --root docker://...` (W2)
/// build from, each with an empty store.
#[test]
fn kiwi_builds_from_a_root_in_a_registry() {
    let env = Env::new();
    let (a, cache) = (env.store("a"), env.path("cache"));
    let desc = common::fixture::debian_description(&env.path("desc"));
    let t1 = env.path("w1");
    kiwi_ok(
        &a,
        &cache,
        &[
            OsStr::new("rebuild"),
            OsStr::new("--description"),
            desc.as_os_str(),
            OsStr::new("--keep-root"),
            OsStr::new("debian-base"),
            OsStr::new("--"),
            OsStr::new("--target-dir"),
            t1.as_os_str(),
        ],
    );
    let built = archive_list(&t1);
    let reg = Registry::plain();
    ok(
        &a,
        &[PLAIN, "push", "debian-base:1.0.0", &reg.docker("ns/debian-base:1.0.0")],
    );

    let t2 = env.path("stackbuild");
    let from = format!("{}/ns", reg.host());
    kiwi_ok(
        &env.store("b"),
        &cache,
        &[
            OsStr::new(PLAIN),
            OsStr::new("stackbuild"),
            OsStr::new("--stash"),
            OsStr::new("debian-base:1.0.0"),
            OsStr::new("--from-registry"),
            OsStr::new(&from),
            OsStr::new("--target-dir"),
            t2.as_os_str(),
        ],
    );
    assert_eq!(
        archive_list(&t2),
        built,
        "stackbuild --from-registry built another image"
    );
    assert!(fs::symlink_metadata(t2.join("build/image-root/bin"))
        .unwrap()
        .file_type()
        .is_symlink());

    let t3 = env.path("w2");
    let remote = reg.docker("ns/debian-base:1.0.0");
    kiwi_ok(
        &env.store("c"),
        &cache,
        &[
            OsStr::new(PLAIN),
            OsStr::new("rebuild"),
            OsStr::new("--root"),
            OsStr::new(&remote),
            OsStr::new("--"),
            OsStr::new("--target-dir"),
            t3.as_os_str(),
        ],
    );
    assert_eq!(
        archive_list(&t3),
        built,
        "rebuild --root docker://... built another image"
    );
}

// --- Fetched images are kept -------------------------------------------------

/// A kiwi-ng that does nothing (W2's `system create` on the unpacked root).
fn idle_kiwi(env: &Env) -> PathBuf {
    let path = env.path("kiwi-ng");
    fs::write(
        &path,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'KIWI (next generation) version 9.9.9'; fi\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Real skopeo against the TLS registry: a stash pushed and removed from
/// the store is fetched back by `rebuild --root docker://...`, every blob
/// once; the second rebuild makes no blob request at all, only a manifest
/// one, and both restore the stashed tree. The fetched image is listed
/// with its source. From a read-only view of the store a rebuild still
/// works, fetching into a scratch layout and saying so.
#[test]
fn a_second_rebuild_from_a_registry_fetches_no_blob() {
    let env = Env::new();
    let home = env.store("a");
    let root = env.special_stash(&home, "x", "1");
    let (config, layers) = blobs_of(&home, "x:1");
    let reg = Registry::tls_auth(login());
    let l = reg.login().unwrap();
    let creds = format!("{}:{}", l.user, l.password);
    let certs = reg.cert_dir();
    let remote = reg.docker("ns/x:1");
    let with_registry = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--cert-dir", certs.to_str().unwrap(), "--creds", &creds];
        all.extend(args);
        all.into_iter().map(str::to_string).collect()
    };
    ok(&home, &with_registry(&["push", "x:1", &remote]));
    ok(&home, &["stash", "--rm", "x"]);
    assert!(list(&home).is_empty());
    let kiwi = idle_kiwi(&env);
    let rebuild = |home: &Path, remote: &str, root: &Path, target: &str| -> (Output, Vec<String>) {
        let target = env.path(target);
        let before = reg.access_log().len();
        let out = cmd(
            home,
            &with_registry(&[
                "rebuild",
                "--root",
                remote,
                "--",
                "--target-dir",
                target.to_str().unwrap(),
            ]),
        )
        .env("KIWI_NG", &kiwi)
        .env("XDG_CACHE_HOME", env.path("cache"))
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_same_tree(&snapshot(root), &snapshot(&target.join("build/image-root")));
        (out, reg.access_log()[before..].to_vec())
    };

    let (_, log) = rebuild(&home, &remote, &root, "t1");
    let fetched = blob_gets(&log, "ns/x");
    assert_eq!(
        sorted(fetched.clone()),
        sorted(layers.iter().cloned().chain([config])),
        "{fetched:?}"
    );
    assert_eq!(fetched.len(), layers.len() + 1, "a blob was fetched twice: {fetched:?}");

    let (out, log) = rebuild(&home, &remote, &root, "t2");
    assert_eq!(
        blob_gets(&log, "ns/x"),
        Vec::<String>::new(),
        "the second rebuild fetched blobs"
    );
    let manifests: Vec<&str> = log
        .iter()
        .filter_map(|l| request(l))
        .filter(|(m, p, _)| *m == "GET" && p.starts_with("/v2/ns/x/manifests/"))
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(manifests, ["/v2/ns/x/manifests/1"], "{log:#?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to fetch"));

    let entries = list(&home);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let key = format!("fetched/127-0-0-1-{}/ns/x:1", reg.port());
    assert_eq!(entries[0]["reference"], key.as_str());
    assert_eq!(entries[0]["fetched_from"], remote.as_str());

    // A read-only store: nothing can be kept, the rebuild works all the same,
    // from the store for an image it holds, else from a scratch copy.
    let other_home = env.store("b");
    let other_root = env.special_stash(&other_home, "y", "1");
    let other = reg.docker("ns/y:1");
    ok(&other_home, &with_registry(&["push", "y:1", &other]));
    let ro = env.path("ro-store");
    fs::create_dir(&ro).unwrap();
    let mount = |args: &[&str]| {
        let status = Command::new("mount").args(args).status().expect("running mount");
        assert!(status.success(), "mount {args:?} failed");
    };
    mount(&["--bind", home.to_str().unwrap(), ro.to_str().unwrap()]);
    mount(&["-o", "remount,bind,ro", ro.to_str().unwrap()]);
    let index = fs::read(home.join("index.json")).unwrap();
    let got = std::panic::catch_unwind(|| {
        (
            rebuild(&ro, &remote, &root, "t3"),
            rebuild(&ro, &other, &other_root, "t4"),
        )
    });
    let _ = Command::new("umount").arg(&ro).status();
    let ((held, log), (scratch, _)) = got.unwrap();
    assert_eq!(
        blob_gets(&log, "ns/x"),
        Vec::<String>::new(),
        "a blob the store has was fetched"
    );
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert!(stderr.contains("cannot be written: read from there"), "{stderr}");
    let stderr = String::from_utf8_lossy(&scratch.stderr);
    assert!(
        stderr.contains("cannot be written") && stderr.contains("not kept"),
        "{stderr}"
    );
    assert_eq!(fs::read(home.join("index.json")).unwrap(), index);

    ok(&home, &["stash", "--rm", &key]);
    assert!(list(&home).is_empty());
}
