//! Image references: `transport:rest` as skopeo spells them, plus bare
//! `name[:tag]` for a stash in the local store.
//!
//! Parsing and printing are inverses: `r.to_string().parse() == Ok(r)` and
//! printing a parsed string gives back that string.

use std::fmt;
use std::str::FromStr;

use color_eyre::eyre::{bail, eyre, Result};
use color_eyre::Section;

/// The tag a stash gets when none is given (as KIWI's own stash does).
pub const DEFAULT_TAG: &str = "latest";

/// A repository name that follows the OCI distribution rules: lower-case
/// components of `[a-z0-9]` joined by `.`, `_`, `__` or dashes, separated by `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StashName(String);

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

/// A stash in the local store: `name` with an optional `:tag`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StashRef {
    /// The repository name.
    pub name: StashName,
    /// The tag, when one was written.
    pub tag: Option<Tag>,
}

/// Where an image lives, in skopeo's transport syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReference {
    /// A bare `name[:tag]`: a stash in the local store.
    Stash(StashRef),
    /// `docker://host[:port]/repo[:tag|@digest]`: a registry.
    Docker(String),
    /// `oci:DIR[:ref]`: an OCI image layout directory.
    Oci { dir: String, image: Option<String> },
    /// `oci-archive:FILE[:ref]`: a tar of an OCI image layout.
    OciArchive { file: String, image: Option<String> },
    /// `docker-archive:FILE[:ref]`: a `docker save` tar.
    DockerArchive { file: String, image: Option<String> },
    /// `containers-storage:[...]name[:tag]`: podman's local storage.
    ContainersStorage(String),
    /// `dir:DIR`: skopeo's directory format.
    Dir(String),
    /// `obs://PROJECT/REPOSITORY/NAME[#TAG]`: an image of an OBS project,
    /// staged into the build's sources in an OBS build.
    Obs(String),
    /// `obsrepositories:/NAME[#TAG]`: an image from the repositories of the
    /// OBS build itself.
    ObsRepositories(String),
}

impl StashName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A valid name close to `raw`: lower case, other characters turned into
    /// dashes, separators not doubled or at the ends.
    pub fn suggest(raw: &str) -> String {
        let mut out = String::new();
        for c in raw.trim().chars().flat_map(char::to_lowercase) {
            let c = if c.is_ascii_alphanumeric() || c == '/' { c } else { '-' };
            let last = out.chars().last();
            let separator = |c: char| c == '-' || c == '/';
            if separator(c) && (last.is_none() || last.is_some_and(separator)) {
                continue;
            }
            out.push(c);
        }
        while out.ends_with(['-', '/']) {
            out.pop();
        }
        if out.is_empty() {
            "image".to_string()
        } else {
            out
        }
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any number of '-', between alnums.
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for StashName {
    type Err = color_eyre::Report;

    fn from_str(s: &str) -> Result<Self> {
        let valid = !s.is_empty() && s.len() <= 255 && s.split('/').all(valid_component);
        if valid {
            return Ok(StashName(s.to_string()));
        }
        // The suggestion is part of the message: clap shows only the message
        // of a value that fails to parse.
        let suggestion = StashName::suggest(s);
        Err(eyre!("invalid image name {s:?}, use {suggestion:?}: names are lower case letters, digits and single separators (. _ -)")
            .suggestion(format!("use {suggestion:?}")))
    }
}

impl fmt::Display for StashName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Tag {
    /// The tag as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The default tag, `latest`.
    pub fn latest() -> Tag {
        Tag(DEFAULT_TAG.to_string())
    }

    /// The valid tag nearest to `s`: other characters as `-`, no leading
    /// `.` or `-`, at most 128 characters; `latest` when nothing is left.
    pub fn suggest(s: &str) -> String {
        let tag: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let tag = tag.trim_start_matches(['.', '-']);
        match tag {
            "" => DEFAULT_TAG.to_string(),
            _ => tag[..tag.len().min(128)].to_string(),
        }
    }
}

impl FromStr for Tag {
    type Err = color_eyre::Report;

    fn from_str(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let word = |x: &u8| x.is_ascii_alphanumeric() || *x == b'_';
        let valid =
            !b.is_empty() && b.len() <= 128 && word(&b[0]) && b.iter().all(|x| word(x) || *x == b'.' || *x == b'-');
        if !valid {
            let suggestion = Tag::suggest(s);
            return Err(
                eyre!("invalid tag {s:?}, use {suggestion:?}: tags are letters, digits, _ . - (at most 128)")
                    .suggestion(format!("use {suggestion:?}")),
            );
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StashRef {
    /// The tag, or `latest` when none was written.
    pub fn tag_or_latest(&self) -> Tag {
        self.tag.clone().unwrap_or_else(Tag::latest)
    }

    /// `name:tag` with the default tag filled in: the key in the store.
    pub fn key(&self) -> String {
        format!("{}:{}", self.name, self.tag_or_latest())
    }
}

impl FromStr for StashRef {
    type Err = color_eyre::Report;

    fn from_str(s: &str) -> Result<Self> {
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.parse::<Tag>()?)),
            _ => (s, None),
        };
        Ok(StashRef {
            name: name.parse()?,
            tag,
        })
    }
}

impl fmt::Display for StashRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{}", self.name, t),
            None => write!(f, "{}", self.name),
        }
    }
}

