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
/// Where OBS stages a build's sources (KIWI's fixed path).
pub const SOURCES: &str = "/usr/src/packages/SOURCES";
/// Overrides [`SOURCES`], for tests and unusual build roots.
pub const SOURCES_ENV: &str = "KIWI_STACKBUILD_OBS_SOURCES";

/// Whether this is an OBS build (`/.buildenv`, or the sources override set).
pub fn in_obs_build() -> bool {
    Path::new(BUILDENV).exists() || std::env::var_os(SOURCES_ENV).is_some()
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
}
