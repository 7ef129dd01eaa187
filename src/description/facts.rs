//! Facts read from a description, for OCI labels and fit checks.

use super::model::{Document, Element};

impl Document {
    /// `<image name>`.
    pub fn image_name(&self) -> Option<&str> {
        self.root.attr("name")
    }

    /// `<image displayname>`.
    pub fn displayname(&self) -> Option<&str> {
        self.root.attr("displayname")
    }

    /// `<image derived_from>`: the image a derived description builds on.
    pub fn derived_from(&self) -> Option<&str> {
        self.root.attr("derived_from")
    }

    /// The first `preferences/version` in document order.
    pub fn version(&self) -> Option<String> {
        self.first_text("preferences", "version")
    }

    /// The first `preferences/packagemanager` in document order.
    pub fn package_manager(&self) -> Option<String> {
        self.first_text("preferences", "packagemanager")
    }

    /// `description/author`, from `<description type="system">` when there is one.
    pub fn author(&self) -> Option<String> {
        let system = self
            .root
            .elements_named("description")
            .find(|d| d.attr("type") == Some("system"));
        let description = system.or_else(|| self.root.first("description"))?;
        non_empty(description.first("author")?.text())
    }

    /// The distribution the repositories point at, e.g. `opensuse-leap-15.6`,
    /// `fedora-40` or `bookworm`: from the first repository that tells
    /// (see [`distribution_from_apt`] and [`distribution_from_source`]).
    pub fn distribution(&self) -> Option<String> {
        self.root.elements_named("repository").find_map(repository_distribution)
    }

    /// The names of all `<profile>`s in document order.
    pub fn profile_names(&self) -> Vec<String> {
        let profiles = self
            .root
            .elements_named("profiles")
            .flat_map(|p| p.elements_named("profile"));
        profiles.filter_map(|p| p.attr("name")).map(str::to_string).collect()
    }

    fn first_text(&self, section: &str, child: &str) -> Option<String> {
        let mut children = self.root.elements_named(section).flat_map(|s| s.elements_named(child));
        children.find_map(|e| non_empty(e.text()))
    }
}

fn non_empty(text: String) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn repository_distribution(repository: &Element) -> Option<String> {
    let path = repository.first("source")?.attr("path")?;
    match repository.attr("distribution") {
        Some(dist) if !dist.trim().is_empty() => Some(distribution_from_apt(path, dist)),
        _ => distribution_from_source(path),
    }
}

/// The distribution of an apt repository: KIWI's `distribution` attribute
/// on `<repository>` (the suite's codename, `bookworm`), lower case. The
/// mirror's path is not consulted: mirrors of one suite are named freely,
/// and two of them must not look like two distributions.
pub fn distribution_from_apt(_path: &str, distribution: &str) -> String {
    distribution.trim().to_lowercase()
}

