//! contrib/kiwi-stackbuild.spec parses with rpmspec and packages the version
//! Cargo.toml says.

use std::path::Path;
use std::process::Command;

#[test]
fn the_spec_parses_and_matches_the_crate_version() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kiwi-stackbuild.spec");
    let out = Command::new("rpmspec")
        .arg("-q")
        .arg("--qf")
        .arg("%{name} %{version}\n")
        .arg(&spec)
        .output()
        .expect("running rpmspec (package rpm)");
    assert!(
        out.status.success(),
        "rpmspec rejects the spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let packages: Vec<&str> = text.lines().collect();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        packages,
        [
            format!("kiwi-stackbuild {version}"),
            format!("kiwi-stackbuild-obs-hook {version}")
        ]
    );
}

/// What rpmspec says one package requires, recommends, provides and
/// conflicts with, by name.
#[derive(Debug, PartialEq)]
struct Relations {
    requires: Vec<String>,
    recommends: Vec<String>,
    provides: Vec<String>,
    conflicts: Vec<String>,
}

fn relations() -> Vec<(String, Relations)> {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kiwi-stackbuild.spec");
    let out = Command::new("rpmspec")
        .arg("-q")
        .arg("--qf")
        .arg("%{name}|[%{REQUIRENAME},]|[%{RECOMMENDNAME},]|[%{PROVIDENAME},]|[%{CONFLICTNAME},]\n")
        .arg(&spec)
        .output()
        .expect("running rpmspec (package rpm)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|n| !n.is_empty() && !n.contains('('))
            .map(str::to_string)
            .collect()
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            let relations = Relations {
                requires: list(f[1]),
                recommends: list(f[2]),
                provides: list(f[3]),
                conflicts: list(f[4]),
            };
            (f[0].to_string(), relations)
        })
        .collect()
}

#[test]
fn umoci_is_recommended_and_the_hook_is_the_only_kiwi_post_run() {
    let relations = relations();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        relations[0],
        (
            "kiwi-stackbuild".to_string(),
            Relations {
                requires: strings(&["/usr/bin/kiwi-ng", "skopeo"]),
                recommends: strings(&["curl", "umoci"]),
                provides: strings(&["kiwi-stackbuild"]),
                conflicts: vec![],
            }
        )
    );
    assert_eq!(
        relations[1],
        (
            "kiwi-stackbuild-obs-hook".to_string(),
            Relations {
                requires: strings(&["kiwi-stackbuild"]),
                recommends: vec![],
                provides: strings(&["kiwi-stackbuild-obs-hook", "kiwi_post_run"]),
                conflicts: strings(&["kiwi_post_run"]),
            }
        )
    );
}
