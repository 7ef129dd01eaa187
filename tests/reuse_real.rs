//! `rebuild --reuse` with real kiwi-ng 11.1.6 builds of the Debian fixture
//! and a real registry on 127.0.0.1, as two machines would use it: A builds
//! and keeps the root in the registry; B, with an empty store, runs the same
//! command and builds from the kept root without kiwi-ng's prepare, fetching
//! each layer once, and again fetching no blob at all. B's result archive
//! equals A's in full metadata. On A, an edited config.sh builds in full and
//! `inputs --against` names it, as it names the other changes a user makes.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::archive::{read_archive, result_archive, same_build_report};
use common::fixture::{debian_description, kiwi_config, kiwi_ng};
use common::images::{layer_digests, tail};
use common::registry::{blob_gets, Registry};

/// Plain HTTP to the test registry.
const PLAIN: &str = "--tls-verify=false";
/// What kiwi-ng logs when it prepares a root (`system build`'s first step).
const PREPARE: &str = "Preparing new root system";

/// One machine: its store and kiwi-ng's package cache.
struct Machine {
    home: PathBuf,
    cache: PathBuf,
}

impl Machine {
    fn new(dir: &Path, name: &str) -> Machine {
        Machine {
            home: dir.join(format!("{name}-store")),
            cache: dir.join(format!("{name}-cache")),
        }
    }

    /// Runs kiwi-stackbuild with the fast kiwi config; the output and how
    /// long it took.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> (Output, Duration) {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .arg("--kiwi-config")
            .arg(kiwi_config())
            .arg("--shared-cache-dir")
            .arg(&self.cache)
            .arg(PLAIN)
            .args(args)
            .env("KIWI_STACKBUILD_HOME", &self.home)
            .env("KIWI_NG", kiwi_ng())
            .env("RUST_BACKTRACE", "0")
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("running kiwi-stackbuild");
        (out, start.elapsed())
    }

    /// [`Machine::run`] of `rebuild --description DESC --keep-root REMOTE
    /// --reuse -- --target-dir TARGET`, which must succeed: its log and time.
    fn reuse(&self, desc: &Path, remote: &str, target: &Path) -> (String, Duration) {
        let (out, took) = self.run(&[
            OsStr::new("rebuild"),
            OsStr::new("--description"),
            desc.as_os_str(),
            OsStr::new("--keep-root"),
            OsStr::new(remote),
            OsStr::new("--reuse"),
            OsStr::new("--"),
            OsStr::new("--target-dir"),
            target.as_os_str(),
        ]);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "the build in {} failed:\n{}",
            target.display(),
            tail(&log)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{remote}\n"));
        (log, took)
    }

    /// `inputs --description DESC --against REMOTE` with `globals` before
    /// and `after` behind `--`: what it prints and its exit status.
    fn against(&self, desc: &Path, remote: &str, globals: &[&str], after: &[&str]) -> (String, Option<i32>) {
        let mut args: Vec<&OsStr> = globals.iter().map(OsStr::new).collect();
        args.extend([
            OsStr::new("inputs"),
            OsStr::new("--description"),
            desc.as_os_str(),
            OsStr::new("--against"),
            OsStr::new(remote),
            OsStr::new("--"),
        ]);
        args.extend(after.iter().map(OsStr::new));
        let (out, _) = self.run(&args);
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
    }
}

