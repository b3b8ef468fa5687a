//! A sandbox's sockets as the kernel shows them: whether it listens on a port (for the
//! probe), the peers of its established connections (`/proc`), and cutting those a new
//! policy denies (`ss -K`).
use std::{fs, path::Path};

/// Whether a process in the sandbox's own cgroup listens on TCP `port`. Asked
/// of the kernel (`sock_diag`, through `ss`) rather than by connecting: the sandbox's own
/// policy may refuse loopback peers, and another process of the host may hold the same port
/// on another address.
pub(super) fn listening_in(cgroup: &Path, port: u16) -> bool {
    std::process::Command::new("ss")
        .args(["-Htln", "cgroup"])
        .arg(cgroup)
        .args(["sport", "=", &format!(":{port}")])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Destroys (`SOCK_DESTROY` through `ss -K`) the TCP connections of the processes in
/// `cgroup` whose peer `denied` says the policy no longer allows. Best effort: the kernel
/// already drops their packets, this only makes the workload see the end at once. The
/// connections are found in `/proc` (no process started when there is nothing to cut).
pub(super) fn destroy_denied_sockets(cgroup: &Path, denied: impl Fn(std::net::IpAddr) -> bool) {
    for (addr, port) in established_peers(cgroup) {
        if addr.is_loopback() || !denied(addr) {
            continue;
        }
        let _ = std::process::Command::new("ss")
            .args(["-HtnK", "state", "established", "cgroup"])
            .arg(cgroup)
            .args(["dst", &addr.to_string(), "dport", "=", &port.to_string()])
            .output();
    }
}

/// Peers of the established TCP connections held by the processes of `cgroup`: their
/// socket inodes (`/proc/PID/fd`) looked up in `/proc/net/tcp{,6}` (sandboxes share the
/// host's network namespace).
fn established_peers(cgroup: &Path) -> Vec<(std::net::IpAddr, u16)> {
    let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return Vec::new();
    };
    let mut inodes = std::collections::HashSet::new();
    for pid in procs.lines() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut peers = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(rem), Some(st), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            if *st != "01" || !inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                continue;
            }
            if let Some(peer) = parse_proc_addr(rem) {
                peers.push(peer);
            }
        }
    }
    peers
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6), each 32-bit word in host order.
fn parse_proc_addr(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            crate::enforcement::canonical(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::parse_proc_addr;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000201A8C0:0050"),
            Some(("192.168.1.2".parse().unwrap(), 80))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:01BB"),
            Some(("::1".parse().unwrap(), 443))
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }
}
