//! The OCI image types we read and write. Descriptors, manifests, indexes
//! and media types are the `oci-spec` crate's, so every field a pulled
//! descriptor carries (urls, artifactType, platform, annotations) and a
//! manifest's subject pass through the store; our own types remain only
//! where the crate cannot say what we need: a sha256-only [`Digest`] that
//! names a blob file, and an [`ImageConfig`] that keeps the fields it does
//! not model. Everything we write is canonical JSON ([`canonical_json`]),
//! so digests are reproducible.

mod config;
pub mod layout;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use color_eyre::eyre::{eyre, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use config::{go_arch, rfc3339, History, ImageConfig, RootFs, RuntimeConfig};
pub use layout::{blob_path, read_blob, read_json};
pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, ANNOTATION_REF_NAME as REF_NAME};

/// A content digest, always `sha256:<64 hex>`: what names a blob file in
/// a layout and what we can verify. `oci_spec::image::Digest` admits any
/// algorithm, so descriptors carry that one and [`DescriptorExt::sha256`]
/// turns it into this.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(h: Sha256) -> Digest {
        let mut s = String::from("sha256:");
        for b in h.finalize() {
            let _ = write!(s, "{b:02x}");
        }
        Digest(s)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, for listings.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = s
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if ok {
            Ok(Digest(s))
        } else {
            Err(format!("unsupported digest {s:?} (only sha256 is supported)"))
        }
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> oci_spec::image::Digest {
        d.as_str().parse().expect("a sha256 digest is a valid OCI digest")
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(d: Digest) -> oci_spec::image::Digest {
        oci_spec::image::Digest::from(&d)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = String;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, String> {
        Digest::try_from(d.to_string())
    }
}

/// What we ask of a descriptor beyond the crate's getters.
pub trait DescriptorExt {
    /// Its digest as a sha256 [`Digest`], or an error naming it.
    fn sha256(&self) -> Result<Digest>;
    /// The annotation `key`, if set.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// The ref name it carries in an index (`name:tag`), if any.
    fn ref_name(&self) -> Option<&str> {
        self.annotation(REF_NAME)
    }
    /// Sets the annotation `key` to `value`.
    fn annotate(&mut self, key: &str, value: &str);
    /// Removes the annotation `key`; no annotations at all when it was the last.
    fn unannotate(&mut self, key: &str);
}

impl DescriptorExt for Descriptor {
    fn sha256(&self) -> Result<Digest> {
        Digest::try_from(self.digest()).map_err(|e| eyre!("{e}"))
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().as_ref()?.get(key).map(String::as_str)
    }

    fn annotate(&mut self, key: &str, value: &str) {
        let mut annotations = self.annotations().clone().unwrap_or_default();
        annotations.insert(key.to_string(), value.to_string());
        self.set_annotations(Some(annotations));
    }

    fn unannotate(&mut self, key: &str) {
        let Some(mut annotations) = self.annotations().clone() else {
            return;
        };
        annotations.remove(key);
        self.set_annotations((!annotations.is_empty()).then_some(annotations));
    }
}

/// The descriptor of `bytes` as a blob of `media_type`.
pub fn describe(bytes: &[u8], media_type: MediaType) -> Descriptor {
    Descriptor::new(media_type, bytes.len() as u64, Digest::of(bytes))
}

/// The descriptor [`canonical_json`] of `value` gets as a blob of `media_type`.
pub fn describe_json<T: Serialize>(value: &T, media_type: MediaType) -> Result<Descriptor> {
    Ok(describe(&canonical_json(value)?, media_type))
}

/// `value` as canonical JSON: object keys sorted, no white space, so that
/// the same value always gives the same bytes and digest. The crate's
/// annotation and label maps are `HashMap`s, whose order changes from run
/// to run; going through `serde_json::Value` sorts them, since its `Map` is
/// a `BTreeMap` (no crate here turns on serde_json's `preserve_order`, and
/// a test below fails if one does). That is all reproducibility needs, and
/// costs no crate: full OLPC canonical JSON (`olpc-cjson`) would also fix
/// number and escape spellings, which serde_json already writes one way.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

/// An OCI image manifest of `config` and `layers`, with `annotations` unless empty.
pub fn manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Result<ImageManifest> {
    let mut m = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(oci_spec::image::SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()?;
    if !annotations.is_empty() {
        m.set_annotations(Some(annotations.into_iter().collect()));
    }
    Ok(m)
}

/// An empty OCI image index.
pub fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index
}

/// How a layer blob is compressed, from its media type (OCI and Docker spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// `+gzip`, or Docker's `.tar.gzip`.
    Gzip,
    /// `+zstd`.
    Zstd,
    /// A plain tar.
    None,
}

impl LayerCompression {
    /// The compression a layer media type says; a media type that is no
    /// tar layer we know is an error that names it.
    pub fn of(media_type: &MediaType) -> Result<LayerCompression> {
        Ok(match media_type {
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => LayerCompression::Gzip,
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => LayerCompression::Zstd,
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => LayerCompression::None,
            MediaType::Other(s) if DOCKER_GZIP_LAYERS.contains(&s.as_str()) => LayerCompression::Gzip,
            other => {
                return Err(eyre!(
                    "a layer of media type {other} is no tar layer this tool can read"
                ))
            }
        })
    }
}

