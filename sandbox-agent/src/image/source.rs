//! Where an image's documents and layers come from: an OCI image layout (a directory, or a
//! tar archive of one, as `skopeo copy ... oci:` / `oci-archive:`, `buildah push` and `umoci`
//! write; newer `docker save` too) or the older `docker save` tarball (`manifest.json`).
//! Every document is checked against the digest that names it before it is believed.
use std::{
    collections::HashMap,
    fs,
    io::{self, Read, Seek as _},
    path::PathBuf,
};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::{Defaults, ImageError, digest::Sha256};

/// The documents (index, manifests, configs) are small; a larger one is not an image.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;
/// Indexes pointing at indexes: at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

/// How a layer's bytes are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Decided by the first bytes (`docker save` does not say).
    Sniff,
}

/// A layer as the manifest names it.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// Where its bytes are in the image (`blobs/sha256/<hex>`, or a `docker save` path).
    pub file: String,
    /// The digest of those bytes, when the manifest gives one (`docker save` does not).
    pub blob: Option<Sha256>,
    /// The digest of the uncompressed tar (the config's `rootfs.diff_ids`): the cache key.
    pub diff_id: Sha256,
    pub compression: Compression,
}

/// An image read and checked, its layers not yet unpacked.
pub struct Resolved {
    /// The manifest's digest (for `docker save`, the config's).
    pub digest: Sha256,
    pub defaults: Defaults,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
    pub files: Files,
}

/// The image's files: a directory, or the members of a tar archive found by name.
pub enum Files {
    Dir(PathBuf),
    Archive {
        file: fs::File,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Files {
    /// The member `name` and its size.
    pub fn open(&self, name: &str) -> io::Result<(Box<dyn Read + '_>, u64)> {
        match self {
            Self::Dir(dir) => {
                // Resolved inside the layout: a link in it cannot point the agent elsewhere;
                // non-blocking and checked: a FIFO there must not hang the agent.
                let file = fs::File::from(crate::view::open_in_root(
                    dir,
                    name,
                    libc::O_RDONLY | libc::O_NONBLOCK,
                )?);
                let meta = file.metadata()?;
                if !meta.is_file() {
                    return Err(io::Error::other("not a regular file"));
                }
                Ok((Box::new(file), meta.len()))
            }
            Self::Archive { file, members } => {
                let &(offset, size) = members
                    .get(name)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                let mut file = file.try_clone()?;
                file.seek(io::SeekFrom::Start(offset))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => crate::view::open_in_root(dir, name, libc::O_PATH).is_ok(),
            Self::Archive { members, .. } => members.contains_key(name),
        }
    }
}

/// Reads the image at `path`.
pub fn open(path: &str) -> Result<Resolved, ImageError> {
    let bad = |why: String| ImageError::bad(path, why);
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && looks_like_reference(path) => {
            return Err(ImageError::Registry(path.into()));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("no such file or directory".into()));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let files = if meta.is_dir() {
        Files::Dir(PathBuf::from(path))
    } else if meta.is_file() {
        archive(path)?
    } else {
        return Err(bad("neither a directory nor a file".into()));
    };
    if files.has("index.json") {
        oci(path, files)
    } else if files.has("manifest.json") {
        docker_save(path, files)
    } else {
        Err(bad(
            "not an OCI image layout or archive (no index.json) nor a docker save archive \
             (no manifest.json)"
                .into(),
        ))
    }
}

/// Whether a missing path reads like `debian:12`, `docker.io/library/debian` or
/// `docker://...`: the user meant a registry.
fn looks_like_reference(path: &str) -> bool {
    if path.contains("://") {
        return true;
    }
    if path.starts_with(['/', '.', '~']) {
        return false;
    }
    let first = path.split('/').next().unwrap_or_default();
    let registry_host = path.contains('/') && (first.contains('.') || first.contains(':'));
    let name_tag = path
        .rsplit_once(':')
        .is_some_and(|(name, tag)| !name.is_empty() && !tag.is_empty() && !tag.contains('/'));
    registry_host || name_tag || path.contains('@')
}

/// The members of a tar archive (regular files only), found without reading their data.
fn archive(path: &str) -> Result<Files, ImageError> {
    let bad = |why: String| ImageError::bad(path, why);
    let mut file = fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b] {
        return Err(bad(
            "a gzip-compressed file: give the tar archive itself (gunzip it first)".into(),
        ));
    }
    file.rewind().map_err(|e| bad(e.to_string()))?;
    let mut members = HashMap::new();
    let mut tar = tar::Archive::new(file.try_clone().map_err(|e| bad(e.to_string()))?);
    let entries = tar
        .entries_with_seek()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let raw = entry.path_bytes();
        let Some(parts) = crate::tarball::components(&raw) else {
            continue;
        };
        let Ok(name) = String::from_utf8(parts.join(&b'/')) else {
            continue;
        };
        members.insert(name, (entry.raw_file_position(), entry.size()));
    }
    if members.is_empty() {
        return Err(bad("not a tar archive (no files in it)".into()));
    }
    Ok(Files::Archive { file, members })
}

/// A small document, whole.
fn read_document(files: &Files, name: &str) -> io::Result<Vec<u8>> {
    let (reader, size) = files.open(name)?;
    if size > MAX_DOCUMENT_BYTES {
        return Err(io::Error::other(format!(
            "{size} bytes, more than a document of an image may have"
        )));
    }
    let mut data = Vec::new();
    reader.take(MAX_DOCUMENT_BYTES).read_to_end(&mut data)?;
    Ok(data)
}

/// A blob named by `descriptor`, checked against its digest.
fn read_blob(path: &str, files: &Files, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let digest = Sha256::of_descriptor(path, descriptor)?;
    let name = digest.blob_path();
    let data = read_document(files, &name)
        .map_err(|e| ImageError::bad(path, format!("{name}: {}", reason(&e))))?;
    let got = Sha256::of(&data);
    if got != digest {
        return Err(ImageError::bad(
            path,
            format!("{name} does not match its digest {digest} (its content is {got})"),
        ));
    }
    Ok(data)
}

fn reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        "missing from the image".into()
    } else {
        e.to_string()
    }
}