impl StashRef {
    /// `docker://URI/name:tag`: this stash in the registry `--from-registry`
    /// names (`HOST[:PORT][/NAMESPACE]`).
    pub fn in_registry(&self, uri: &str) -> Result<ImageReference> {
        let uri = uri.trim_start_matches("docker://").trim_end_matches('/');
        format!("docker://{uri}/{}", self.key()).parse()
    }
}

impl ImageReference {
    /// The stash name a pulled image gets when none is given: the
    /// reference's last path component and tag.
    pub fn default_stash_name(&self) -> Result<StashRef> {
        let image = match self {
            ImageReference::Docker(rest) => Some(DockerRef::split(rest).image()),
            ImageReference::Oci { image, .. }
            | ImageReference::OciArchive { image, .. }
            | ImageReference::DockerArchive { image, .. } => image.clone(),
            ImageReference::ContainersStorage(rest) => rest.rsplit(['/', ']']).next().map(str::to_string),
            _ => None,
        };
        let hint = "give the stash a name: pull REF NAME[:TAG]";
        match image {
            Some(i) => i
                .parse()
                .map_err(|e: color_eyre::Report| e.wrap_err(format!("naming the stash after {self}")).suggestion(hint)),
            None => Err(eyre!("{self} names no image")).suggestion(hint),
        }
    }
}

fn split_image(rest: &str) -> (String, Option<String>) {
    match rest.split_once(':') {
        Some((path, image)) => (path.to_string(), Some(image.to_string())),
        None => (rest.to_string(), None),
    }
}

/// The parts of a registry reference, `[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]`
/// (what follows `docker://`), split as the containers tools split them: the
/// first component is a host when it has a `.` or `:` or is `localhost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DockerRef<'a> {
    /// The registry host and port, when one is named.
    pub host: Option<&'a str>,
    /// The repository path below the host.
    pub repository: &'a str,
    /// The tag, when one is named.
    pub tag: Option<&'a str>,
    /// The digest, when one is named.
    pub digest: Option<&'a str>,
}

impl<'a> DockerRef<'a> {
    /// Splits `rest` (what follows `docker://`); nothing is checked.
    pub fn split(rest: &'a str) -> DockerRef<'a> {
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        let (path, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name, None),
        };
        let (host, repository) = match path.split_once('/') {
            Some((first, repo)) if looks_like_host(first) => (Some(first), repo),
            _ => (None, path),
        };
        DockerRef {
            host,
            repository,
            tag,
            digest,
        }
    }

    /// The registry host: the one named, else `docker.io`.
    pub fn registry(&self) -> &'a str {
        self.host.unwrap_or("docker.io")
    }

    /// The last component of the repository and the tag, `NAME[:TAG]`: what
    /// a stash made from it is called.
    pub fn image(&self) -> String {
        let name = self.repository.rsplit('/').next().unwrap_or(self.repository);
        match self.tag {
            Some(t) => format!("{name}:{t}"),
            None => name.to_string(),
        }
    }
}

