//! The labels and annotations a stash carries (KIWI's own two, ours, and
//! the standard OCI ones).

use std::collections::BTreeMap;

/// KIWI's label for who maintains the image (the description's author).
pub const KIWI_MAINTAINER: &str = "io.osinside.kiwi.maintainer";
/// KIWI's label for what prepared the image.
pub const KIWI_META: &str = "io.osinside.kiwi.meta";
/// Our namespace.
pub const PREFIX: &str = "io.kiwi-stackbuild.";
/// The image name of the description.
pub const NAME: &str = "io.kiwi-stackbuild.image.name";
/// The image version of the description.
pub const VERSION: &str = "io.kiwi-stackbuild.image.version";
/// The package manager of the description.
pub const PACKAGE_MANAGER: &str = "io.kiwi-stackbuild.package-manager";
/// The architecture of the root tree (KIWI's spelling, e.g. x86_64).
pub const ARCHITECTURE: &str = "io.kiwi-stackbuild.architecture";
/// The distribution the description builds from.
pub const DISTRIBUTION: &str = "io.kiwi-stackbuild.distribution";
/// sha256 of `/image/config.xml`.
pub const DESCRIPTION_SHA256: &str = "io.kiwi-stackbuild.description.sha256";
/// The kiwi-ng version on the host that stored the tree.
pub const KIWI_VERSION: &str = "io.kiwi-stackbuild.kiwi-version";
/// The images this one was built on: `ref@digest`, space separated, lowest first.
pub const BASES: &str = "io.kiwi-stackbuild.bases";
/// The hash of the input record of the build that made the tree (see `inputs`).
pub const INPUTS: &str = "io.kiwi-stackbuild.inputs";
/// That input record, as canonical JSON.
pub const INPUTS_RECORD: &str = "io.kiwi-stackbuild.inputs.record";
/// OBS's label for the source a build came from.
pub const OBS_DISTURL: &str = "org.openbuildservice.disturl";

/// What we know about a root tree when we store it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `<image name>`.
    pub name: Option<String>,
    /// `<version>`.
    pub version: Option<String>,
    /// `<author>`.
    pub author: Option<String>,
    /// `<packagemanager>`.
    pub package_manager: Option<String>,
    /// Architecture in KIWI's spelling.
    pub architecture: Option<String>,
    /// Distribution, e.g. `bookworm`.
    pub distribution: Option<String>,
    /// sha256 hex of `/image/config.xml`.
    pub description_sha256: Option<String>,
    /// kiwi-ng's version.
    pub kiwi_version: Option<String>,
    /// `ref@digest` of each base, lowest first.
    pub bases: Vec<String>,
    /// `BUILD_DISTURL` of an OBS build.
    pub disturl: Option<String>,
    /// The input record's hash and its JSON, of a build we ran.
    pub inputs: Option<(String, String)>,
}

impl Facts {
    /// The image config labels for these facts.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let bases = (!self.bases.is_empty()).then(|| self.bases.join(" "));
        let pairs = [
            (KIWI_MAINTAINER, self.author.clone()),
            (
                KIWI_META,
                Some(format!("kiwi-stackbuild {}", env!("CARGO_PKG_VERSION"))),
            ),
            (NAME, self.name.clone()),
            (VERSION, self.version.clone()),
            (PACKAGE_MANAGER, self.package_manager.clone()),
            (ARCHITECTURE, self.architecture.clone()),
            (DISTRIBUTION, self.distribution.clone()),
            (DESCRIPTION_SHA256, self.description_sha256.clone()),
            (KIWI_VERSION, self.kiwi_version.clone()),
            (BASES, bases),
            (OBS_DISTURL, self.disturl.clone()),
            (INPUTS, self.inputs.as_ref().map(|i| i.0.clone())),
            (INPUTS_RECORD, self.inputs.as_ref().map(|i| i.1.clone())),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        }
        out
    }

    /// The standard `org.opencontainers.image.*` manifest annotations.
    pub fn annotations(&self, created: &str, base: Option<(&str, &str)>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert("org.opencontainers.image.created".into(), created.to_string());
        let pairs = [
            ("org.opencontainers.image.title", self.name.clone()),
            ("org.opencontainers.image.version", self.version.clone()),
            ("org.opencontainers.image.authors", self.author.clone()),
            ("org.opencontainers.image.base.name", base.map(|b| b.0.to_string())),
            ("org.opencontainers.image.base.digest", base.map(|b| b.1.to_string())),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                out.insert(k.into(), v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_kiwi_and_our_namespace() {
        let facts = Facts {
            name: Some("base".into()),
            version: Some("1.0.0".into()),
            author: Some("Jane".into()),
            package_manager: Some("apt".into()),
            architecture: Some("x86_64".into()),
            distribution: Some("bookworm".into()),
            bases: vec!["a:1@sha256:00".into(), "b:2@sha256:11".into()],
            disturl: Some("obs://build/x".into()),
            ..Facts::default()
        };
        let l = facts.labels();
        assert_eq!(l[KIWI_MAINTAINER], "Jane");
        assert!(l[KIWI_META].starts_with("kiwi-stackbuild "));
        assert_eq!(l[NAME], "base");
        assert_eq!(l[PACKAGE_MANAGER], "apt");
        assert_eq!(l[BASES], "a:1@sha256:00 b:2@sha256:11");
        assert_eq!(l[OBS_DISTURL], "obs://build/x");
        assert!(!l.contains_key(KIWI_VERSION));
        assert!(l
            .keys()
            .filter(|k| k.starts_with("io.kiwi"))
            .all(|k| k.starts_with(PREFIX)));
    }
}
