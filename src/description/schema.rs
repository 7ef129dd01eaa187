//! What we need to know of KIWI's schema (kiwi/schema/kiwi.rnc, KIWI 11.1).
//!
//! The schema combines the children of `<image>` and of `<preferences>` with
//! `&` (interleave), so KIWI accepts any order; we still keep the order in
//! which the schema lists them (the order KIWI itself writes
//! `/image/config.xml` in) so merged descriptions read as KIWI users expect.

/// Children of `<image>` in schema order.
pub(crate) const IMAGE_CHILDREN: &[&str] = &[
    "include",
    "certificates",
    "description",
    "preferences",
    "profiles",
    "users",
    "drivers",
    "strip",
    "repository",
    "containers",
    "packages",
    "extension",
];

/// Children of `<preferences>` in schema order.
pub(crate) const PREFERENCES_CHILDREN: &[&str] = &[
    "bootsplash-theme",
    "bootloader-theme",
    "keytable",
    "locale",
    "packagemanager",
    "release-version",
    "rpm-locale-filtering",
    "rpm-check-signatures",
    "rpm-excludedocs",
    "showlicense",
    "timezone",
    "type",
    "version",
];

/// Every element name the KIWI schema defines (content of `<extension>`
/// belongs to other schemas and is not checked).
pub(crate) const KNOWN_ELEMENTS: &[&str] = &[
    "archive",
    "argument",
    "author",
    "bootloader",
    "bootloader-theme",
    "bootloadersettings",
    "bootsplash-theme",
    "certificate",
    "certificates",
    "collectionModule",
    "configoption",
    "contact",
    "container",
    "containerconfig",
    "containers",
    "description",
    "dracut",
    "drivers",
    "entrypoint",
    "env",
    "environment",
    "expose",
    "extension",
    "file",
    "history",
    "ignore",
    "image",
    "include",
    "initrd",
    "installmedia",
    "installoption",
    "keytable",
    "label",
    "labels",
    "license",
    "locale",
    "luksformat",
    "machine",
    "namedCollection",
    "oem-boot-title",
    "oem-bootwait",
    "oem-device-filter",
    "oem-inplace-recovery",
    "oem-kiwi-initrd",
    "oem-multipath-scan",
    "oem-nic-filter",
    "oem-partition-install",
    "oem-ramdisk-size",
    "oem-reboot",
    "oem-reboot-interactive",
    "oem-recovery",
    "oem-recovery-part-size",
    "oem-recoveryID",
    "oem-resize",
    "oem-resize-once",
    "oem-shutdown",
    "oem-shutdown-interactive",
    "oem-silent-boot",
    "oem-silent-install",
    "oem-silent-verify",
    "oem-skip-verify",
    "oem-swap",
    "oem-swapname",
    "oem-swapsize",
    "oem-systemsize",
    "oem-unattended",
    "oem-unattended-id",
    "oem-vmcp-parmfile",
    "oemconfig",
    "option",
    "package",
    "packagemanager",
    "packages",
    "partition",
    "partitions",
    "port",
    "preferences",
    "product",
    "profile",
    "profiles",
    "release-version",
    "repository",
    "requires",
    "rpm-check-signatures",
    "rpm-excludedocs",
    "rpm-locale-filtering",
    "securelinux",
    "shimoption",
    "showlicense",
    "signing",
    "size",
    "source",
    "specification",
    "stopsignal",
    "strip",
    "subcommand",
    "systemdisk",
    "timezone",
    "type",
    "user",
    "users",
    "vagrantconfig",
    "version",
    "vmconfig-entry",
    "vmdisk",
    "vmdvd",
    "vmnic",
    "volume",
    "volumes",
];

/// Child elements the schema requires, by element.
pub(crate) const REQUIRED_CHILDREN: &[(&str, &[&str])] = &[
    ("certificates", &["certificate"]),
    ("containers", &["container"]),
    ("description", &["author", "contact", "specification"]),
    ("drivers", &["file"]),
    ("profiles", &["profile"]),
    ("repository", &["source"]),
    ("strip", &["file"]),
    ("users", &["user"]),
];

/// Attributes the schema requires, by element; `<image>` is checked apart
/// because a derived description needs `derived_from` on it as well.
pub(crate) const REQUIRED_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("archive", &["name"]),
    ("certificate", &["name"]),
    ("collectionModule", &["name", "enable"]),
    ("container", &["name"]),
    ("description", &["type"]),
    ("file", &["name"]),
    ("ignore", &["name"]),
    ("include", &["from"]),
    ("namedCollection", &["name"]),
    ("package", &["name"]),
    ("packages", &["type"]),
    ("product", &["name"]),
    ("profile", &["name", "description"]),
    ("requires", &["profile"]),
    ("source", &["path"]),
    ("strip", &["type"]),
    ("type", &["image"]),
    ("user", &["name", "password"]),
];

/// The rank of `name` in `order`; names not listed sort last.
pub(crate) fn rank(order: &[&str], name: &str) -> usize {
    order.iter().position(|n| *n == name).unwrap_or(order.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_known_elements_only() {
        for name in IMAGE_CHILDREN.iter().chain(PREFERENCES_CHILDREN) {
            assert!(KNOWN_ELEMENTS.contains(name), "{name}");
        }
        for (name, _) in REQUIRED_ATTRIBUTES {
            assert!(KNOWN_ELEMENTS.contains(name), "{name}");
        }
        for (name, children) in REQUIRED_CHILDREN {
            for element in children.iter().chain([name]) {
                assert!(KNOWN_ELEMENTS.contains(element), "{element}");
            }
        }
        let mut sorted = KNOWN_ELEMENTS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KNOWN_ELEMENTS.len());
    }

    #[test]
    fn rank_follows_schema_order() {
        let cases = [("include", 0), ("description", 2), ("packages", 10), ("unknown", 12)];
        for (name, expected) in cases {
            assert_eq!(rank(IMAGE_CHILDREN, name), expected, "{name}");
        }
    }
}
