//! Image references inside an Open Build Service build: `obs://` and
//! `obsrepositories:/` name images that OBS staged as archives under the
//! build's `SOURCES/containers/`, resolved the way KIWI resolves them.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use color_eyre::Section;

use crate::reference::ImageReference;

/// The file whose presence marks an OBS build environment.
pub const BUILDENV: &str = "/.buildenv";
/// Overrides [`BUILDENV`], for tests and build roots seen from outside.
pub const BUILDENV_ENV: &str = "KIWI_STACKBUILD_OBS_BUILDENV";
/// Where OBS stages a build's sources (KIWI's fixed path).
pub const SOURCES: &str = "/usr/src/packages/SOURCES";
/// Overrides [`SOURCES`], for tests and unusual build roots.
pub const SOURCES_ENV: &str = "KIWI_STACKBUILD_OBS_SOURCES";

/// Whether this is an OBS build (`/.buildenv`, or the sources override set).
pub fn in_obs_build() -> bool {
    buildenv().exists() || std::env::var_os(SOURCES_ENV).is_some()
}

fn buildenv() -> PathBuf {
    std::env::var_os(BUILDENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BUILDENV))
}

/// The build's disturl: `BUILD_DISTURL` from the environment, else from
/// [`BUILDENV`], where OBS writes it (the hook runs chrooted, and `su` may
/// not pass the environment on).
pub fn disturl() -> Option<String> {
    if let Some(url) = std::env::var("BUILD_DISTURL").ok().filter(|v| !v.is_empty()) {
        return Some(url);
    }
    let path = buildenv();
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("reading {}: {e}", path.display());
            return None;
        }
    };
    let url = buildenv_value(&text, "BUILD_DISTURL").filter(|v| !v.is_empty());
    if url.is_none() {
        log::warn!("no BUILD_DISTURL in {}", path.display());
    }
    url
}

/// The value `key` is given in `text`, shell assignments one a line
/// (`KEY='value'`, `export KEY="value"`) as OBS writes `/.buildenv`. The
/// text is parsed, never run: quotes and backslashes are undone as the shell
/// would, a `$` or backtick stays literal, and a line with an unclosed
/// quote counts as no value. The last assignment wins, as in the shell.
pub fn buildenv_value(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        if let Some(value) = shell_word(rest) {
            found = Some(value);
        }
    }
    found
}

/// The first shell word of `text`, unquoted; `None` if a quote is left open.
fn shell_word(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        '\n' => {}
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    c => out.push(c),
                }
            },
            '\\' => match chars.next() {
                Some(c) => out.push(c),
                None => break,
            },
            c if c.is_whitespace() || c == ';' => break,
            c => out.push(c),
        }
    }
    Some(out)
}

fn sources() -> PathBuf {
    std::env::var_os(SOURCES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOURCES))
}

/// The staged file an OBS reference names: `obs://PROJECT/REPO/NAME#TAG` is
/// `SOURCES/containers/PROJECT:REPO/NAME#TAG` (`:/` folded as KIWI does),
/// `obsrepositories:/NAME#TAG` is `SOURCES/containers/_obsrepositories/NAME#TAG`.
pub fn staged_path(reference: &ImageReference) -> Option<PathBuf> {
    let containers = sources().join("containers");
    match reference {
        ImageReference::Obs(path) => Some(containers.join(path.replace(":/", ":"))),
        ImageReference::ObsRepositories(name) => {
            Some(containers.join("_obsrepositories").join(name.replace(":/", ":")))
        }
        _ => None,
    }
}

