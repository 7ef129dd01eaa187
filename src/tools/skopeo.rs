//! skopeo: copies images between transports and reads registry manifests.

use std::ffi::OsString;

use color_eyre::eyre::{Result, WrapErr};

use super::{run_explained, Output, Tool};
use crate::reference::ImageReference;
use crate::registry::{explain_skopeo, RegistryAuth};

/// How a copy writes its destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Keep the layers as they are.
    #[default]
    Keep,
    /// Keep every blob and digest exactly (`--preserve-digests`): the
    /// destination gets these very blobs, never a copy it holds in another
    /// compression.
    Exact,
}

/// The argv of `skopeo copy SRC DST`, with registry options for each side.
pub fn copy_args(
    src: &ImageReference,
    dst: &ImageReference,
    auth: &RegistryAuth,
    compression: Compression,
) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = vec!["copy".into(), "--quiet".into()];
    out.extend(auth.args("src-", src)?);
    out.extend(auth.args("dest-", dst)?);
    match compression {
        Compression::Keep => {}
        Compression::Exact => out.push("--preserve-digests".into()),
    }
    out.extend([src.to_string().into(), dst.to_string().into()]);
    Ok(out)
}

/// Copies `src` to `dst`.
pub fn copy(src: &ImageReference, dst: &ImageReference, auth: &RegistryAuth, compression: Compression) -> Result<()> {
    run_explained(
        Tool::Skopeo,
        &copy_args(src, dst, auth, compression)?,
        Output::Capture,
        explain_skopeo,
    )
    .wrap_err_with(|| format!("copying {src} to {dst}"))?;
    Ok(())
}

/// The argv of `skopeo inspect --raw REF`.
pub fn inspect_raw_args(reference: &ImageReference, auth: &RegistryAuth) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = vec!["inspect".into(), "--raw".into()];
    out.extend(auth.args("", reference)?);
    out.push(reference.to_string().into());
    Ok(out)
}

/// The argv of `skopeo inspect --config REF`.
pub fn inspect_config_args(reference: &ImageReference, auth: &RegistryAuth) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = vec!["inspect".into(), "--config".into()];
    out.extend(auth.args("", reference)?);
    out.push(reference.to_string().into());
    Ok(out)
}

/// The image config of `reference`, as JSON.
pub fn inspect_config(reference: &ImageReference, auth: &RegistryAuth) -> Result<Vec<u8>> {
    run_explained(
        Tool::Skopeo,
        &inspect_config_args(reference, auth)?,
        Output::Capture,
        explain_skopeo,
    )
    .wrap_err_with(|| format!("reading the image config of {reference}"))
}

/// The raw manifest of `reference`, as the registry serves it.
pub fn inspect_raw(reference: &ImageReference, auth: &RegistryAuth) -> Result<Vec<u8>> {
    run_explained(
        Tool::Skopeo,
        &inspect_raw_args(reference, auth)?,
        Output::Capture,
        explain_skopeo,
    )
    .wrap_err_with(|| format!("reading the manifest of {reference}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::args;

    #[test]
    fn copy_names_both_sides_with_their_options() {
        let src: ImageReference = "oci:/store:base:1".parse().unwrap();
        let dst: ImageReference = "docker://localhost:5000/ns/base:1".parse().unwrap();
        let mut auth = RegistryAuth::anonymous();
        auth.authfile = Some("/run/auth.json".into());
        auth.tls_verify = false;
        let want = args([
            "copy",
            "--quiet",
            "--dest-authfile",
            "/run/auth.json",
            "--dest-tls-verify=false",
            "--preserve-digests",
            "oci:/store:base:1",
            "docker://localhost:5000/ns/base:1",
        ]);
        assert_eq!(copy_args(&src, &dst, &auth, Compression::Exact).unwrap(), want);
        let plain = args([
            "copy",
            "--quiet",
            "oci:/store:base:1",
            "docker://localhost:5000/ns/base:1",
        ]);
        assert_eq!(
            copy_args(&src, &dst, &RegistryAuth::anonymous(), Compression::Keep).unwrap(),
            plain
        );
    }

    #[test]
    fn inspect_uses_unprefixed_options() {
        let r: ImageReference = "docker://localhost:5000/a:1".parse().unwrap();
        let mut auth = RegistryAuth::anonymous();
        auth.cert_dir = Some("/certs".into());
        assert_eq!(
            inspect_raw_args(&r, &auth).unwrap(),
            args([
                "inspect",
                "--raw",
                "--cert-dir",
                "/certs",
                "docker://localhost:5000/a:1"
            ])
        );
    }
}
