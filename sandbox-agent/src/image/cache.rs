//! The layer cache under the state directory: each layer unpacked once, named by the digest
//! of its uncompressed tar, shared read-only by every sandbox whose image has it.
//!
//! ```text
//! images/layers/<hex>/tree        the unpacked layer (an overlayfs lower layer)
//! images/layers/<hex>/info.json   its size and what the unpack skipped
//! images/records/<hex>.json       an image seen: where from, its layers and defaults
//! images/in-use/<sandbox>         the cgroup of a sandbox and the layers it stacks
//! images/tmp/                     unpacks under way (renamed into layers/ when whole)
//! images/lock                     shared by starts, exclusive by prune
//! ```
//!
//! A layer is unpacked into `tmp/` and renamed into place only once its digests match, so a
//! failed or interrupted unpack leaves nothing in `layers/`. A start holds the lock shared
//! from the moment it finds its layers until its sandbox's cgroup has a process (the
//! `in-use` file then keeps the layers while that cgroup is populated): prune, which takes
//! it exclusive, never removes a layer a sandbox is about to stack or stacks.
use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    Defaults, Image, ImageError,
    digest::{Hashing, Sha256},
    source::{Compression, LayerRef, Resolved},
};

/// The image cache of one state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// A layer in the cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerInfo {
    diff_id: String,
    blob: Option<String>,
    summary: crate::tarball::Summary,
}

/// An image once opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    digest: String,
    source: String,
    /// Layer hex digests, bottom first.
    layers: Vec<String>,
    defaults: Defaults,
}

/// The cache's images and layers (`sandbox-agent images`).
#[derive(Debug, Serialize)]
pub struct Listing {
    pub images: Vec<ImageEntry>,
    pub layers: Vec<LayerEntry>,
}

#[derive(Debug, Serialize)]
pub struct ImageEntry {
    pub digest: String,
    pub source: String,
    pub layers: usize,
    /// Bytes of its layers' files (shared layers counted in each image).
    pub bytes: u64,
    /// Whether all its layers are in the cache.
    pub complete: bool,
}

#[derive(Debug, Serialize)]
pub struct LayerEntry {
    pub diff_id: String,
    pub bytes: u64,
    pub entries: u64,
    pub skipped_devices: u64,
    /// Live sandboxes stacking it.
    pub in_use: usize,
}

/// What `images prune` removed.
#[derive(Debug, Default, Serialize)]
pub struct Pruned {
    pub layers: usize,
    pub bytes: u64,
    pub images: usize,
    /// Layers kept because a live sandbox stacks them.
    pub kept: usize,
}

/// Keeps the layers of a starting sandbox from `images prune` until its cgroup has a
/// process ([`Hold::bind_cgroup`] first, then drop it after the spawn).
pub struct Hold {
    _lock: fs::File,
    in_use: PathBuf,
    layers: Vec<String>,
}

