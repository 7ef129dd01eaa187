//! contrib/obs/kiwi_post_run, the hook OBS runs after a KIWI build: every
//! KIWIROOT-<type> becomes an OCI archive among the results, labelled with
//! the build's disturl (from the environment or the build root's
//! `/.buildenv`), that a later build can derive from.

use std::fs;
use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="obs-base">
    <description type="system"><author>OBS</author><contact>obs@example.invalid</contact><specification>s</specification></description>
    <preferences><version>15.6.1</version><packagemanager>zypper</packagemanager><type image="docker"/></preferences>
    <repository><source path="obs://openSUSE:Leap:15.6/standard"/></repository>
    <packages type="image"><package name="bash"/></packages>
</image>
"#;

/// A root as KIWI leaves it, built with `profiles` (its `/.profile`).
fn kiwi_root(topdir: &Path, kind: &str, profiles: &str) {
    let root = topdir.join(format!("KIWIROOT-{kind}"));
    fs::create_dir_all(root.join("image")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("image/config.xml"), CONFIG).unwrap();
    fs::write(root.join("etc/os-release"), format!("NAME=test-{kind}\n")).unwrap();
    fs::write(
        root.join(".profile"),
        format!("kiwi_iname='obs-base'\nkiwi_profiles='{profiles}'\nkiwi_type='{kind}'\n"),
    )
    .unwrap();
}

/// The sources OBS staged for the build: the recipe and a script beside it.
fn sources(topdir: &Path) {
    let dir = topdir.join("SOURCES");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("obs-base.kiwi"), CONFIG).unwrap();
    fs::write(dir.join("config.sh"), "#!/bin/bash\n").unwrap();
}

const DISTURL: &str = "obs://build.example.invalid/openSUSE:Leap:15.6/images/0123-obs-base";

/// Where the disturl comes from in a run of the hook.
enum Disturl {
    /// `BUILD_DISTURL` in the environment.
    Environment,
    /// Only the build root's `/.buildenv`, as OBS writes it.
    Buildenv,
}

/// Runs the hook in an OBS-shaped build root (`/.buildenv`,
/// `/usr/src/packages/KIWIROOT-<type>`) and checks that every root became
/// an archive that pulls, with the disturl as its label.
fn every_kiwi_root_becomes_a_published_oci_archive(disturl: Disturl) {
    let tmp = tempfile::tempdir().unwrap();
    let buildroot = tmp.path().join("buildroot");
    let topdir = buildroot.join("usr/src/packages");
    kiwi_root(&topdir, "docker", "flavor");
    kiwi_root(&topdir, "oem", "");
    sources(&topdir);
    let buildenv = buildroot.join(".buildenv");
    fs::write(
        &buildenv,
        format!("BUILD_ARCH='x86_64'\nBUILD_DISTURL='{DISTURL}'\nBUILD_DIST='/.build/build.dist'\n"),
    )
    .unwrap();
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/obs/kiwi_post_run");
    let mut run = Command::new(&hook);
    run.env("TOPDIR", &topdir)
        .env("KIWI_STACKBUILD", env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .env("KIWI_STACKBUILD_OBS_BUILDENV", &buildenv)
        .env("TMPDIR", tmp.path());
    match disturl {
        Disturl::Environment => {
            fs::write(&buildenv, "BUILD_DISTURL='obs://not/this/one'\n").unwrap();
            run.env("BUILD_DISTURL", DISTURL)
        }
        Disturl::Buildenv => run.env_remove("BUILD_DISTURL"),
    };
    let out = run.output().unwrap();
    assert!(
        out.status.success(),
        "the hook failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let arch = std::env::consts::ARCH;
    let home = tmp.path().join("store");
    for kind in ["docker", "oem"] {
        let archive = topdir.join(format!("KIWI/obs-base.{arch}-15.6.1-{kind}.stash.oci-archive"));
        assert!(archive.is_file(), "no {}", archive.display());
        let pulled = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .args([
                "pull",
                &format!("oci-archive:{}:obs-base:15.6.1", archive.display()),
                &format!("obs-{kind}:1"),
            ])
            .env("KIWI_STACKBUILD_HOME", &home)
            .output()
            .unwrap();
        assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    }
    let list = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .args(["stash", "--list", "--json"])
        .env("KIWI_STACKBUILD_HOME", &home)
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.len(), 2);
    for e in &list {
        assert_eq!(e["labels"]["org.openbuildservice.disturl"], DISTURL);
        assert_eq!(e["labels"]["io.kiwi-stackbuild.distribution"], "opensuse-leap-15.6");
        assert_eq!(e["layers"], 1);
        // The input record of what the build root held.
        let labels = &e["labels"];
        let record: serde_json::Value =
            serde_json::from_str(labels["io.kiwi-stackbuild.inputs.record"].as_str().unwrap_or("null")).unwrap();
        let parts = &record["parts"];
        assert_eq!(parts["obs-base.kiwi"]["type"], "file", "{record}");
        assert_eq!(parts["config.sh"]["type"], "file", "{record}");
        let profiles = if e["reference"] == "obs-docker:1" {
            vec!["flavor"]
        } else {
            vec![]
        };
        assert_eq!(parts["profiles"], serde_json::json!(profiles), "{record}");
        let against = Command::new(env!("CARGO_BIN_EXE_kiwi-stackbuild"))
            .args(profiles.iter().flat_map(|p| ["--profile", p]))
            .arg("inputs")
            .arg("--description")
            .arg(topdir.join("SOURCES"))
            .arg("--against")
            .arg(e["reference"].as_str().unwrap())
            .env("KIWI_STACKBUILD_HOME", &home)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&against.stdout);
        assert!(
            against.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&against.stderr)
        );
        assert!(
            said.starts_with(&format!("same inputs as {}: sha256:", e["reference"].as_str().unwrap())),
            "{said}"
        );
    }
    // OBS's container post-processing reads every KIWI/*.tar (and *.tar.xz)
    // as a container image of the recipe; the stashes must not be one.
    let results: Vec<_> = fs::read_dir(topdir.join("KIWI"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    for name in &results {
        assert!(!name.ends_with(".tar") && !name.ends_with(".tar.xz"), "{name}");
    }
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("kiwi-stackbuild-obs"))
        .collect();
    assert!(leftovers.is_empty(), "the hook left its store behind: {leftovers:?}");
}

#[test]
fn the_disturl_comes_from_the_environment_first() {
    every_kiwi_root_becomes_a_published_oci_archive(Disturl::Environment);
}

#[test]
fn the_disturl_comes_from_buildenv_as_obs_writes_it() {
    every_kiwi_root_becomes_a_published_oci_archive(Disturl::Buildenv);
}

#[test]
fn no_kiwi_root_is_nothing_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/obs/kiwi_post_run");
    let out = Command::new(&hook)
        .env("TOPDIR", tmp.path())
        .env("KIWI_STACKBUILD", env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to stash"));
    assert!(!tmp.path().join("KIWI").exists());
}
