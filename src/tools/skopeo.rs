//! skopeo: copies images between transports.

use std::ffi::OsString;

use color_eyre::eyre::{Result, WrapErr};

use super::{run, Output, Tool};
use crate::reference::ImageReference;

/// The argv of `skopeo copy SRC DST`, keeping the layers as they are.
pub fn copy_args(src: &ImageReference, dst: &ImageReference) -> Vec<OsString> {
    vec!["copy".into(), "--quiet".into(), src.to_string().into(), dst.to_string().into()]
}

/// Copies `src` to `dst`.
pub fn copy(src: &ImageReference, dst: &ImageReference) -> Result<()> {
    run(Tool::Skopeo, &copy_args(src, dst), Output::Capture).wrap_err_with(|| format!("copying {src} to {dst}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_both_sides() {
        let src: ImageReference = "docker://example.org/base:1".parse().unwrap();
        let dst: ImageReference = "oci:/tmp/layout:base:1".parse().unwrap();
        let want: Vec<OsString> =
            ["copy", "--quiet", "docker://example.org/base:1", "oci:/tmp/layout:base:1"].iter().map(OsString::from).collect();
        assert_eq!(copy_args(&src, &dst), want);
    }
}