impl Hold {
    /// Records that the sandbox in `cgroup` stacks these layers: kept while it has processes.
    pub fn bind_cgroup(&self, cgroup: &Path) -> io::Result<()> {
        let name = cgroup
            .file_name()
            .ok_or_else(|| io::Error::other("a cgroup path without a name"))?;
        let mut text = cgroup.to_string_lossy().into_owned();
        for layer in &self.layers {
            text.push('\n');
            text.push_str(layer);
        }
        fs::write(self.in_use.join(name), text)
    }
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("images"),
        }
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn prepare(&self) -> Result<(), ImageError> {
        // overlayfs options are separated by ',' and its lower layers by ':'.
        if self.dir.to_string_lossy().contains([',', ':', '\\']) {
            return Err(ImageError::Cache {
                path: self.dir.clone(),
                source: io::Error::other("a path with ',', ':' or '\\' cannot hold overlay layers"),
            });
        }
        for sub in ["layers", "records", "in-use", "tmp"] {
            let dir = self.sub(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(cache_io(&dir))?;
        }
        Ok(())
    }

    fn lock(&self, exclusive: bool) -> Result<fs::File, ImageError> {
        let path = self.sub("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(cache_io(&path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(cache_io(&path)(io::Error::last_os_error()));
        }
        Ok(file)
    }

    fn layer_dir(&self, hex: &str) -> PathBuf {
        self.sub("layers").join(hex)
    }

    /// Every layer of `resolved` in the cache (unpacked now if missing), the image recorded.
    pub(super) fn materialize(
        &self,
        source: &str,
        resolved: Resolved,
        progress: &dyn Fn(&str),
    ) -> Result<Image, ImageError> {
        self.prepare()?;
        let lock = self.lock(false)?;
        let count = resolved.layers.len();
        let mut trees = Vec::with_capacity(count);
        for (i, layer) in resolved.layers.iter().enumerate() {
            let dir = self.layer_dir(layer.diff_id.hex());
            if !dir.join("info.json").is_file() {
                self.unpack(source, &resolved, layer, (i + 1, count), progress)?;
            }
            trees.push(dir.join("tree"));
        }
        let layers: Vec<String> = resolved
            .layers
            .iter()
            .map(|l| l.diff_id.hex().to_owned())
            .collect();
        let record = Record {
            digest: resolved.digest.to_string(),
            source: fs::canonicalize(source)
                .map_or_else(|_| source.to_owned(), |p| p.to_string_lossy().into_owned()),
            layers: layers.clone(),
            defaults: resolved.defaults.clone(),
        };
        let path = self
            .sub("records")
            .join(format!("{}.json", resolved.digest.hex()));
        // Written when new or changed: a cached start reads it, no more.
        let known = fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice::<Record>(&d).ok());
        if known.as_ref() != Some(&record) {
            write_json(&path, &record).map_err(cache_io(&path))?;
        }
        Ok(Image {
            digest: resolved.digest,
            layers: trees,
            defaults: resolved.defaults,
            hold: Hold {
                _lock: lock,
                in_use: self.sub("in-use"),
                layers,
            },
        })
    }

    /// Unpacks one layer into `tmp/`, checks its digests, renames it into `layers/`.
    fn unpack(
        &self,
        source: &str,
        resolved: &Resolved,
        layer: &LayerRef,
        (number, count): (usize, usize),
        progress: &dyn Fn(&str),
    ) -> Result<(), ImageError> {
        let (reader, size) = resolved.files.open(&layer.file).map_err(|e| {
            ImageError::bad(
                source,
                format!(
                    "layer {}: {}",
                    layer.file,
                    if e.kind() == io::ErrorKind::NotFound {
                        "missing from the image".into()
                    } else {
                        e.to_string()
                    }
                ),
            )
        })?;
        progress(&format!(
            "unpacking layer {number}/{count} {} ({})",
            layer.diff_id.short(),
            human_bytes(size)
        ));
        let tmp = self.sub("tmp").join(format!(
            "{}.{}.{}",
            layer.diff_id.hex(),
            std::process::id(),
            unique()
        ));
        let tree = tmp.join("tree");
        let made = fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .and_then(|()| fs::DirBuilder::new().mode(0o755).create(&tree));
        made.map_err(cache_io(&tmp))?;
        let result = unpack_checked(source, layer, reader, &tree);
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let info = LayerInfo {
            diff_id: layer.diff_id.to_string(),
            blob: layer.blob.as_ref().map(ToString::to_string),
            summary,
        };
        let info_path = tmp.join("info.json");
        if let Err(e) = write_json(&info_path, &info) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(cache_io(&info_path)(e));
        }
        let dest = self.layer_dir(layer.diff_id.hex());
        if fs::rename(&tmp, &dest).is_err() {
            // Another start unpacked it meanwhile (or a broken leftover is in the way: it
            // goes, and ours takes its place).
            if dest.join("info.json").is_file() {
                let _ = fs::remove_dir_all(&tmp);
            } else {
                let _ = fs::remove_dir_all(&dest);
                fs::rename(&tmp, &dest).map_err(cache_io(&dest))?;
            }
        }
        let skipped = if summary.skipped_devices > 0 {
            format!(
                ", {} device nodes not made (a sandbox has its own /dev)",
                summary.skipped_devices
            )
        } else {
            String::new()
        };
        progress(&format!(
            "unpacked layer {number}/{count} {}: {} entries, {}{skipped}",
            layer.diff_id.short(),
            summary.entries,
            human_bytes(summary.bytes)
        ));
        Ok(())
    }

    /// The cache's images and layers, with the live sandboxes stacking each layer.
    pub fn list(&self) -> Result<Listing, ImageError> {
        let _lock = self.exists().then(|| self.lock(false)).transpose()?;
        let users = self.live_users(false)?;
        let mut layers = Vec::new();
        for (hex, info) in self.layers() {
            layers.push(LayerEntry {
                diff_id: format!("sha256:{hex}"),
                bytes: info.as_ref().map_or(0, |i| i.summary.bytes),
                entries: info.as_ref().map_or(0, |i| i.summary.entries),
                skipped_devices: info.as_ref().map_or(0, |i| i.summary.skipped_devices),
                in_use: users.iter().filter(|u| u.contains(&hex)).count(),
            });
        }
        let mut images = Vec::new();
        for record in self.records() {
            let sizes: Vec<Option<u64>> = record
                .layers
                .iter()
                .map(|h| {
                    layers
                        .iter()
                        .find(|l| l.diff_id.ends_with(h.as_str()))
                        .map(|l| l.bytes)
                })
                .collect();
            images.push(ImageEntry {
                digest: record.digest,
                source: record.source,
                layers: record.layers.len(),
                bytes: sizes.iter().flatten().sum(),
                complete: sizes.iter().all(Option::is_some),
            });
        }
        Ok(Listing { images, layers })
    }

    /// Removes every layer no live sandbox stacks, the records of images left incomplete,
    /// leftovers of interrupted unpacks and the in-use files of sandboxes that are gone.
    pub fn prune(&self) -> Result<Pruned, ImageError> {
        let mut pruned = Pruned::default();
        if !self.exists() {
            return Ok(pruned);
        }
        self.prepare()?;
        let _lock = self.lock(true)?;
        let users = self.live_users(true)?;
        let tmp = self.sub("tmp");
        // With the lock held exclusive no unpack is under way: all of tmp/ is leftovers.
        for entry in fs::read_dir(&tmp).map_err(cache_io(&tmp))?.flatten() {
            let path = entry.path();
            let gone = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            gone.map_err(cache_io(&path))?;
        }
        for (hex, info) in self.layers() {
            if users.iter().any(|u| u.contains(&hex)) {
                pruned.kept += 1;
                continue;
            }
            // Renamed first: a half-removed layer is never in `layers/`.
            let doomed = tmp.join(format!("{hex}.pruned.{}.{}", std::process::id(), unique()));
            let dir = self.layer_dir(&hex);
            fs::rename(&dir, &doomed).map_err(cache_io(&dir))?;
            fs::remove_dir_all(&doomed).map_err(cache_io(&doomed))?;
            pruned.layers += 1;
            pruned.bytes += info.map_or(0, |i| i.summary.bytes);
        }
        for record in self.records() {
            if record
                .layers
                .iter()
                .any(|h| !self.layer_dir(h).join("info.json").is_file())
            {
                let hex = record.digest.trim_start_matches("sha256:");
                let _ = fs::remove_file(self.sub("records").join(format!("{hex}.json")));
                pruned.images += 1;
            }
        }
        Ok(pruned)
    }

    fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// The layers of the live sandboxes, one list each; with `forget`, in-use files of
    /// sandboxes whose cgroup has no process left are removed. What cannot be read fails
    /// the call: a layer is never taken for unused because of an error.
    fn live_users(&self, forget: bool) -> Result<Vec<Vec<String>>, ImageError> {
        let dir = self.sub("in-use");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(cache_io(&dir)(e)),
        };
        let mut users = Vec::new();
        for entry in entries {
            let path = entry.map_err(cache_io(&dir))?.path();
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(cache_io(&path)(e)),
            };
            let mut lines = text.lines();
            let cgroup = lines.next().unwrap_or_default();
            // Gone only when its cgroup says so (or is gone); any other error keeps it.
            let live = !cgroup.is_empty()
                && crate::cgroup::populated(Path::new(cgroup))
                    .unwrap_or_else(|e| e.kind() != io::ErrorKind::NotFound);
            if live {
                users.push(lines.map(str::to_owned).collect());
            } else if forget {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(users)
    }

    /// `(hex, info)` of every layer in the cache.
    fn layers(&self) -> Vec<(String, Option<LayerInfo>)> {
        let mut out: Vec<_> = fs::read_dir(self.sub("layers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Sha256::from_hex(&name)?;
                let info = fs::read(e.path().join("info.json"))
                    .ok()
                    .and_then(|d| serde_json::from_slice(&d).ok());
                Some((name, info))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = fs::read_dir(self.sub("records"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }
}

/// Decompresses, unpacks and checks one layer; the digests are compared once all of it has
/// been read.
fn unpack_checked(
    source: &str,
    layer: &LayerRef,
    reader: Box<dyn io::Read + '_>,
    tree: &Path,
) -> Result<crate::tarball::Summary, ImageError> {
    use io::BufRead as _;
    let label = layer
        .blob
        .as_ref()
        .map_or_else(|| layer.file.clone(), ToString::to_string);
    let bad = |why: String| ImageError::bad(source, format!("layer {label}: {why}"));
    let root = fs::File::open(tree).map_err(|e| bad(e.to_string()))?;
    let mut outer = Hashing::new(io::BufReader::with_capacity(256 << 10, reader));
    let unpacked: Result<(crate::tarball::Summary, Sha256), ImageError> = (|| {
        let mut buffered = io::BufReader::new(&mut outer);
        let gzip = match layer.compression {
            Compression::None => false,
            Compression::Gzip => true,
            Compression::Sniff => buffered
                .fill_buf()
                .map_err(|e| bad(e.to_string()))?
                .starts_with(&[0x1f, 0x8b]),
        };
        let plain: Box<dyn io::Read> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let mut inner = Hashing::new(plain);
        let rules = crate::tarball::Rules {
            layer: true,
            max_bytes: u64::MAX,
            mode_mask: 0o7777,
        };
        let summary = crate::tarball::unpack(&mut inner, std::os::fd::AsFd::as_fd(&root), &rules)
            .map_err(|e| bad(e.to_string()))?;
        let (diff_id, _) = inner.finish().map_err(|e| bad(e.to_string()))?;
        Ok((summary, diff_id))
    })();
    // The blob's own digest first, whatever went wrong: altered bytes are the likelier cause
    // of a bad stream, and the one to name.
    let (blob, _) = outer.finish().map_err(|e| bad(e.to_string()))?;
    if let Some(expected) = &layer.blob
        && *expected != blob
    {
        return Err(bad(format!(
            "its content does not match its digest (it is {blob})"
        )));
    }
    let (summary, diff_id) = unpacked?;
    if diff_id != layer.diff_id {
        return Err(bad(format!(
            "uncompressed, it does not match the config's diff_id {} (it is {diff_id})",
            layer.diff_id
        )));
    }
    Ok(summary)
}

fn cache_io(path: &Path) -> impl Fn(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Cache {
        path: path.clone(),
        source,
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    // Unique: two starts may record the same image at once.
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), unique()));
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(io::Error::other)?,
    )?;
    fs::rename(&tmp, path)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `12.3 MB`.
#[expect(clippy::cast_precision_loss, reason = "a size shown to a person")]
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}
