//! Resource limits of a sandbox (`--memory`, `--cpus`, `--pids`) through the cgroup v2
//! controllers, and how a sandbox that hit its memory limit is recognised.
//!
//! A limit is never ignored: where the cgroup v2 hierarchy lacks the controller (hybrid
//! hosts keep memory, cpu and pids on v1), the flag is refused with the controller's name
//! before anything of the sandbox exists.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// `memory.max` (and `memory.swap.max` 0), bytes.
    pub memory: Option<u64>,
    /// CPUs' worth of time per period (`cpu.max`).
    pub cpus: Option<f64>,
    /// `pids.max`.
    pub pids: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("invalid {flag} \"{value}\": {why}")]
    Invalid {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "{flag} needs the cgroup v2 \"{controller}\" controller, which {hierarchy} does not offer on this host (it may be on a cgroup v1 hierarchy)"
    )]
    MissingController {
        flag: &'static str,
        controller: &'static str,
        hierarchy: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bytes from `512m`, `2g`, `1048576`, `64k` (powers of 1024; a `b`/`ib` suffix is allowed).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some((i, 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "use a number of bytes with an optional k, m, g or t".to_owned())?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_owned())?;
    if bytes == 0 {
        return Err("must be more than 0".into());
    }
    Ok(bytes)
}

impl Limits {
    /// Parses the three flags' texts; `None` leaves a limit unset.
    pub fn parse(
        memory: Option<&str>,
        cpus: Option<&str>,
        pids: Option<&str>,
    ) -> Result<Self, LimitError> {
        let invalid = |flag, value: &str, why: String| LimitError::Invalid {
            flag,
            value: value.into(),
            why,
        };
        let memory = memory
            .map(|m| {
                let b = parse_bytes(m).map_err(|why| invalid("--memory", m, why))?;
                if b < 1 << 20 {
                    return Err(invalid("--memory", m, "must be at least 1m".into()));
                }
                Ok(b)
            })
            .transpose()?;
        let cpus = cpus
            .map(|c| match c.trim().parse::<f64>() {
                Ok(v) if (0.01..=1024.0).contains(&v) => Ok(v),
                _ => Err(invalid(
                    "--cpus",
                    c,
                    "use a number of CPUs from 0.01 to 1024, e.g. 0.5 or 2".into(),
                )),
            })
            .transpose()?;
        let pids = pids
            .map(|p| match p.trim().parse::<u64>() {
                Ok(v) if v >= 1 => Ok(v),
                _ => Err(invalid(
                    "--pids",
                    p,
                    "use a whole number of at least 1".into(),
                )),
            })
            .transpose()?;
        Ok(Self { memory, cpus, pids })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The controllers these limits need, with the flag that asks for each.
    fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.memory.is_some() {
            out.push(("--memory", "memory"));
        }
        if self.cpus.is_some() {
            out.push(("--cpus", "cpu"));
        }
        if self.pids.is_some() {
            out.push(("--pids", "pids"));
        }
        out
    }

    /// Refuses limits whose controller the hierarchy above `parent` (the agent's parent
    /// cgroup) cannot give its children, and enables the others from the root down.
    pub fn prepare(&self, parent: &Path) -> Result<(), LimitError> {
        let needed = self.controllers();
        if needed.is_empty() {
            return Ok(());
        }
        let root = crate::cgroup::find_cgroup2_mount().map_err(|e| LimitError::Io {
            action: "find",
            path: "cgroup v2".into(),
            source: io::Error::other(e.to_string()),
        })?;
        let available = read(&root.join("cgroup.controllers"))?;
        for (flag, controller) in &needed {
            if !available.split_whitespace().any(|c| c == *controller) {
                return Err(LimitError::MissingController {
                    flag,
                    controller,
                    hierarchy: format!("the cgroup v2 hierarchy at {}", root.display()),
                });
            }
        }
        // Every cgroup from the root to `parent` passes the controllers on.
        let mut chain = vec![root.clone()];
        if let Ok(rest) = parent.strip_prefix(&root) {
            let mut at = root.clone();
            for part in rest.components() {
                at.push(part);
                chain.push(at.clone());
            }
        }
        for cgroup in &chain {
            let control = cgroup.join("cgroup.subtree_control");
            let enabled = read(&control)?;
            for (_, controller) in &needed {
                if !enabled.split_whitespace().any(|c| c == *controller) {
                    write(&control, &format!("+{controller}"))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the limits into a sandbox's cgroup (before its first process starts).
    pub fn apply(&self, cgroup: &Path) -> Result<(), LimitError> {
        if let Some(m) = self.memory {
            write(&cgroup.join("memory.max"), &m.to_string())?;
            // Over the limit means the OOM killer, not swapping the host to a crawl; the
            // whole sandbox goes at once, as a container would.
            let swap = cgroup.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            write(&cgroup.join("memory.oom.group"), "1")?;
        }
        if let Some(c) = self.cpus {
            const PERIOD: u64 = 100_000;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "checked to 0.01..=1024 CPUs"
            )]
            let quota = (c * PERIOD as f64).round() as u64;
            write(
                &cgroup.join("cpu.max"),
                &format!("{} {PERIOD}", quota.max(1000)),
            )?;
        }
        if let Some(p) = self.pids {
            write(&cgroup.join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }
}

/// Whether the OOM killer acted in `cgroup` (its `memory.events`), read before the cgroup
/// goes.
pub fn oom_killed(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("memory.events")).is_ok_and(|t| {
        t.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

fn read(path: &Path) -> Result<String, LimitError> {
    fs::read_to_string(path).map_err(|source| LimitError::Io {
        action: "read",
        path: path.into(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), LimitError> {
    fs::write(path, value).map_err(|source| LimitError::Io {
        action: "write",
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "m", "12x", "-1m", "0", "1.5g", "99999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        let l = Limits::parse(Some("64m"), Some("0.5"), Some("100")).expect("valid");
        assert_eq!(
            (l.memory, l.cpus, l.pids),
            (Some(64 << 20), Some(0.5), Some(100))
        );
        let e = Limits::parse(Some("64q"), None, None).expect_err("bad unit");
        assert!(e.to_string().starts_with("invalid --memory \"64q\""), "{e}");
        assert!(Limits::parse(None, Some("0"), None).is_err());
        assert!(Limits::parse(None, Some("nan"), None).is_err());
        assert!(Limits::parse(None, None, Some("0")).is_err());
        assert!(Limits::parse(Some("1k"), None, None).is_err());
    }
}
