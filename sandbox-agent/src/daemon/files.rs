//! Files into and out of a live sandbox through the API (`cp`): the sandbox's own view and
//! user, whatever its network policy (`crate::files` does the resolving).
use super::{Daemon, Sandbox, error::Result};
use crate::files::SandboxFs;

/// The running sandbox's file system, as its workload's user.
fn sandbox_fs(sandbox: &Sandbox) -> Result<SandboxFs> {
    sandbox.check_running()?;
    let view = sandbox.view();
    // Its own uid (gid alike), or the explicit user's ids.
    let gid = if view.user == crate::identity::SANDBOX_USER || view.root {
        view.uid
    } else {
        crate::user::resolve(Some(&view.user)).map_or(view.uid, |u| u.gid)
    };
    Ok(SandboxFs::open(view.pid, view.uid, gid)?)
}

impl Daemon {
    /// Writes `data` at `path` in the sandbox.
    pub fn write_file(&self, sandbox: &Sandbox, path: &str, data: &[u8]) -> Result<()> {
        sandbox_fs(sandbox)?.write(path, data)?;
        sandbox.touch();
        Ok(())
    }

    /// Unpacks the tar `data` as the new directory `path` in the sandbox.
    pub fn write_tree(&self, sandbox: &Sandbox, path: &str, data: &[u8]) -> Result<()> {
        sandbox_fs(sandbox)?.write_tree(path, data, self.config.max_file_bytes)?;
        sandbox.touch();
        Ok(())
    }

    /// The directory at `path` in the sandbox as a tar (at most `max_file_bytes` of files).
    pub fn read_tree(&self, sandbox: &Sandbox, path: &str) -> Result<Vec<u8>> {
        let data = sandbox_fs(sandbox)?.read_tree(path, self.config.max_file_bytes)?;
        sandbox.touch();
        Ok(data)
    }

    /// The file at `path` in the sandbox (at most `max_file_bytes`).
    pub fn read_file(&self, sandbox: &Sandbox, path: &str) -> Result<Vec<u8>> {
        let data = sandbox_fs(sandbox)?.read(path, self.config.max_file_bytes)?;
        sandbox.touch();
        Ok(data)
    }
}
