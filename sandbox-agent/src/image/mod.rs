//! OCI images as a sandbox's root (`--image PATH`): an image layout directory or archive on
//! this host (never a registry pull), its documents and layers checked against their
//! digests, each layer unpacked once into a content-addressed cache ([`Store`]) and the
//! layers stacked read-only by overlayfs below the sandbox's private writable layer (the
//! view's root-directory plan). The image config's `Env`, `WorkingDir`, `Entrypoint`, `Cmd`
//! and `User` are defaults that a run's flags override ([`Defaults`]).
mod cache;
mod digest;
mod source;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cache::{Hold, ImageEntry, LayerEntry, Listing, Pruned, Store, human_bytes};
pub use digest::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {path}: {why}")]
    Bad { path: String, why: String },
    #[error(
        "image \"{0}\" is not a file or directory here and looks like a registry reference: \
         sandbox-agent does not pull images; copy it to an OCI archive first (e.g. skopeo copy \
         docker://IMAGE oci-archive:image.tar) and give that path"
    )]
    Registry(String),
    #[error("image cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    View(#[from] crate::view::ViewError),
}

impl ImageError {
    fn bad(path: &str, why: String) -> Self {
        Self::Bad {
            path: path.into(),
            why,
        }
    }

    /// Whether the image given is at fault (else the agent's cache).
    pub fn is_request(&self) -> bool {
        !matches!(self, Self::Cache { .. })
    }
}

/// An image ready to stack.
pub struct Image {
    /// The manifest's digest (for a `docker save` archive, the config's).
    pub digest: Sha256,
    /// The unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub defaults: Defaults,
    /// Keeps the layers in the cache until the sandbox is bound to them.
    pub hold: Hold,
}

/// Opens the image at `path`: reads and checks it, unpacks the layers the cache lacks
/// (`progress` hears about each), records it.
pub fn open(store: &Store, path: &str, progress: &dyn Fn(&str)) -> Result<Image, ImageError> {
    let resolved = source::open(path)?;
    store.materialize(path, resolved, progress)
}

/// An image opened as a new sandbox's root.
pub struct Rooted {
    pub root: crate::view::RootDir,
    pub digest: Sha256,
    pub defaults: Defaults,
    pub hold: Hold,
}

/// [`open`], then its layers stacked as a root assembled at `staging`.
pub fn open_root(
    store: &Store,
    path: &str,
    staging: PathBuf,
    progress: &dyn Fn(&str),
) -> Result<Rooted, ImageError> {
    let image = open(store, path, progress)?;
    let mut root = crate::view::check_layers(path, image.layers, staging)?;
    // A non-root User's files are the sandbox's own (root's otherwise).
    root.owner = image
        .defaults
        .owner(&root)
        .map_err(|why| ImageError::bad(path, why))?;
    Ok(Rooted {
        root,
        digest: image.digest,
        defaults: image.defaults,
        hold: image.hold,
    })
}

/// Progress for a person at a terminal: each line on stderr when it is one, else nothing.
pub fn terminal_progress(line: &str) {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        eprintln!("sandbox-agent: {line}");
    }
}

/// What an image's config says a container runs, as defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defaults {
    /// `K=V`, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
}

impl Defaults {
    fn of(config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        Self {
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|d| !d.is_empty()),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            user: c.user().clone().filter(|u| !u.is_empty()),
        }
    }

    /// The command as `docker run` makes it: an entrypoint given replaces the image's and
    /// its `Cmd`; arguments given replace `Cmd`.
    pub fn command(&self, entrypoint: Option<&[String]>, args: &[String]) -> Vec<String> {
        let (mut command, default_args) = match entrypoint {
            Some(e) => (e.to_vec(), Vec::new()),
            None => (self.entrypoint.clone(), self.cmd.clone()),
        };
        command.extend(if args.is_empty() {
            default_args
        } else {
            args.to_vec()
        });
        command
    }

    /// `Env` as pairs (`K` alone: an empty value).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// The uid and gid `User` names in the image (numbers, or names in its `/etc/passwd` and
    /// `/etc/group`); `(0, 0)` for root.
    pub fn owner(&self, root: &crate::view::RootDir) -> Result<(u32, u32), String> {
        let Some(spec) = self.user.as_deref().filter(|_| !self.runs_as_root()) else {
            return Ok((0, 0));
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = String::from_utf8_lossy(&root.read("etc/passwd")).into_owned();
        let entry = crate::user::find_in_passwd(&passwd, Some(user), None);
        let uid = match user.parse() {
            Ok(n) => n,
            Err(_) => entry
                .as_ref()
                .map(|e| e.uid)
                .ok_or_else(|| format!("User \"{spec}\": no user \"{user}\" in its /etc/passwd"))?,
        };
        let gid = match group {
            Some(g) => match g.parse() {
                Ok(n) => n,
                Err(_) => crate::user::gid_in_group_file(
                    &String::from_utf8_lossy(&root.read("etc/group")),
                    g,
                )
                .ok_or_else(|| format!("User \"{spec}\": no group \"{g}\" in its /etc/group"))?,
            },
            None => entry.map_or(uid, |e| e.gid),
        };
        Ok((uid, gid))
    }

    /// Whether the image runs as root (`User` unset, `root` or `0`): the sandbox then runs as
    /// root of its own user namespace (as `--root`), mapped to its own uid.
    pub fn runs_as_root(&self) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| matches!(u.split(':').next(), Some("" | "root" | "0")))
    }
}

#[cfg(test)]
mod tests {
    use super::Defaults;

    fn defaults() -> Defaults {
        Defaults {
            env: vec!["PATH=/bin".into(), "EMPTY".into()],
            working_dir: Some("/app".into()),
            entrypoint: vec!["/bin/tini".into(), "--".into()],
            cmd: vec!["serve".into()],
            user: Some("1000:1000".into()),
        }
    }

    #[test]
    fn flags_override_the_image_as_docker_run_does() {
        let d = defaults();
        assert_eq!(d.command(None, &[]), ["/bin/tini", "--", "serve"]);
        assert_eq!(d.command(None, &["sh".into()]), ["/bin/tini", "--", "sh"]);
        assert_eq!(d.command(Some(&["/bin/sh".into()]), &[]), ["/bin/sh"]);
        assert_eq!(
            d.env_pairs(),
            [
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert!(!d.runs_as_root());
        assert!(Defaults::default().runs_as_root());
        assert!(
            Defaults {
                user: Some("root:0".into()),
                ..Defaults::default()
            }
            .runs_as_root()
        );
    }
}
