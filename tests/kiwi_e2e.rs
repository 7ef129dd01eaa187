//! Real kiwi-ng 11.1.6 builds of the Debian fixture, end to end: build and
//! keep the root (W1), stash, rebuild from the stash alone (W2), build a new
//! description on it (W3), stack stashes, and refuse what does not fit.
//!
//! One scenario shares one Debian build, since each build takes half a minute.
//! W2's result archive must equal W1's entry by entry, nanoseconds and dev/
//! included; that is checked last, so the other steps run even when it fails.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::archive::{read_archive, result_archive, same_build_report};
use common::fixture::{debian_description, kiwi_config, kiwi_ng};
use common::images::{archive_list, layer_digests, private_podman_storage, tail};

struct Env {
    tmp: tempfile::TempDir,
    home: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("store");
        Env { tmp, home }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Runs kiwi-stackbuild with the fast kiwi config and a private cache.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let cache = self.path("cache");
        let out = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .arg("--kiwi-config")
            .arg(kiwi_config())
            .arg("--shared-cache-dir")
            .arg(&cache)
            .args(args)
            .env("KIWI_STACKBUILD_HOME", &self.home)
            .env("KIWI_NG", kiwi_ng())
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("running kiwi-stackbuild");
        out
    }

    fn ok<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}",
            tail(&String::from_utf8_lossy(&out.stderr))
        );
        out
    }

    fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_slice(&self.ok(&["stash", "--list", "--json"]).stdout).unwrap()
    }

    fn stash_entry(&self, key: &str) -> serde_json::Value {
        let list = self.list();
        list.into_iter()
            .find(|e| e["reference"] == key)
            .unwrap_or_else(|| panic!("{key} not in the store"))
    }
}

fn add_package(description: &Path, package: &str) {
    let config = description.join("config.xml");
    let text = fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "<package name=\"bash\"/>",
        &format!("<package name=\"bash\"/>\n        <package name=\"{package}\"/>"),
        1,
    );
    fs::write(&config, text).unwrap();
}

fn write_small_root(root: &Path, name: &str, files: &[(&str, &str)]) {
    let config = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="{name}">
    <description type="system"><author>t</author><contact>t@example.invalid</contact><specification>s</specification></description>
    <preferences><version>2.0.0</version><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
    <repository type="apt-deb" distribution="bookworm" components="main"><source path="file:///nowhere"/></repository>
    <packages type="image"><package name="bash"/></packages>
</image>
"#
    );
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(root.join("image/config.xml"), config).unwrap();
    for (path, content) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
}

