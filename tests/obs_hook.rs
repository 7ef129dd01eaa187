//! contrib/obs/kiwi_post_run, the hook OBS runs after a KIWI build: every
//! KIWIROOT-<type> becomes an OCI archive among the results, labelled with
//! the build's disturl, that a later build can derive from.

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

fn kiwi_root(topdir: &Path, kind: &str) {
    let root = topdir.join(format!("KIWIROOT-{kind}"));
    fs::create_dir_all(root.join("image")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("image/config.xml"), CONFIG).unwrap();
    fs::write(root.join("etc/os-release"), format!("NAME=test-{kind}\n")).unwrap();
}

#[test]
fn every_kiwi_root_becomes_a_published_oci_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let topdir = tmp.path().join("packages");
    kiwi_root(&topdir, "docker");
    kiwi_root(&topdir, "oem");
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/obs/kiwi_post_run");
    let out = Command::new(&hook)
        .env("TOPDIR", &topdir)
        .env("KIWI_STACKBUILD", env!("CARGO_BIN_EXE_kiwi-stackbuild"))
        .env(
            "BUILD_DISTURL",
            "obs://build.example.invalid/openSUSE:Leap:15.6/images/0123-obs-base",
        )
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the hook failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let arch = std::env::consts::ARCH;
    let home = tmp.path().join("store");
    for kind in ["docker", "oem"] {
        let archive = topdir.join(format!("KIWI/obs-base.{arch}-15.6.1-{kind}.stash.oci.tar"));
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
        assert_eq!(
            e["labels"]["org.openbuildservice.disturl"],
            "obs://build.example.invalid/openSUSE:Leap:15.6/images/0123-obs-base"
        );
        assert_eq!(e["labels"]["io.kiwi-stackbuild.distribution"], "opensuse-leap-15.6");
        assert_eq!(e["layers"], 1);
    }
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("kiwi-stackbuild-obs"))
        .collect();
    assert!(leftovers.is_empty(), "the hook left its store behind: {leftovers:?}");
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