fn oci(path: &str, files: Files) -> Result<Resolved, ImageError> {
    let bad = |why: String| ImageError::bad(path, why);
    let index = read_document(&files, "index.json")
        .map_err(|e| bad(format!("index.json: {}", reason(&e))))?;
    let mut index = ImageIndex::from_reader(&index[..])
        .map_err(|e| bad(format!("index.json is not an OCI image index: {e}")))?;
    let mut depth = 0;
    let manifest = loop {
        let descriptor = pick_manifest(path, index.manifests())?;
        let data = read_blob(path, &files, &descriptor)?;
        if *descriptor.media_type() == MediaType::ImageIndex {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(bad("indexes nested too deep".into()));
            }
            index = ImageIndex::from_reader(&data[..])
                .map_err(|e| bad(format!("{}: not an image index: {e}", descriptor.digest())))?;
            continue;
        }
        let manifest = ImageManifest::from_reader(&data[..]).map_err(|e| {
            bad(format!(
                "{}: not an image manifest: {e}",
                descriptor.digest()
            ))
        })?;
        break (Sha256::of(&data), manifest);
    };
    let (digest, manifest) = manifest;
    match manifest.config().media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == "application/vnd.docker.container.image.v1+json" => {}
        other => {
            return Err(bad(format!(
                "the manifest's config has media type {other}, not an image configuration"
            )));
        }
    }
    let config = read_blob(path, &files, manifest.config())?;
    let config = parse_config(path, &config)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(format!(
            "the manifest has {} layers but the config names {}",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            let blob = Sha256::of_descriptor(path, layer)?;
            Ok(LayerRef {
                file: blob.blob_path(),
                compression: compression(path, &blob, layer.media_type())?,
                blob: Some(blob),
                diff_id: Sha256::parse(path, diff_id)?,
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Resolved {
        digest,
        defaults: Defaults::of(&config),
        layers,
        files,
    })
}

/// The one manifest of an index this host can run: linux on this architecture, or the only
/// one there is.
fn pick_manifest(path: &str, manifests: &[Descriptor]) -> Result<Descriptor, ImageError> {
    let arch = host_architecture();
    let runnable: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform().as_ref().is_none_or(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .collect();
    match runnable[..] {
        [one] => Ok(one.clone()),
        [] if manifests.is_empty() => Err(ImageError::bad(path, "the index lists no image".into())),
        [] => Err(ImageError::bad(
            path,
            format!("no image in it for linux/{arch}"),
        )),
        _ => {
            let names: Vec<String> = runnable
                .iter()
                .map(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
                        .unwrap_or_else(|| d.digest().to_string())
                })
                .collect();
            Err(ImageError::bad(
                path,
                format!(
                    "it holds {} images ({}); give a layout or archive with one",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
    }
}

/// The host's architecture as OCI names it.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn parse_config(path: &str, data: &[u8]) -> Result<ImageConfiguration, ImageError> {
    let config = ImageConfiguration::from_reader(data)
        .map_err(|e| ImageError::bad(path, format!("the image config is not valid: {e}")))?;
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" {
        return Err(ImageError::bad(
            path,
            format!("an image for {os}, not linux"),
        ));
    }
    if arch != host_architecture() {
        return Err(ImageError::bad(
            path,
            format!("an image for {arch}; this host is {}", host_architecture()),
        ));
    }
    Ok(config)
}

fn compression(path: &str, blob: &Sha256, media: &MediaType) -> Result<Compression, ImageError> {
    Ok(match media {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Compression::Gzip
        }
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            return Err(ImageError::bad(
                path,
                format!(
                    "layer {blob}: zstd-compressed layers are not supported; copy the image \
                     with gzip layers (skopeo copy --dest-compress-format gzip)"
                ),
            ));
        }
        other => {
            return Err(ImageError::bad(
                path,
                format!("layer {blob}: unknown media type {other}"),
            ));
        }
    })
}

/// `docker save`'s own format: `manifest.json` lists the config file and the layer tars,
/// whose digests are only in the config (`rootfs.diff_ids`, of the uncompressed tars).
fn docker_save(path: &str, files: Files) -> Result<Resolved, ImageError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let bad = |why: String| ImageError::bad(path, why);
    let data = read_document(&files, "manifest.json")
        .map_err(|e| bad(format!("manifest.json: {}", reason(&e))))?;
    let entries: Vec<Entry> = serde_json::from_slice(&data)
        .map_err(|e| bad(format!("manifest.json is not a docker save manifest: {e}")))?;
    let entry = match &entries[..] {
        [one] => one,
        [] => return Err(bad("manifest.json lists no image".into())),
        many => {
            let tags: Vec<String> = many
                .iter()
                .map(|e| e.repo_tags.clone().unwrap_or_default().join(" "))
                .collect();
            return Err(bad(format!(
                "it holds {} images ({}); save one at a time",
                many.len(),
                tags.join(", ")
            )));
        }
    };
    // The config is named by its digest: `<hex>.json` or `blobs/sha256/<hex>`.
    let name = &entry.config;
    let hex = name
        .strip_suffix(".json")
        .or_else(|| name.strip_prefix("blobs/sha256/"))
        .unwrap_or_default();
    let digest = Sha256::parse(path, &format!("sha256:{hex}"))
        .map_err(|_| bad(format!("config {name}: not named by its digest")))?;
    let config = read_document(&files, name).map_err(|e| bad(format!("{name}: {}", reason(&e))))?;
    if Sha256::of(&config) != digest {
        return Err(bad(format!(
            "config {name} does not match its digest {digest}"
        )));
    }
    let config = parse_config(path, &config)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(bad(format!(
            "manifest.json lists {} layers but the config names {}",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(file, diff_id)| {
            if crate::tarball::components(file.as_bytes()).is_none() {
                return Err(bad(format!("layer {file}: a path with \"..\"")));
            }
            Ok(LayerRef {
                file: file.clone(),
                blob: None,
                diff_id: Sha256::parse(path, diff_id)?,
                compression: Compression::Sniff,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Resolved {
        digest,
        defaults: Defaults::of(&config),
        layers,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::looks_like_reference;

    #[test]
    fn registry_references_are_told_from_paths() {
        for r in [
            "debian:12",
            "docker.io/library/debian:12",
            "ghcr.io/owner/image",
            "localhost:5000/x",
            "docker://debian",
            "debian@sha256:0123",
        ] {
            assert!(looks_like_reference(r), "{r}");
        }
        for p in [
            "./image",
            "/srv/image.tar",
            "image",
            "images/debian",
            "~/x:y",
        ] {
            assert!(!looks_like_reference(p), "{p}");
        }
    }
}