#[test]
fn debian_build_keep_rebuild_stack() {
    let env = Env::new();
    let desc = debian_description(&env.path("desc"));
    let t1 = env.path("w1");

    // W1: build and keep the root; a bare name is tagged with the
    // description's version and latest.
    let out = env.ok(&[
        OsStr::new("rebuild"),
        OsStr::new("--description"),
        desc.as_os_str(),
        OsStr::new("--keep-root"),
        OsStr::new("debian-base"),
        OsStr::new("--"),
        OsStr::new("--target-dir"),
        t1.as_os_str(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "debian-base:1.0.0\ndebian-base:latest\n"
    );
    let base = env.stash_entry("debian-base:1.0.0");
    assert_eq!(env.stash_entry("debian-base:latest")["digest"], base["digest"]);
    assert_eq!(base["layers"], 1);
    assert_eq!(base["labels"]["io.kiwi-stackbuild.package-manager"], "apt");
    assert_eq!(base["labels"]["io.kiwi-stackbuild.distribution"], "bookworm");
    assert_eq!(
        base["labels"]["io.osinside.kiwi.maintainer"],
        "kiwi-stackbuild developers"
    );
    assert!(
        base["labels"]["io.kiwi-stackbuild.kiwi-version"]
            .as_str()
            .unwrap()
            .starts_with("11.1"),
        "{base}"
    );
    let built = archive_list(&t1);
    let archive1 = read_archive(&result_archive(&t1));
    assert!(
        archive1
            .iter()
            .any(|(path, e)| path == b"dev/fd" && e.link.as_deref() == Some(b"/proc/self/fd".as_slice())),
        "KIWI's archive has no dev/fd -> /proc/self/fd: the comparison with W2 would prove little"
    );

    // stash of the same root with the plain stash command, seen in --list.
    let root1 = t1.join("build/image-root");
    env.ok(&[
        OsStr::new("stash"),
        OsStr::new("--root"),
        root1.as_os_str(),
        OsStr::new("--container-name"),
        OsStr::new("plain"),
    ]);
    let text = String::from_utf8_lossy(&env.ok(&["stash", "--list"]).stdout).into_owned();
    assert!(text.lines().any(|l| l.starts_with("plain:latest ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("debian-base:1.0.0 ")), "{text}");

    // W2: rebuild from the stash alone gives the same image.
    let t2 = env.path("w2");
    env.ok(&[
        OsStr::new("rebuild"),
        OsStr::new("--root"),
        OsStr::new("plain"),
        OsStr::new("--"),
        OsStr::new("--target-dir"),
        t2.as_os_str(),
    ]);
    assert_eq!(archive_list(&t2), built);
    assert!(fs::symlink_metadata(t2.join("build/image-root/bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    // plain holds what W1 kept, so W2 from it is W2 from debian-base:1.0.0.
    assert_eq!(
        layer_digests(&env.home, "plain:latest"),
        layer_digests(&env.home, "debian-base:1.0.0")
    );
    let w2_differs = same_build_report(&t1, &archive1, &t2);

    kiwi_own_stash_is_a_root(&env, &root1, &built);

    // W3: a description that adds xz-utils, built on the stash, kept as one more layer.
    let desc3 = debian_description(&env.path("desc3"));
    add_package(&desc3, "xz-utils");
    let t3 = env.path("w3");
    let out = env.run(&[
        OsStr::new("rebuild"),
        OsStr::new("--root"),
        OsStr::new("debian-base:1.0.0"),
        OsStr::new("--keep-root"),
        OsStr::new("debian-xz:1"),
        OsStr::new("--"),
        OsStr::new("--description"),
        desc3.as_os_str(),
        OsStr::new("--target-dir"),
        t3.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "W3 failed:\n{}", tail(&stderr));
    assert!(
        stderr.contains("dropped <packages type=\"bootstrap\">"),
        "the log does not say the bootstrap section was dropped"
    );
    let root3 = t3.join("build/image-root");
    assert!(root3.join("usr/bin/xz").is_file(), "xz-utils is not installed");
    assert!(
        fs::symlink_metadata(root3.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "/bin is no longer a symlink"
    );
    for p in &built {
        assert!(
            fs::symlink_metadata(root3.join(p)).is_ok() || p.is_empty(),
            "{p} of the base is missing after W3"
        );
    }
    let xz = env.stash_entry("debian-xz:1");
    assert_eq!(xz["layers"], 2, "{xz}");
    assert!(
        xz["base"].as_str().unwrap().contains("debian-base:1.0.0@sha256:"),
        "{xz}"
    );

    // Stacking: X = the Debian stash; A stashed twice (a file deleted, one added).
    let a = env.path("a-root");
    write_small_root(
        &a,
        "layer-a",
        &[("usr/bin/a-tool", "#!/bin/sh\n"), ("etc/a-old", "old\n")],
    );
    fs::create_dir_all(a.join("bin")).unwrap();
    fs::write(a.join("bin/a-bin"), "in a real bin/ directory\n").unwrap();
    env.ok(&[
        OsStr::new("stash"),
        OsStr::new("--root"),
        a.as_os_str(),
        OsStr::new("--tag"),
        OsStr::new("1"),
    ]);
    fs::remove_file(a.join("etc/a-old")).unwrap();
    fs::write(a.join("etc/a-new"), "new\n").unwrap();
    env.ok(&[
        OsStr::new("stash"),
        OsStr::new("--root"),
        a.as_os_str(),
        OsStr::new("--tag"),
        OsStr::new("2"),
    ]);
    let t4 = env.path("stack");
    env.ok(&[
        OsStr::new("stackbuild"),
        OsStr::new("--stash"),
        OsStr::new("plain"),
        OsStr::new("layer-a:2"),
        OsStr::new("--target-dir"),
        t4.as_os_str(),
    ]);
    let root4 = t4.join("build/image-root");
    assert!(root4.join("usr/bin/bash").is_file(), "X's own files are gone");
    assert!(root4.join("etc/a-new").is_file(), "A's new file is missing");
    assert!(!root4.join("etc/a-old").exists(), "A's deleted file came back");
    assert!(
        fs::symlink_metadata(root4.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "/bin is no longer a symlink"
    );
    assert!(
        root4.join("usr/bin/a-bin").is_file(),
        "A's bin/ file did not land behind the symlink"
    );

    // A description for another package manager does not fit on an apt stash.
    let zypper = env.path("zypper");
    fs::create_dir_all(&zypper).unwrap();
    let text = fs::read_to_string(desc.join("config.xml")).unwrap().replace(
        "<packagemanager>apt</packagemanager>",
        "<packagemanager>zypper</packagemanager>",
    );
    fs::write(zypper.join("config.xml"), text).unwrap();
    let t5 = env.path("misfit");
    let out = env.run(&[
        OsStr::new("rebuild"),
        OsStr::new("--root"),
        OsStr::new("plain"),
        OsStr::new("--"),
        OsStr::new("--description"),
        zypper.as_os_str(),
        OsStr::new("--target-dir"),
        t5.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("package manager differs") && stderr.contains("apt") && stderr.contains("zypper"),
        "{stderr}"
    );
    assert!(
        !t5.join("build/image-root").exists(),
        "a misfit build unpacked the root"
    );

    derived_build(&env);

    if let Some(report) = w2_differs {
        panic!("W2 did not build again what W1 built:\n{report}");
    }
}

/// Removes KIWI's stash directory of one test stash, wherever the test ends.
struct KiwiStashDir(PathBuf);

impl Drop for KiwiStashDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A stash written by KIWI's own `system stash` (an oci-archive under
/// /var/tmp/kiwi-stash) rebuilds with W2 like one of ours.
fn kiwi_own_stash_is_a_root(env: &Env, root: &Path, built: &BTreeSet<String>) {
    let name = format!("kiwistash{}", std::process::id());
    let dir = KiwiStashDir(PathBuf::from("/var/tmp/kiwi-stash").join(&name));
    let conf = private_podman_storage(&env.path("podman"));
    let out = Command::new(kiwi_ng())
        .args(["system", "stash", "--root"])
        .arg(root)
        .args(["--container-name", &name])
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiwi-ng system stash failed: {}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    let archive = dir.0.join(format!("{name}.tar"));
    assert!(archive.is_file(), "KIWI wrote no {}", archive.display());
    let t = env.path("from-kiwi-stash");
    let reference = format!("oci-archive:{}", archive.display());
    env.ok(&[
        OsStr::new("rebuild"),
        OsStr::new("--root"),
        OsStr::new(&reference),
        OsStr::new("--"),
        OsStr::new("--target-dir"),
        t.as_os_str(),
    ]);
    // KIWI's own stash does not keep what KIWI put into dev/ (dev/fd,
    // dev/std*, dev/pts): that much of the root is lost before we read it.
    let no_dev_contents = |list: &std::collections::BTreeSet<String>| -> std::collections::BTreeSet<String> {
        list.iter()
            .filter(|p| !p.starts_with("dev/") || *p == "dev/")
            .cloned()
            .collect()
    };
    assert_eq!(no_dev_contents(&archive_list(&t)), no_dev_contents(built));
}

/// W4 on the Debian stash: the derived description adds a package and a
/// user, changes name and version, and ships a config.sh.
fn derived_build(env: &Env) {
    let derived = common::fixture::description("derived-debian", &env.path("derived"));

    // The merge preview, from derived_from, is a description kiwi-ng accepts.
    let preview = env.path("preview");
    env.ok(&[
        OsStr::new("merge"),
        OsStr::new("--description"),
        derived.as_os_str(),
        OsStr::new("--output"),
        preview.as_os_str(),
    ]);
    let merged = fs::read_to_string(preview.join("config.xml")).unwrap();
    assert!(
        merged.contains("name=\"kiwi-stackbuild-derived\"") && !merged.contains("derived_from="),
        "{merged}"
    );
    assert!(
        merged.contains("<package name=\"bash\"/>") && merged.contains("<package name=\"less\"/>"),
        "{merged}"
    );
    // The merge keeps the base's bootstrap section (KIWI wrote the stored
    // description in its own layout): it builds from scratch too.
    let bootstrap = |xml: &str| {
        (
            xml.matches("type=\"bootstrap\"").count(),
            xml.matches("name=\"usrmerge\"").count(),
        )
    };
    assert_eq!(bootstrap(&merged), (1, 1), "{merged}");
    assert!(preview.join("config.sh").is_file());
    let info = Command::new(kiwi_ng())
        .args(["image", "info", "--description"])
        .arg(&preview)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "kiwi-ng rejects the merged description: {}",
        String::from_utf8_lossy(&info.stderr)
    );

    let t = env.path("w4");
    let out = env.run(&[
        OsStr::new("rebuild"),
        OsStr::new("--description"),
        derived.as_os_str(),
        OsStr::new("--keep-root"),
        OsStr::new("derived"),
        OsStr::new("--"),
        OsStr::new("--target-dir"),
        t.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "W4 failed:\n{}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    let names: Vec<String> = fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("kiwi-stackbuild-derived.") && n.ends_with("-2.0.0.tar.xz")),
        "{names:?}"
    );
    let root = t.join("build/image-root");
    assert!(root.join("usr/bin/less").is_file(), "less is not installed");
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("tester:")),
        "no user tester in /etc/passwd"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/derived-marker")).unwrap().trim(),
        "written by the derived description's config.sh"
    );
    // T/build keeps the merge as written (bootstrap section and all); what
    // kiwi-ng built on the existing root, and imported as /image, had it
    // dropped, and the log says so.
    let kept_merge = fs::read_to_string(t.join("build/merged-description/config.xml")).unwrap();
    assert_eq!(bootstrap(&kept_merge), (1, 1), "{kept_merge}");
    let built = fs::read_to_string(root.join("image/config.xml")).unwrap();
    assert_eq!(bootstrap(&built), (0, 0), "{built}");
    assert!(built.contains("name=\"less\""), "{built}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dropped <packages type=\"bootstrap\">"),
        "the log does not say the bootstrap section was dropped"
    );
    let kept = env.stash_entry("derived:2.0.0");
    assert_eq!(kept["layers"], 2, "{kept}");
    assert!(
        kept["base"].as_str().unwrap().contains("debian-base:1.0.0@sha256:"),
        "{kept}"
    );
}

#[test]
fn pax_times_keep_their_nanoseconds() {
    use common::archive::parse_pax_time;
    for (text, want) in [
        ("1796156559.25850069", (1796156559, 258_500_690)),
        ("1796156514.459807975", (1796156514, 459_807_975)),
        ("1796156514", (1796156514, 0)),
        ("1.0000000019", (1, 1)),
        ("-1.5", (-2, 500_000_000)),
    ] {
        assert_eq!(parse_pax_time(text.as_bytes()).unwrap(), want, "{text}");
    }
    assert!(parse_pax_time(b"12.3x").is_err());
}