/// The media types of Docker's layers (schema 2), all gzip; the crate's
/// enum knows only OCI's.
const DOCKER_GZIP_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The uncompressed tar stream of a layer blob read from `source`.
pub fn decompress<'a, R: std::io::BufRead + 'a>(
    source: R,
    compression: LayerCompression,
) -> Result<Box<dyn std::io::Read + 'a>> {
    Ok(match compression {
        LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(source)),
        // libzstd reads every frame in turn and skips skippable ones (as
        // zstd:chunked writes them).
        LayerCompression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(source)
                .map_err(|e| color_eyre::eyre::eyre!("reading a zstd layer: {e}"))?,
        ),
        LayerCompression::None => Box::new(source),
    })
}

/// A reader that hashes what passes through it, to check a blob's digest.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: std::io::Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// The digest of everything read so far.
    pub fn digest(self) -> Digest {
        Digest::from_hasher(self.hash)
    }

    /// The digest and the number of bytes of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hash), self.count)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it, to name a blob.
pub struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and the size of what was written so far.
    pub fn written(&self) -> (Digest, u64) {
        (Digest::from_hasher(self.hash.clone()), self.count)
    }

    /// Flushes, and gives back the writer, the digest and the size of what was written.
    pub fn finish(mut self) -> std::io::Result<(W, Digest, u64)> {
        self.inner.flush()?;
        Ok((self.inner, Digest::from_hasher(self.hash), self.count))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked() {
        let d = Digest::of(b"");
        assert_eq!(
            d.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::try_from("sha256:abc".to_string()).is_err());
        assert!(Digest::try_from(format!("sha512:{}", d.hex())).is_err());
        assert!(Digest::try_from(d.to_string()).is_ok());
    }

    #[test]
    fn index_round_trips_unknown_fields_and_annotations() {
        let json = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"annotations":{"org.opencontainers.image.ref.name":"a:b"}}]}"#;
        let idx: ImageIndex = serde_json::from_str(json).unwrap();
        assert_eq!(idx.manifests()[0].ref_name(), Some("a:b"));
        let back = serde_json::to_string(&idx).unwrap();
        assert_eq!(back, json);
    }

    #[test]
    fn descriptors_keep_every_field() {
        let json = r#"{"annotations":{"a":"1"},"artifactType":"application/vnd.example+json","data":"e30=","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"arm64","os":"linux","variant":"v8"},"size":1,"urls":["https://example.org/b"]}"#;
        let d: Descriptor = serde_json::from_str(json).unwrap();
        assert_eq!(String::from_utf8(canonical_json(&d).unwrap()).unwrap(), json);
    }

    #[test]
    fn canonical_json_does_not_depend_on_insertion_order() {
        let keys = ["org.example.z", "io.osinside.kiwi.meta", "a", "org.example.m", "b"];
        let config = |order: &[usize]| {
            let mut c = ImageConfig::default();
            let labels = order.iter().map(|&i| (keys[i].to_string(), format!("v{i}"))).collect();
            c.config.labels = Some(labels);
            canonical_json(&c).unwrap()
        };
        let want = config(&[0, 1, 2, 3, 4]);
        for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            assert_eq!(config(&order), want, "labels inserted in order {order:?}");
        }
        // The crate's maps are HashMaps: each gets its own hash seed, so
        // only sorting gives the same bytes.
        let manifest = |order: &[usize]| {
            let config = describe(b"{}", MediaType::ImageConfig);
            let mut m = manifest(config, Vec::new(), BTreeMap::new()).unwrap();
            let annotations: std::collections::HashMap<String, String> =
                order.iter().map(|&i| (keys[i].to_string(), format!("v{i}"))).collect();
            m.set_annotations(Some(annotations));
            canonical_json(&m).unwrap()
        };
        let want = manifest(&[0, 1, 2, 3, 4]);
        for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            assert_eq!(manifest(&order), want, "annotations inserted in order {order:?}");
        }
        let text = String::from_utf8(want).unwrap();
        let at = |k: &str| text.find(k).unwrap();
        assert!(
            at("\"a\"") < at("\"b\"") && at("\"b\"") < at("io.osinside") && at("org.example.m") < at("org.example.z")
        );
        assert!(at("\"config\"") < at("\"mediaType\"") && at("\"mediaType\"") < at("\"schemaVersion\""));
    }

    #[test]
    fn layer_compression_comes_from_the_media_type() {
        let cases = [
            (MediaType::ImageLayerGzip, Some(LayerCompression::Gzip)),
            (MediaType::ImageLayerZstd, Some(LayerCompression::Zstd)),
            (MediaType::ImageLayer, Some(LayerCompression::None)),
            (MediaType::ImageLayerNonDistributableGzip, Some(LayerCompression::Gzip)),
            (
                MediaType::from("application/vnd.docker.image.rootfs.diff.tar.gzip"),
                Some(LayerCompression::Gzip),
            ),
            (MediaType::ImageConfig, None),
            (MediaType::from("application/x-ends-in-gzip"), None),
        ];
        for (media_type, want) in cases {
            assert_eq!(LayerCompression::of(&media_type).ok(), want, "{media_type}");
        }
    }
}
