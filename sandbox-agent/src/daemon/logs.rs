//! Sandbox output: each stream is a file the workload writes directly (`O_APPEND`), so output
//! survives a daemon restart and costs the daemon nothing while nobody reads it. Files are
//! bounded by punching a hole over the oldest bytes (`fallocate(PUNCH_HOLE)`): offsets stay
//! stable for readers that follow, and disk use stays under the limit.
use std::{
    fs,
    io::{self, Read as _, Seek as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::Path,
    time::Duration,
};

/// Block size holes are aligned to.
const BLOCK: u64 = 4096;

/// Creates an output file for a workload (mode 0600).
pub fn create(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Where kept output starts: the end of the punched-out head (stored next to the file).
pub fn start_of(path: &Path) -> u64 {
    fs::read_to_string(path.with_extension("log.start"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Drops the oldest output of every `*.log` in `dir` above `limit` bytes.
pub fn trim_all(dir: &Path, limit: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let _ = trim(&path, limit);
        }
    }
}

/// Keeps at most about `limit` bytes of `path`: punches the head out once the file holds
/// more than `limit` past the current start.
pub fn trim(path: &Path, limit: u64) -> io::Result<()> {
    let size = fs::metadata(path)?.len();
    let start = start_of(path);
    if size.saturating_sub(start) <= limit {
        return Ok(());
    }
    // Keep the newest half of the limit, from a block boundary.
    let new_start = (size - limit / 2) / BLOCK * BLOCK;
    if new_start <= start {
        return Ok(());
    }
    let file = fs::OpenOptions::new().write(true).open(path)?;
    // SAFETY: fallocate on our own descriptor with a valid range.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            i64::try_from(start).unwrap_or(0),
            i64::try_from(new_start - start).unwrap_or(0),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    crate::private_files::write(
        &path.with_extension("log.start"),
        new_start.to_string().as_bytes(),
    )
}

/// Reads what `path` holds from `offset` (or from the kept start, if later), at most
/// `max` bytes. Returns the bytes and the next offset.
pub fn read_from(path: &Path, offset: u64, max: usize) -> io::Result<(Vec<u8>, u64)> {
    let offset = offset.max(start_of(path));
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    file.seek(io::SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(max as u64).read_to_end(&mut buf)?;
    let next = offset + buf.len() as u64;
    Ok((buf, next))
}

/// How often a follower looks for new output.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn trimming_keeps_the_tail_and_offsets() {
        let dir = std::env::temp_dir().join(format!("sa-logs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout.log");
        let mut f = create(&path).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        trim(&path, 20_000).unwrap();
        let start = start_of(&path);
        assert!(start > 0 && start.is_multiple_of(BLOCK), "start {start}");
        let (tail, next) = read_from(&path, 0, usize::MAX).unwrap();
        assert_eq!(next, 100_000);
        assert_eq!(tail, data[usize::try_from(start).unwrap()..]);
        assert!(tail.len() <= 20_000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
