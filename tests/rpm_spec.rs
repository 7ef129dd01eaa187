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
            format!("obs-service-kiwi-stackbuild-hook {version}")
        ]
    );
}