/// The reference `raw` (written without a transport) most likely means:
/// `oci:DIR` for a directory holding an OCI image layout, `oci-archive:FILE`
/// for a file or a path ending in `.tar`, `docker://HOST[:PORT]/PATH` when
/// its first component is a registry host; `None` when it looks like none.
pub fn transport_hint(raw: &str) -> Option<String> {
    let path = std::path::Path::new(raw);
    if path.join("oci-layout").is_file() {
        return Some(format!("oci:{raw}"));
    }
    if path.is_file() || raw.ends_with(".tar") {
        return Some(format!("oci-archive:{raw}"));
    }
    match raw.split_once('/') {
        Some((first, rest)) if !first.starts_with('.') && looks_like_host(first) && !rest.is_empty() => {
            Some(format!("docker://{raw}"))
        }
        _ => None,
    }
}

fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

fn check_docker(rest: &str) -> Result<()> {
    let Some(name) = rest.strip_prefix("//") else {
        bail!("invalid reference docker:{rest}: a registry reference starts with docker://");
    };
    let parts = DockerRef::split(name);
    if let Some(d) = parts.digest {
        if !(d.starts_with("sha256:") && d.len() == 71) {
            bail!("invalid digest {d:?} in docker://{name}");
        }
    }
    if let Some(t) = parts.tag {
        t.parse::<Tag>()?;
    }
    if parts.host == Some("") {
        bail!("invalid reference docker://{name}: no registry host");
    }
    // `docker://HOST` alone names no repository.
    if parts.repository.is_empty() || (parts.host.is_none() && looks_like_host(parts.repository)) {
        bail!("invalid reference docker://{name}: no repository after the registry host");
    }
    parts.repository.parse::<StashName>()?;
    Ok(())
}

impl FromStr for ImageReference {
    type Err = color_eyre::Report;

    fn from_str(s: &str) -> Result<Self> {
        let Some((transport, rest)) = s.split_once(':').filter(|(t, _)| is_transport(t)) else {
            if let Some((scheme, _)) = s.split_once("://") {
                return Err(eyre!("invalid reference {s:?}: {scheme}:// is no transport we know")).suggestion(
                    "write docker://, oci:, oci-archive:, docker-archive:, containers-storage:, dir:, \
                     obs:// or obsrepositories:, or a stash NAME[:TAG]",
                );
            }
            return match (s.parse::<StashRef>(), transport_hint(s)) {
                (Ok(stash), _) => Ok(ImageReference::Stash(stash)),
                (Err(_), Some(hint)) => Err(eyre!(
                    "invalid reference {s:?}, did you mean {hint}? (only a stash NAME[:TAG] goes without a transport)"
                ))
                .suggestion(format!("write {hint}")),
                (Err(e), None) => Err(e),
            };
        };
        let need = |what: &str| -> Result<()> {
            if rest.is_empty() {
                bail!("invalid reference {s:?}: {transport}: needs {what}");
            }
            Ok(())
        };
        Ok(match transport {
            "docker" => {
                check_docker(rest)?;
                ImageReference::Docker(rest.trim_start_matches('/').to_string())
            }
            "oci" => {
                need("a directory")?;
                let (dir, image) = split_image(rest);
                ImageReference::Oci { dir, image }
            }
            "oci-archive" => {
                need("a file")?;
                let (file, image) = split_image(rest);
                ImageReference::OciArchive { file, image }
            }
            "docker-archive" => {
                need("a file")?;
                let (file, image) = split_image(rest);
                ImageReference::DockerArchive { file, image }
            }
            "containers-storage" => {
                need("an image name")?;
                ImageReference::ContainersStorage(rest.to_string())
            }
            "dir" => {
                need("a directory")?;
                ImageReference::Dir(rest.to_string())
            }
            "obs" => match rest.strip_prefix("//").filter(|r| !r.is_empty()) {
                Some(path) => ImageReference::Obs(path.to_string()),
                None => bail!("invalid reference {s:?}: write obs://PROJECT/REPOSITORY/NAME"),
            },
            "obsrepositories" => {
                match rest
                    .strip_prefix('/')
                    .map(|r| r.trim_start_matches('/'))
                    .filter(|r| !r.is_empty())
                {
                    Some(name) => ImageReference::ObsRepositories(name.to_string()),
                    None => bail!("invalid reference {s:?}: write obsrepositories:/NAME"),
                }
            }
            _ => unreachable!("is_transport lists every transport"),
        })
    }
}

