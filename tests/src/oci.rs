//! OCI image layouts written by the tests themselves: tar layers entry by entry (`../`
//! names, absolute links and whiteouts included, which `tar` itself would refuse to write)
//! and the index, manifest and config JSON, each blob named by its digest.
use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::Digest as _;

/// One entry of a layer.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    /// A directory owned by this uid and gid (the others are root's).
    OwnedDir(&'a str, u32, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A layer: its tar, its diff id (digest of the tar) and how it is stored.
pub struct Layer {
    pub tar: Vec<u8>,
    pub gzip: bool,
    /// Written as this media type instead of the one `gzip` implies.
    pub media_type: Option<String>,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

/// A tar of `entries`, owned by root, names written as given (no checks).
pub fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        let (name, data, link): (&str, &[u8], Option<&str>) = match entry {
            Entry::OwnedDir(name, mode, owner) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid(u64::from(*owner));
                header.set_gid(u64::from(*owner));
                (name, &[], None)
            }
            Entry::Dir(name, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                (name, &[], None)
            }
            Entry::File(name, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                (name, data, None)
            }
            Entry::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                (name, &[], Some(target))
            }
            Entry::Hardlink(name, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                (name, &[], Some(target))
            }
        };
        // Raw bytes: `set_path` refuses `..`, which a hostile layer has.
        let raw = header.as_old_mut();
        raw.name = [0; 100];
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(target) = link {
            raw.linkname = [0; 100];
            raw.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A layer of busybox (from busybox-static) with its applets as links, some absolute.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", &busybox, 0o755),
    ];
    let applets = [
        "sh", "cat", "ls", "id", "echo", "touch", "test", "pwd", "env", "sleep", "stat", "wc",
        "head", "md5sum", "mkdir", "find", "readlink",
    ];
    let names: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    for (i, name) in names.iter().enumerate() {
        // Every other one absolute: it must resolve inside the image.
        entries.push(Entry::Symlink(
            name,
            if i % 2 == 0 {
                "busybox"
            } else {
                "/bin/busybox"
            },
        ));
    }
    layer_tar(&entries)
}

/// Writes an OCI image layout at `dir`: `layers` bottom first, `config` the image config's
/// `config` object. Returns the manifest's digest.
pub fn write_layout(dir: &Path, layers: &[Layer], config: &serde_json::Value) -> String {
    let _ = fs::remove_dir_all(dir);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("blobs dir");
    let put = |data: &[u8]| -> (String, usize) {
        let digest = sha256(data);
        fs::write(blobs.join(&digest[7..]), data).expect("blob");
        (digest, data.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(sha256(&layer.tar));
        let data = if layer.gzip {
            gzip(&layer.tar)
        } else {
            layer.tar.clone()
        };
        let (digest, size) = put(&data);
        let media = layer.media_type.clone().unwrap_or_else(|| {
            if layer.gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip".into()
            } else {
                "application/vnd.oci.image.layer.v1.tar".into()
            }
        });
        descriptors.push(serde_json::json!({"mediaType": media, "digest": digest, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size}],
    });
    fs::write(dir.join("index.json"), index.to_string()).expect("index");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    manifest_digest
}

/// The path of a layout's blob.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(&digest[7..])
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}