#[test]
fn a_reused_build_skips_prepare_on_another_machine_and_builds_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::plain();
    let remote = reg.docker("ns/debian:1");
    let desc = debian_description(&tmp.path().join("desc"));
    fs::write(
        desc.join("config.sh"),
        "#!/bin/bash\necho built > /etc/kiwi-stackbuild-reuse\n",
    )
    .unwrap();
    let (a, b) = (Machine::new(tmp.path(), "a"), Machine::new(tmp.path(), "b"));

    // A: nothing in the registry yet, so the build runs and pushes.
    let t_a = tmp.path().join("a1");
    let (log, fresh) = a.reuse(&desc, &remote, &t_a);
    assert!(log.contains(PREPARE), "A did not prepare:\n{}", tail(&log));
    assert!(
        log.contains(&format!("--reuse: there is no {remote} yet: building")),
        "{}",
        tail(&log)
    );
    let archive_a = read_archive(&result_archive(&t_a));

    // B, an empty store: the same command reuses what A kept.
    let t_b = tmp.path().join("b1");
    let before = reg.access_log().len();
    let (log, reused) = b.reuse(&desc, &remote, &t_b);
    assert!(!log.contains(PREPARE), "B prepared a root:\n{}", tail(&log));
    assert!(
        log.contains(&format!("inputs unchanged since {remote}, built ")) && log.contains(": skipping prepare"),
        "{}",
        tail(&log)
    );
    let gets = blob_gets(&reg.access_log()[before..], "ns/debian");
    let layers = layer_digests(&b.home, &only_key(&b.home));
    for layer in &layers {
        let n = gets.iter().filter(|g| *g == layer).count();
        assert_eq!(n, 1, "layer {layer} was fetched {n} times: {gets:?}");
    }
    eprintln!(
        "fresh build on A {:.1} s, reused build on B {:.1} s ({:.2}); B fetched {} blobs, {} layers",
        fresh.as_secs_f64(),
        reused.as_secs_f64(),
        reused.as_secs_f64() / fresh.as_secs_f64(),
        gets.len(),
        layers.len()
    );
    assert!(
        reused * 3 <= fresh,
        "the reused build took {reused:?}, more than a third of the fresh one ({fresh:?})"
    );
    if let Some(report) = same_build_report(&t_a, &archive_a, &t_b) {
        panic!("B's reused build differs from A's:\n{report}");
    }

    // B again: the store has it all, so no blob is fetched.
    let before = reg.access_log().len();
    let (log, _) = b.reuse(&desc, &remote, &tmp.path().join("b2"));
    assert!(!log.contains(PREPARE), "B prepared a root:\n{}", tail(&log));
    assert_eq!(
        blob_gets(&reg.access_log()[before..], "ns/debian"),
        Vec::<String>::new()
    );

    // Each change a user makes is named against the kept image ...
    let (same, code) = a.against(&desc, &remote, &[], &[]);
    assert_eq!(code, Some(0), "{same}");
    assert!(same.starts_with(&format!("same inputs as {remote}: sha256:")), "{same}");
    fs::create_dir_all(desc.join("root/etc")).unwrap();
    fs::write(desc.join("root/etc/motd"), "reused\n").unwrap();
    let changes: [(&[&str], &[&str], &str); 3] = [
        (&[], &[], "root/etc/motd added"),
        (
            &[],
            &["--add-package", "xz-utils"],
            "args [] -> [\"--add-package=xz-utils\"]",
        ),
        (&["--profile", "big"], &[], "profiles [] -> [\"big\"]"),
    ];
    for (globals, after, named) in changes {
        let (out, code) = a.against(&desc, &remote, globals, after);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.lines().any(|l| l == named), "{named:?} not in:\n{out}");
    }
    fs::remove_dir_all(desc.join("root")).unwrap();
    // ... and an edited config.sh is built in full, and kept.
    fs::write(
        desc.join("config.sh"),
        "#!/bin/bash\necho built again > /etc/kiwi-stackbuild-reuse\n",
    )
    .unwrap();
    let (out, code) = a.against(&desc, &remote, &[], &[]);
    assert_eq!((out.as_str(), code), ("config.sh: content, size changed\n", Some(1)));
    let t_a2 = tmp.path().join("a2");
    let (log, _) = a.reuse(&desc, &remote, &t_a2);
    assert!(
        log.contains(PREPARE),
        "the changed build did not prepare:\n{}",
        tail(&log)
    );
    assert!(
        log.contains(&format!(
            "--reuse: the inputs changed since {remote} (config.sh: content, size changed): building"
        )),
        "{}",
        tail(&log)
    );
    assert_eq!(
        fs::read_to_string(t_a2.join("build/image-root/etc/kiwi-stackbuild-reuse")).unwrap(),
        "built again\n"
    );
    let (same, code) = a.against(&desc, &remote, &[], &[]);
    assert_eq!(code, Some(0), "the new build was not kept with its record: {same}");
}

/// The key of the one image in the store at `home`.
fn only_key(home: &Path) -> String {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(home.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string()
}