fn is_transport(t: &str) -> bool {
    matches!(
        t,
        "docker" | "oci" | "oci-archive" | "docker-archive" | "containers-storage" | "dir" | "obs" | "obsrepositories"
    )
}

fn with_image(f: &mut fmt::Formatter<'_>, transport: &str, path: &str, image: &Option<String>) -> fmt::Result {
    match image {
        Some(i) => write!(f, "{transport}:{path}:{i}"),
        None => write!(f, "{transport}:{path}"),
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageReference::Stash(r) => write!(f, "{r}"),
            ImageReference::Docker(rest) => write!(f, "docker://{rest}"),
            ImageReference::Oci { dir, image } => with_image(f, "oci", dir, image),
            ImageReference::OciArchive { file, image } => with_image(f, "oci-archive", file, image),
            ImageReference::DockerArchive { file, image } => with_image(f, "docker-archive", file, image),
            ImageReference::ContainersStorage(rest) => write!(f, "containers-storage:{rest}"),
            ImageReference::Dir(path) => write!(f, "dir:{path}"),
            ImageReference::Obs(path) => write!(f, "obs://{path}"),
            ImageReference::ObsRepositories(name) => write!(f, "obsrepositories:/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_references_print_back_the_same() {
        let valid = [
            "hello",
            "hello:1.0",
            "kiwi/debian-base:1.15.2",
            "a__b.c-d---e:Tag_1",
            "docker://registry.example.org/kiwi/base:latest",
            "docker://localhost:5000/base",
            "docker://127.0.0.1:5000/ns/base:1",
            "docker://debian:bookworm",
            "docker://example.org/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "oci:/var/tmp/layout",
            "oci:/var/tmp/layout:base:1.0",
            "oci-archive:/tmp/base.tar",
            "oci-archive:/tmp/base.tar:base:latest",
            "docker-archive:/tmp/img.tar",
            "containers-storage:localhost/base:1",
            "containers-storage:[overlay@/var/lib/containers/storage]base",
            "dir:/tmp/img",
            "obs://SUSE:SLE-15-SP6:Update/images/sles15-image#15.6",
            "obsrepositories:/opensuse/tumbleweed#latest",
        ];
        for s in valid {
            let r: ImageReference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<ImageReference>().unwrap(), r);
        }
    }

    #[test]
    fn invalid_references_are_refused() {
        let invalid = [
            "",
            "Hello",
            "hello world",
            "-hello",
            "hello-",
            "a..b",
            "a___b",
            "hello:",
            "hello:-x",
            "hello:a b",
            "docker:example.org/x",
            "docker://",
            "docker://example.org/",
            "docker://example.org/Upper",
            "docker://example.org/x@sha256:12",
            "docker://example.org",
            "ftp://host/x",
            "docker://localhost:5000",
            "docker://localhost",
            "oci:",
            "oci-archive:",
            "dir:",
            "obs:SUSE:x/y",
            "obs://",
            "obsrepositories:",
        ];
        for s in invalid {
            assert!(s.parse::<ImageReference>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn stash_references_split_name_and_tag() {
        let r: ImageReference = "kiwi/base:2".parse().unwrap();
        let ImageReference::Stash(s) = r else {
            panic!("not a stash")
        };
        assert_eq!(s.name.as_str(), "kiwi/base");
        assert_eq!(s.tag.as_ref().map(Tag::as_str), Some("2"));
        assert_eq!("base".parse::<StashRef>().unwrap().key(), "base:latest");
    }

    #[test]
    fn registry_references_split_as_the_containers_tools_split_them() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let with_digest = format!("example.org/ns/x:1@{digest}");
        let cases = [
            (
                "localhost:5000/ns/base:1",
                Some("localhost:5000"),
                "ns/base",
                Some("1"),
                None,
            ),
            ("debian:bookworm", None, "debian", Some("bookworm"), None),
            ("library/debian", None, "library/debian", None, None),
            (
                with_digest.as_str(),
                Some("example.org"),
                "ns/x",
                Some("1"),
                Some(digest),
            ),
        ];
        for (rest, host, repository, tag, digest) in cases {
            let want = DockerRef {
                host,
                repository,
                tag,
                digest,
            };
            assert_eq!(DockerRef::split(rest), want, "{rest}");
        }
        assert_eq!(DockerRef::split("debian:12").registry(), "docker.io");
        assert_eq!(DockerRef::split("h.example:1/a/b:2").image(), "b:2");
    }

    #[test]
    fn pulled_images_are_named_after_their_last_component() {
        let cases = [
            ("docker://localhost:5000/ns/base:1", "base:1"),
            ("docker://example.org/x", "x"),
            (
                "docker://example.org/ns/x:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "x:1",
            ),
            ("oci-archive:/tmp/a.tar:obs-base:15.6", "obs-base:15.6"),
            ("containers-storage:localhost/x:1", "x:1"),
        ];
        for (r, want) in cases {
            let r: ImageReference = r.parse().unwrap();
            assert_eq!(r.default_stash_name().unwrap().to_string(), want);
        }
        assert!("oci-archive:/tmp/a.tar"
            .parse::<ImageReference>()
            .unwrap()
            .default_stash_name()
            .is_err());
        let s: StashRef = "base:2".parse().unwrap();
        assert_eq!(
            s.in_registry("127.0.0.1:5000/ns/").unwrap().to_string(),
            "docker://127.0.0.1:5000/ns/base:2"
        );
    }

    #[test]
    fn references_without_a_transport_suggest_the_one_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        let file = dir.path().join("archive");
        std::fs::write(&file, "").unwrap();
        let (layout, file) = (layout.to_str().unwrap(), file.to_str().unwrap());
        let cases = [
            (
                "127.0.0.1:55075/kiwi/debian-base",
                Some("docker://127.0.0.1:55075/kiwi/debian-base".to_string()),
            ),
            ("localhost/x:1", Some("docker://localhost/x:1".to_string())),
            (
                "registry.example.org/ns/x",
                Some("docker://registry.example.org/ns/x".to_string()),
            ),
            ("/srv/out/x.tar", Some("oci-archive:/srv/out/x.tar".to_string())),
            (file, Some(format!("oci-archive:{file}"))),
            (layout, Some(format!("oci:{layout}"))),
            ("./a.b/c", None),
            ("kiwi/base", None),
            ("base:1", None),
        ];
        for (raw, want) in cases {
            assert_eq!(transport_hint(raw), want, "{raw}");
        }
        let err = "127.0.0.1:55075/kiwi/debian-base"
            .parse::<ImageReference>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("did you mean docker://127.0.0.1:55075/kiwi/debian-base?"),
            "{err}"
        );
        let err = "/srv/out/x.tar".parse::<ImageReference>().unwrap_err();
        assert!(
            err.to_string().contains("did you mean oci-archive:/srv/out/x.tar?"),
            "{err}"
        );
    }

    #[test]
    fn bad_names_suggest_valid_ones() {
        let cases = [
            ("Hello World", "hello-world"),
            ("My_Image", "my-image"),
            ("--x--", "x"),
            ("openSUSE-Leap-15.6", "opensuse-leap-15-6"),
            ("!!!", "image"),
        ];
        for (bad, good) in cases {
            assert_eq!(StashName::suggest(bad), good);
            assert!(good.parse::<StashName>().is_ok(), "{good}");
        }
        let err = "Hello".parse::<StashName>().unwrap_err().to_string();
        assert!(err.contains("use \"hello\""), "{err}");
    }
}
