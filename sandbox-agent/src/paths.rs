//! Every runtime path the agent uses, in one place.
use std::path::PathBuf;

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Name of the agent's directory in bpffs and of the parent cgroup of all sandboxes.
pub const NAME: &str = "sandbox-agent";

#[derive(Clone, Debug)]
pub struct Paths {
    /// Pinned maps and links: `/sys/fs/bpf/sandbox-agent`.
    pub pin_dir: PathBuf,
    /// Locks of live sandboxes and of the program install: `/run/sandbox-agent`.
    pub run_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(BPFFS).join(NAME),
            run_dir: PathBuf::from("/run").join(NAME),
        }
    }
}

impl Paths {
    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir.join("maps")
    }
    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }
    pub fn install_lock(&self) -> PathBuf {
        self.run_dir.join("install.lock")
    }
    /// An empty directory on which sandboxes with a root directory assemble their view.
    pub fn root_staging(&self) -> PathBuf {
        self.run_dir.join("root")
    }
    pub fn sandbox_locks(&self) -> PathBuf {
        self.run_dir.join("sandboxes")
    }
    /// The lock a live sandbox (or a sandbox whose kernel state may remain) holds: its id
    /// is its cgroup's name.
    pub fn sandbox_lock(&self, id: &str) -> PathBuf {
        self.sandbox_locks().join(format!("{id}.lock"))
    }
}
