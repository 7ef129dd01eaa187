//! umoci: unpacks an image of an OCI layout into a root tree.

use std::ffi::OsString;
use std::path::Path;

use color_eyre::eyre::{Result, WrapErr};
use color_eyre::Section;

use super::{run, Output, Tool};

/// The argv of `umoci raw unpack --keep-dirlinks`: apply every layer of
/// `layout:image` over `rootfs`, keeping directory symlinks of lower layers
/// (usr-merge `/bin -> usr/bin`) instead of replacing them.
pub fn unpack_args(layout: &Path, image: &str, rootfs: &Path) -> Vec<OsString> {
    let mut image_arg = layout.as_os_str().to_os_string();
    image_arg.push(":");
    image_arg.push(image);
    vec![
        "raw".into(),
        "unpack".into(),
        "--keep-dirlinks".into(),
        "--image".into(),
        image_arg,
        rootfs.as_os_str().to_os_string(),
    ]
}

/// Unpacks `layout:image` into `rootfs`.
pub fn unpack(layout: &Path, image: &str, rootfs: &Path) -> Result<()> {
    run(Tool::Umoci, &unpack_args(layout, image, rootfs), Output::Capture)
        .wrap_err_with(|| format!("unpacking {image} into {}", rootfs.display()))
        .suggestion("check the free space where the root goes, and what umoci said below")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_keeps_dirlinks() {
        let args = unpack_args(Path::new("/s/layout"), "base:1", Path::new("/t/build/image-root"));
        let want: Vec<OsString> = [
            "raw",
            "unpack",
            "--keep-dirlinks",
            "--image",
            "/s/layout:base:1",
            "/t/build/image-root",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(args, want);
    }
}