/// Best-effort distribution of an rpm repository from its source path:
/// OBS projects (`obs://openSUSE:Leap:15.6/standard` is `opensuse-leap-15.6`)
/// and the usual mirror layouts (`.../leap/15.6/...`, `.../tumbleweed/...`,
/// `.../fedora/.../releases/40/...`). `None` when the path does not tell.
pub fn distribution_from_source(path: &str) -> Option<String> {
    let path = path.trim().to_lowercase();
    if let Some(rest) = path.strip_prefix("obs://") {
        return from_obs_project(rest.split('/').next().unwrap_or_default());
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    from_path_segments(&segments)
}

fn from_obs_project(project: &str) -> Option<String> {
    let parts: Vec<&str> = project.split(':').collect();
    match parts.as_slice() {
        ["opensuse", "leap", "micro", version, ..] if is_version(version) => {
            Some(format!("opensuse-leap-micro-{version}"))
        }
        ["opensuse", "leap", version, ..] if is_version(version) => Some(format!("opensuse-leap-{version}")),
        ["opensuse", "factory" | "tumbleweed", ..] => Some("opensuse-tumbleweed".to_string()),
        ["opensuse", "slowroll", ..] => Some("opensuse-slowroll".to_string()),
        ["suse", sle, ..] if sle.starts_with("sle-") => Some((*sle).to_string()),
        [vendor @ ("fedora" | "debian" | "ubuntu"), version, ..] if is_version(version) => {
            Some(format!("{vendor}-{version}"))
        }
        _ => None,
    }
}

fn from_path_segments(segments: &[&str]) -> Option<String> {
    for pair in segments.windows(2) {
        if matches!(pair[0], "leap" | "leap-micro") && is_version(pair[1]) {
            return Some(format!("opensuse-{}-{}", pair[0], pair[1]));
        }
    }
    for name in ["tumbleweed", "slowroll"] {
        if segments.contains(&name) {
            return Some(format!("opensuse-{name}"));
        }
    }
    let fedora = segments.iter().position(|s| *s == "fedora")?;
    let rest = &segments[fedora..];
    if rest.contains(&"rawhide") {
        return Some("fedora-rawhide".to_string());
    }
    rest.windows(2)
        .find(|pair| matches!(pair[0], "releases" | "updates") && is_version(pair[1]))
        .map(|pair| format!("fedora-{}", pair[1]))
}

fn is_version(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit()) && text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_from_source_paths() {
        let cases = [
            ("obs://openSUSE:Leap:15.6/standard", Some("opensuse-leap-15.6")),
            ("obs://openSUSE:Leap:15.6:Update/standard", Some("opensuse-leap-15.6")),
            ("obs://openSUSE:Factory/snapshot", Some("opensuse-tumbleweed")),
            ("obs://openSUSE:Tumbleweed/standard", Some("opensuse-tumbleweed")),
            ("obs://SUSE:SLE-15-SP6:GA/standard", Some("sle-15-sp6")),
            ("obs://Fedora:40/standard", Some("fedora-40")),
            ("obs://Debian:12/standard", Some("debian-12")),
            ("obs://home:someone/openSUSE_Tumbleweed", None),
            (
                "https://example.org/distribution/leap/15.6/repo/oss",
                Some("opensuse-leap-15.6"),
            ),
            ("https://example.org/update/leap/15.5/oss/", Some("opensuse-leap-15.5")),
            ("https://example.org/tumbleweed/repo/oss", Some("opensuse-tumbleweed")),
            ("https://example.org/slowroll/repo/oss", Some("opensuse-slowroll")),
            (
                "https://example.org/pub/fedora/linux/releases/40/Everything/x86_64/os/",
                Some("fedora-40"),
            ),
            (
                "https://example.org/fedora/releases/41/Everything/x86_64/os",
                Some("fedora-41"),
            ),
            (
                "https://example.org/fedora/linux/updates/40/Everything/x86_64/",
                Some("fedora-40"),
            ),
            (
                "https://example.org/fedora/linux/development/rawhide/Everything/",
                Some("fedora-rawhide"),
            ),
            (
                "https://example.org/fedora/linux/releases/$releasever/Everything/",
                None,
            ),
            ("https://example.org/releases/40/", None),
            ("dir:///srv/repo", None),
            ("obsrepositories:/", None),
            ("", None),
        ];
        for (path, expected) in cases {
            assert_eq!(distribution_from_source(path).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn distribution_from_apt_repositories() {
        let cases = [
            ("https://example.org/debian", "bookworm", "bookworm"),
            ("https://example.org/ubuntu/", "Noble", "noble"),
            ("https://example.org/mirror", "trixie", "trixie"),
        ];
        for (path, dist, expected) in cases {
            assert_eq!(distribution_from_apt(path, dist), expected, "{path}");
        }
    }

    const DESCRIPTION: &str = r#"<image schemaversion="8.5" name="leap-oem" displayname="Leap &amp; OEM">
  <description type="boot"><author>Boot Author</author></description>
  <description type="system">
    <author> Jane Doe </author>
  </description>
  <profiles><profile name="Disk" description="d"/><profile name="Live" description="l"/></profiles>
  <preferences profiles="Disk"><type image="oem"/></preferences>
  <preferences>
    <version></version>
    <packagemanager>zypper</packagemanager>
  </preferences>
  <preferences><version>1.2.3</version></preferences>
  <repository alias="local"><source path="dir:///srv/repo"/></repository>
  <repository><source path="obs://openSUSE:Leap:15.6/standard"/></repository>
</image>"#;

    #[test]
    fn facts_of_a_description() {
        let doc = Document::parse_str(DESCRIPTION, "t").unwrap();
        assert_eq!(doc.image_name(), Some("leap-oem"));
        assert_eq!(doc.displayname(), Some("Leap & OEM"));
        assert_eq!(doc.derived_from(), None);
        assert_eq!(doc.version().as_deref(), Some("1.2.3"));
        assert_eq!(doc.author().as_deref(), Some("Jane Doe"));
        assert_eq!(doc.package_manager().as_deref(), Some("zypper"));
        assert_eq!(doc.distribution().as_deref(), Some("opensuse-leap-15.6"));
        assert_eq!(doc.profile_names(), ["Disk", "Live"]);
    }

    #[test]
    fn facts_of_a_bare_description() {
        let doc = Document::parse_str("<image derived_from=\"oci:base\"/>", "t").unwrap();
        assert_eq!(doc.image_name(), None);
        assert_eq!(doc.derived_from(), Some("oci:base"));
        assert_eq!(
            (doc.version(), doc.author(), doc.package_manager(), doc.distribution()),
            (None, None, None, None)
        );
        assert!(doc.profile_names().is_empty());
    }

    #[test]
    fn apt_distribution_comes_from_the_repository_attribute() {
        let text = r#"<image name="d"><repository type="apt-deb" distribution="bookworm" components="main">
            <source path="https://example.org/debian"/></repository></image>"#;
        let doc = Document::parse_str(text, "t").unwrap();
        assert_eq!(doc.distribution().as_deref(), Some("bookworm"));
    }
}
