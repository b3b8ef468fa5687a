//! The daemon's state on disk is root's alone: records hold command lines (with whatever
//! secrets they carry), tunnel addresses, routes and token hashes. Every directory is made
//! 0700 and every file 0600 by the daemon itself, whatever the umask or service manager, and
//! a state directory that another user owns or can write is refused: whoever can write it
//! could plant records the daemon adopts.
use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::Path,
};

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Group- and other-write bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates `path` (and missing parents) 0700; an existing one is made 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
}

/// Replaces `path` with `bytes` at once (a 0600 file renamed over it).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    // A leftover temporary file keeps its old mode through `open`.
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(tmp, path)
}

/// Why the daemon may not keep its state in `dir`, if it may not: `dir` (when it exists)
/// must belong to the daemon's user and be writable by nobody else, and so must each of
/// its parents unless sticky (`/tmp`), where others cannot move it away. Symlinks are
/// followed first: what counts is where the state really is, and the parents there.
pub fn check_state_dir(dir: &Path) -> Result<(), String> {
    let uid = nix::unistd::geteuid().as_raw();
    // The deepest part of the path that exists, resolved; the rest is made by the daemon.
    let Some((existing, real)) = dir
        .ancestors()
        .find_map(|a| fs::canonicalize(a).ok().map(|r| (a, r)))
    else {
        return Ok(());
    };
    let mut first = existing == dir;
    for path in real.ancestors() {
        let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let what = if first {
            "state directory"
        } else {
            "parent of the state directory"
        };
        let mode = meta.mode() & 0o7777;
        if meta.uid() != uid && (first || meta.uid() != 0) {
            return Err(format!(
                "{what} {} is owned by uid {}, not by the daemon's uid {uid}: chown it or choose another state_dir",
                path.display(),
                meta.uid()
            ));
        }
        if mode & WRITABLE_BY_OTHERS != 0 && (first || mode & STICKY == 0) {
            return Err(format!(
                "{what} {} can be written by group or others (mode {mode:04o}): chmod go-w it or choose another state_dir",
                path.display()
            ));
        }
        first = false;
    }
    Ok(())
}

/// Makes what an older daemon (or a looser umask) left in `dir` private: directories 0700,
/// files 0600. `dir` itself may be a symlink (to where the state really is); nothing below
/// it is followed.
pub fn tighten(dir: &Path) -> io::Result<()> {
    tighten_at(&fs::canonicalize(dir)?)
}

fn tighten_at(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.is_symlink() {
        return Ok(());
    }
    let mode = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    if meta.mode() & 0o777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            tighten_at(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sa-private-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_whatever_was_there() {
        let dir = scratch("modes");
        create_dir(&dir.join("a/b")).unwrap();
        assert_eq!(mode(&dir.join("a/b")), 0o700);
        assert_eq!(mode(&dir.join("a")), 0o700);
        let file = dir.join("a/record.json");
        fs::write(&file, "old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.join("a/record.json.tmp"), "left").unwrap();
        write(&file, b"new").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("a/b/stdout.log"), "x").unwrap();
        tighten(&dir).unwrap();
        assert_eq!(mode(&dir.join("a")), 0o700);
        assert_eq!(mode(&dir.join("a/b/stdout.log")), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused() {
        let dir = scratch("check");
        // Missing: fine (made privately later).
        check_state_dir(&dir.join("state")).unwrap();
        create_dir(&dir).unwrap();
        check_state_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_state_dir(&dir).unwrap_err();
        assert!(
            e.contains("mode 0777") && e.contains(&*dir.to_string_lossy()),
            "{e}"
        );
        // Its parent writable by others and not sticky: refused too.
        let e = check_state_dir(&dir.join("state")).unwrap_err();
        assert!(e.starts_with("parent of the state directory"), "{e}");
        // A private directory reached by a symlink is judged where it really is: under a
        // parent others can write, refused.
        create_dir(&dir.join("real")).unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(dir.join("real"), &link).unwrap();
        let e = check_state_dir(&link).unwrap_err();
        assert!(
            e.starts_with("parent of the state directory") && e.contains("0777"),
            "{e}"
        );
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