/// What kind of archive `file` is: an OCI layout (`oci-layout` at the top)
/// or a `docker save` tar (`manifest.json`).
fn archive_kind(file: &Path) -> Result<&'static str> {
    let mut head = [0u8; 2];
    File::open(file)?.read_exact(&mut head).ok();
    if head == [0x1f, 0x8b] || file.extension().is_some_and(|e| e == "xz" || e == "gz" || e == "zst") {
        return Err(eyre!("{} is compressed", file.display()))
            .suggestion("stage the container image as an uncompressed tar");
    }
    let mut archive = tar::Archive::new(BufReader::new(File::open(file)?));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = crate::layer::clean_path(&entry.path_bytes());
        match path.as_slice() {
            b"oci-layout" => return Ok("oci-archive"),
            b"manifest.json" => return Ok("docker-archive"),
            _ => {}
        }
    }
    bail!("{} is neither an OCI archive nor a docker archive", file.display())
}

/// Resolves an OBS reference to the archive OBS staged for it; any other
/// reference is returned as it is.
pub fn resolve(reference: &ImageReference) -> Result<ImageReference> {
    let Some(path) = staged_path(reference) else {
        return Ok(reference.clone());
    };
    if !in_obs_build() {
        return Err(eyre!(
            "{reference} can only be used inside an OBS build ({BUILDENV} is missing)"
        ))
        .suggestion("outside OBS, pull the image from the OBS registry with docker://");
    }
    if !path.is_file() {
        return Err(eyre!("{reference}: OBS staged no image at {}", path.display()))
            .suggestion("check the image's name and the repositories of the OBS project");
    }
    let kind = archive_kind(&path).wrap_err_with(|| format!("reading {}", path.display()))?;
    let file = path.to_string_lossy().into_owned();
    let resolved = match kind {
        "oci-archive" => ImageReference::OciArchive { file, image: None },
        _ => ImageReference::DockerArchive { file, image: None },
    };
    log::info!("{reference} is {resolved}");
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_paths_follow_kiwi() {
        let sources = sources();
        let cases = [
            (
                "obs://SUSE:SLE-15-SP6:Update/images/sles15-image#15.6",
                "containers/SUSE:SLE-15-SP6:Update/images/sles15-image#15.6",
            ),
            (
                "obsrepositories:/opensuse/tumbleweed#latest",
                "containers/_obsrepositories/opensuse/tumbleweed#latest",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(staged_path(&r.parse().unwrap()), Some(sources.join(want)), "{r}");
        }
        assert_eq!(staged_path(&"oci:/x".parse().unwrap()), None);
    }

    #[test]
    fn buildenv_values_are_unquoted_as_the_shell_would() {
        let url = "obs://build.example/P:Q/images/0123-name";
        let cases = [
            (format!("BUILD_DISTURL='{url}'"), Some(url)),
            (format!("BUILD_DISTURL=\"{url}\""), Some(url)),
            (format!("BUILD_DISTURL={url}"), Some(url)),
            (format!("export BUILD_DISTURL='{url}'"), Some(url)),
            (format!("BUILD_DISTURL='{url}' # comment"), Some(url)),
            (format!("BUILD_DISTURL='{url}';"), Some(url)),
            ("BUILD_DISTURL='it'\\''s'".to_string(), Some("it's")),
            ("BUILD_DISTURL=\"a\\\"b\\$c\"".to_string(), Some("a\"b$c")),
            ("BUILD_DISTURL='$(reboot)'".to_string(), Some("$(reboot)")),
            ("BUILD_DISTURL=`reboot`".to_string(), Some("`reboot`")),
            ("BUILD_DISTURL=''".to_string(), Some("")),
            ("BUILD_DISTURL='open".to_string(), None),
            (format!("BUILD_DISTURLX='{url}'"), None),
            (format!("XBUILD_DISTURL='{url}'"), None),
            (format!("# BUILD_DISTURL='{url}'"), None),
        ];
        for (line, want) in cases {
            let text = format!("BUILD_ARCH='x86_64'\n{line}\nBUILD_DIST='x'\n");
            assert_eq!(buildenv_value(&text, "BUILD_DISTURL").as_deref(), want, "{line}");
        }
        let twice = "BUILD_DISTURL='a'\nBUILD_DISTURL='b'\n";
        assert_eq!(buildenv_value(twice, "BUILD_DISTURL").as_deref(), Some("b"));
    }
}
