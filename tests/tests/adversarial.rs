//! The adversary inside: each test attacks the wall from a sandbox with a real client
//! (`helpers/adversary.py`) and judges by what arrived outside it, at a listener the test
//! runs itself (host loopback, host unix sockets, the test namespace's servers and counters,
//! the operator's terminal), not only by the errno the attacker saw.
//!
//! | attack | what stops it | test |
//! |---|---|---|
//! | port-0 bind to 127.0.0.2 / a non-loopback IPv6 address with `IP_LOCAL_PORT_RANGE` narrowed to a host listener's port, then connect to loopback: steered as "own listener" to the host service | `post_bind4/6` records only binds a loopback connect would reach (127.0.0.1, `::1`, wildcards), with their network namespace | `bind_trick_does_not_reach_a_host_loopback_listener`, `bind_trick_over_ipv6_does_not_reach_a_host_loopback_listener` |
//! | `unshare(CLONE_NEWUSER\|CLONE_NEWNET)`, `clone(CLONE_NEWUSER)`, `clone3`, `unshare -Urn` | seccomp: namespace flags refused, `clone3` ENOSYS | `namespaces_cannot_be_created_inside_a_sandbox` |
//! | read `/proc/<B>/environ`, `pidfd_getfd` B's connected socket and send through it, `process_vm_readv` B, `PTRACE_SEIZE` B, `kill -9` B | a Landlock domain per workload (ptrace scoping, `LANDLOCK_SCOPE_SIGNAL`) | `another_sandbox_cannot_read_steal_trace_or_kill_a_sandbox` |
//! | `TIOCSTI` into the operator's terminal (also as the 64-bit command `0x1_0000_5412`), `TIOCLINUX`, `TIOCSCTTY`, `/dev/tty` | the workload's own session (no controlling terminal); seccomp: both ioctls refused on the low 32 bits | `tiocsti_into_the_operators_terminal_is_refused` |
//! | `AF_XDP` socket with `CAP_NET_RAW` (frames below every IP hook) | seccomp: socket families are an allow-list | `af_xdp_socket_is_refused_even_with_net_raw` |
//! | `AF_PACKET`, `SOCK_PACKET`, netlink other than `NETLINK_ROUTE`, Bluetooth, vsock, `AF_ALG`, `AF_KEY`, CAN, TIPC, RDS, SMC, ... with `CAP_NET_RAW` | the same allow-list (unix, inet, inet6, netlink route) | `socket_families_outside_the_allow_list_are_refused_with_net_raw` |
//! | `IP(V6)_FREEBIND`, `IP(V6)_TRANSPARENT`, `IP(V6)_HDRINCL`, `IPPROTO_RAW` sockets | seccomp: the options and the protocol refused | `source_forging_socket_options_are_refused_with_net_raw` |
//! | source routes: `IP_OPTIONS` (LSRR), `IPV6_RTHDR` (a segment routing header, no capability needed), `IPV6_2292RTHDR`, `IPV6_2292PKTOPTIONS` | seccomp: the options refused | `source_forging_socket_options_are_refused_with_net_raw` |
//! | datagrams to an allowed address with a forged (denied) source: freebind, transparent, `IPV6_PKTINFO`, raw `IPPROTO_RAW`, raw UDP + `IP_HDRINCL` | the same seccomp rules; the kernel's own source check for `IPV6_PKTINFO` | `forged_source_datagrams_never_arrive` |
//! | connect to a host abstract unix socket | Landlock `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET` | `host_abstract_unix_socket_is_unreachable` |
//! | connect to a host unix socket by path (mode 0666) | nothing yet: the isolation issue will hide host paths (ignored test) | `host_unix_socket_by_path_is_unreachable` |
//! | raw ICMP echo to a denied address (`CAP_NET_RAW`) | `cgroup_skb` egress | `raw_icmp_to_a_denied_address_never_arrives` |
//! | TCP Fast Open (`MSG_FASTOPEN`, `TCP_FASTOPEN_CONNECT`) to a denied address | `connect4/6` (run by the fast-open path) and `cgroup_skb` | `tcp_fast_open_to_a_denied_address_never_arrives` |
//! | connect allowed, `connect(AF_UNSPEC)`, connect denied (TCP and UDP) | each connect/sendmsg decided afresh | `reconnect_after_af_unspec_gets_a_fresh_verdict` |
//! | IPv4-compatible, SIIT, NAT64 and 6to4 spellings of a denied IPv4 address | IPv6 rules (only `::ffff:0:0/96` is decided as IPv4) | `ipv6_spellings_of_a_denied_ipv4_address_never_arrive` |
//! | subnet broadcast, `224.0.0.1` and `ff02::1` into the test network | destinations decided like any other | `broadcast_and_multicast_into_the_test_network_never_arrive` |
//! | answers of 100 AAAA records with an hour's TTL, more of them than the sandbox may hold learned | per-answer cap (64) in the resolver's answer; per-sandbox cap (`--max-learned-addresses`): past it not learned, connect EPERM, an event; a neighbour keeps learning | `one_sandbox_cannot_learn_past_its_caps_and_others_keep_learning` |
//! | write own pid to the parent's or the root's `cgroup.procs` | cgroup file permissions (the workload is not root) | `cgroup_escape_by_writing_cgroup_procs_is_refused` |
//!
//! Covered elsewhere, so not repeated here:
//! - `AF_PACKET` / `SOCK_PACKET` sockets and `io_uring_setup` (EPERM), raw `IPPROTO_RAW` UDP
//!   to a denied address: `enforcement.rs` `raw_sockets_are_filtered_too`;
//! - `::ffff:a.b.c.d` decided by the IPv4 rules: `enforcement.rs`
//!   `v4_mapped_ipv6_is_decided_by_the_ipv4_rules`;
//! - ICMP echo through ping sockets: `enforcement.rs` `icmp_echo_is_denied_unless_allowed`;
//! - one socket alternating allowed/denied peers: `enforcement.rs`
//!   `one_socket_alternating_peers_gets_each_verdict`;
//! - DNS to another server (UDP, TCP, IPv6; exfiltration in names): `domains.rs`
//!   `dns_goes_to_the_agent_whatever_the_server_and_answers_only_allowed_names`; without
//!   domain rules port 53 is plain UDP/TCP: `enforcement.rs`
//!   `udp_to_a_denied_address_never_arrives`, `blocked_is_the_default_and_refuses_tcp_and_udp`;
//! - `SO_MARK`, SCTP, DCCP, MPTCP: `ingress.rs`
//!   `sandboxes_cannot_set_the_ingress_mark_or_open_unguarded_protocols`;
//! - reusing a marked socket after `connect(AF_UNSPEC)`: `ingress.rs`
//!   `sandboxes_accept_no_connection_but_the_gateways`.
use std::{
    fs,
    io::ErrorKind,
    net::TcpListener,
    os::unix::{net::UnixListener, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use sandbox_tests::{
    HOLD_PORT, Holder, PORT, Reap, RemoteHost, Run, agent, agent_cmd, cgroup2_mount, helpers,
    open_pty, read_terminal, run_client, sh,
};

/// Port of the test's own UDP listeners in the namespace (`udplog.py`).
const UDP_LOG_PORT: u16 = 9100;

/// `sandbox-agent run POLICY... -- python3 adversary.py ARGS...`, which must exit 0.
fn adversary(policy: &[&str], args: &[&str]) -> Run {
    let script = helpers().join("adversary.py");
    let mut all = vec!["run"];
    all.extend_from_slice(policy);
    all.extend_from_slice(&["--", "/usr/bin/python3", script.to_str().expect("utf-8")]);
    all.extend_from_slice(args);
    let run = agent_cmd(&all);
    assert_eq!(run.code, 0, "adversary.py {args:?} failed: {run:#?}");
    run
}

/// An errno name, not a success: the kernel refused.
fn refused(outcome: &str) -> bool {
    outcome.starts_with('E')
}

/// Polls `pred` for up to 5 s (something that must arrive), panicking with `what`.
fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Time for a packet that got through to be logged, before asserting that none did.
fn settle() {
    thread::sleep(Duration::from_millis(300));
}

/// `udplog.py` in a test namespace: logs the source of every datagram. Killed on drop.
struct UdpLog {
    log: PathBuf,
    child: Child,
}

impl UdpLog {
    fn start(host: &RemoteHost, addrs: &[&str]) -> Self {
        let log = helpers().join(format!("udplog-{}.log", host.netns));
        let _ = fs::remove_file(&log);
        let child = Command::new("ip")
            .args(["netns", "exec", &host.netns, "python3"])
            .arg(helpers().join("udplog.py"))
            .arg("--log")
            .arg(&log)
            .args(["--port", &UDP_LOG_PORT.to_string(), "--lifetime", "300"])
            .args(addrs)
            .stdout(Stdio::null())
            .spawn()
            .expect("start udplog");
        let me = Self { log, child };
        wait_until("udplog did not start", || {
            fs::read_to_string(&me.log).is_ok_and(|l| l.contains("ready"))
        });
        me
    }

    /// `(bound address, source, payload)` of each datagram so far.
    fn seen(&self) -> Vec<(String, String, String)> {
        sandbox_tests::server_log(&self.log)
            .iter()
            .filter_map(|l| {
                let mut p = l.splitn(4, ' ');
                (p.next()? == "udp").then_some(())?;
                Some((
                    p.next()?.into(),
                    p.next()?.into(),
                    p.next().unwrap_or("").into(),
                ))
            })
            .collect()
    }

    fn saw_payload(&self, payload: &str) -> bool {
        self.seen().iter().any(|(_, _, p)| p == payload)
    }
}

impl Drop for UdpLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A host TCP listener that the attack must not reach: nothing may be in its accept queue.
fn accepted_nothing(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).expect("nonblocking");
    matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

#[test]
fn bind_trick_does_not_reach_a_host_loopback_listener() {
    // 127.0.0.2 from an IPv4 socket, and the same as a v4-mapped address from an IPv6 one.
    for bind_addr in ["127.0.0.2", "::ffff:127.0.0.2"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("host listener");
        let port = listener.local_addr().expect("addr").port().to_string();
        let run = adversary(
            &["--network", "blocked"],
            &["bindtrick", bind_addr, &port, "127.0.0.1"],
        );
        // The bind landed on the host listener's port: the trick was really tried.
        assert_eq!(run.outcome("range"), "ok", "{run:#?}");
        assert_eq!(run.outcome("bound"), port, "{run:#?}");
        assert!(
            refused(&run.outcome("connect")),
            "{bind_addr}: connect to 127.0.0.1:{port} was not refused: {run:#?}"
        );
        assert!(
            accepted_nothing(&listener),
            "{bind_addr}: the sandbox reached the host listener on 127.0.0.1:{port}"
        );
    }
}

#[test]
fn bind_trick_over_ipv6_does_not_reach_a_host_loopback_listener() {
    // The host's own address on the link to the test namespace: local, not loopback.
    let host = RemoteHost::new();
    let listener = TcpListener::bind("[::1]:0").expect("host listener on ::1");
    let port = listener.local_addr().expect("addr").port().to_string();
    let run = adversary(
        &["--network", "blocked"],
        &["bindtrick", &host.host_v6, &port, "::1"],
    );
    assert_eq!(run.outcome("range"), "ok", "{run:#?}");
    assert_eq!(run.outcome("bound"), port, "{run:#?}");
    assert!(refused(&run.outcome("connect")), "{run:#?}");
    assert!(
        accepted_nothing(&listener),
        "the sandbox reached the host listener on [::1]:{port}"
    );
}

#[test]
fn namespaces_cannot_be_created_inside_a_sandbox() {
    let run = adversary(&["--network", "blocked"], &["namespaces"]);
    for label in [
        "unshare-user-net",
        "unshare-user",
        "unshare-net",
        "clone-user",
    ] {
        assert_eq!(run.outcome(label), "EPERM", "{label}: {run:#?}");
    }
    // clone3's flags are out of a filter's sight: it is unavailable (ENOSYS) as a whole.
    assert!(refused(&run.outcome("clone3-user")), "{run:#?}");
    let run = agent_cmd(&["run", "--", "unshare", "-Urn", "true"]);
    assert_ne!(run.code, 0, "unshare -Urn succeeded in a sandbox: {run:#?}");
    assert!(run.stderr.contains("not permitted"), "{run:#?}");
}

/// The host pid of the python process whose command line holds all of `needles`.
fn find_python(needles: &[&str]) -> u32 {
    let start = Instant::now();
    loop {
        for entry in fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("python3"))
                && needles.iter().all(|n| args.iter().any(|a| a == n))
            {
                return pid;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no python process with {needles:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: signal 0 only checks the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
}

#[test]
fn another_sandbox_cannot_read_steal_trace_or_kill_a_sandbox() {
    let host = RemoteHost::new();
    let x = host.v4[0].clone();
    let secret = format!("sa-secret-{}-{}", std::process::id(), host.netns);
    let script = helpers().join("adversary.py");
    let script = script.to_str().expect("utf-8");
    let hold_port = HOLD_PORT.to_string();
    let env = format!("SA_SECRET={secret}");
    // B: allowed to reach x, holding a connection to it.
    let mut b = Holder::start(&[
        "run",
        "--network",
        "allowlist",
        "--allow-out",
        &x,
        "--env",
        &env,
        "--",
        "/usr/bin/python3",
        script,
        "hold",
        &x,
        &hold_port,
    ]);
    let line = b.line("hold ");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, _, fd, addr, len] = fields[..] else {
        panic!("bad hold line {line:?}");
    };
    wait_until("B's connection did not arrive", || {
        host.seen().contains(&format!("data {x} from-B"))
    });
    // B's pid as the host sees it (whatever namespaces the sandbox has).
    let pid = find_python(&[script, "hold", &x]).to_string();
    // A: blocked, attacking B by pid.
    let run = adversary(
        &["--network", "blocked"],
        &["cross", &pid, fd, addr, len, &secret],
    );
    let mut problems = Vec::new();
    for label in [
        "environ",
        "pidfd_getfd",
        "process_vm_readv",
        "ptrace",
        "kill",
    ] {
        let outcome = run.outcome(label);
        if !refused(&outcome) && outcome != "no-pidfd" {
            problems.push(format!("{label}: {outcome}"));
        }
    }
    settle();
    if host.seen().contains(&format!("data {x} from-A")) {
        problems.push("A's bytes left through B's socket".into());
    }
    let pid_num: u32 = pid.parse().expect("pid");
    if !alive(pid_num) {
        problems.push(format!("B (pid {pid}) was killed"));
    }
    assert!(
        problems.is_empty(),
        "{problems:?}\nA: {run:#?}\nserver: {:?}",
        host.seen()
    );
    // B is intact: its socket still delivers, and it ends normally.
    let end = b.finish();
    assert_eq!(end.code, 0, "{end:#?}");
    wait_until("B's last line did not arrive", || {
        host.seen().contains(&format!("data {x} B-done"))
    });
}

/// Sets a sysctl for the test and restores it after.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Option<Self> {
        let old = fs::read_to_string(path).ok()?;
        fs::write(path, value).expect("set sysctl");
        Some(Self { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, &self.old);
    }
}

#[test]
fn tiocsti_into_the_operators_terminal_is_refused() {
    // Where the kernel still allows TIOCSTI at all (Linux 6.2+ can switch it off).
    let _legacy = Sysctl::set("/proc/sys/dev/tty/legacy_tiocsti", "1");
    let (mut master, slave_path) = open_pty();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .expect("open the pty slave");
    let script = helpers().join("adversary.py");
    let mut cmd = Command::new(agent());
    cmd.args(["run", "--network", "blocked", "--", "/usr/bin/python3"])
        .arg(&script)
        .arg("tty")
        .current_dir("/")
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave);
    // The agent runs like an operator's shell would: the pty is its controlling terminal.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start sandbox-agent on a pty");
    drop(cmd);
    // Read the terminal as it goes (an echo of injected input shows here), bounded.
    let (tx, shown) = mpsc::channel();
    thread::spawn(move || {
        let shown = read_terminal(&mut master);
        let _ = tx.send(String::from_utf8_lossy(&shown).into_owned());
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > sandbox_tests::RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sandbox on a pty did not finish");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let shown = shown
        .recv_timeout(Duration::from_secs(10))
        .expect("the pty stayed open after the sandbox ended");
    assert!(status.success(), "{status}: {shown}");
    let outcome = |label: &str| {
        shown
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} in {shown:?}"))
            .to_owned()
    };
    assert_eq!(outcome("isatty"), "yes", "{shown:?}");
    assert_eq!(outcome("tiocsti"), "EPERM", "{shown:?}");
    assert_eq!(outcome("tiocsti64"), "EPERM", "{shown:?}");
    assert_eq!(outcome("tioclinux"), "EPERM", "{shown:?}");
    // The workload has no controlling terminal (its own session) and cannot take the
    // operator's: nothing it does to the terminal outlives it or reaches the shell.
    assert_eq!(outcome("ctty"), "ENXIO", "{shown:?}");
    assert_eq!(outcome("tiocsctty"), "EPERM", "{shown:?}");
    // The terminal echoes input: an injected `~` would show on the master.
    assert!(
        !shown.contains('~'),
        "input was injected into the operator's terminal: {shown:?}"
    );
}

#[test]
fn af_xdp_socket_is_refused_even_with_net_raw() {
    // Control: this kernel has AF_XDP (root outside a sandbox gets one), so a refusal inside
    // is the sandbox's, not a missing feature.
    // SAFETY: socket() and close() of a descriptor we own.
    unsafe {
        let fd = libc::socket(44, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_XDP unavailable on the host: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
    let run = adversary(&["--cap-add", "NET_RAW"], &["families"]);
    assert_eq!(run.outcome("xdp"), "EPERM", "{run:#?}");
}

#[test]
fn socket_families_outside_the_allow_list_are_refused_with_net_raw() {
    let run = adversary(&["--cap-add", "NET_RAW"], &["families"]);
    for label in [
        "xdp",
        "packet",
        "packet-dgram",
        "sockpacket",
        "netlink-netfilter",
        "netlink-sock-diag",
        "netlink-audit",
        "netlink-generic",
        "bluetooth",
        "vsock",
        "alg",
        "key",
        "can",
        "tipc",
        "rds",
        "smc",
        "qipcrtr",
        "mctp",
    ] {
        assert_eq!(run.outcome(label), "EPERM", "{label}: {run:#?}");
    }
    for label in [
        "unix-stream",
        "unix-dgram",
        "inet-tcp",
        "inet-udp",
        "inet6-tcp",
        "inet6-udp",
        "raw-icmp",
        "netlink-route",
        "socketpair-unix",
    ] {
        assert_eq!(run.outcome(label), "ok", "{label}: {run:#?}");
    }
    // Route and address queries still work.
    let run = agent_cmd(&["run", "--", "ip", "-br", "addr"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains("lo "), "{run:#?}");
}

#[test]
fn source_forging_socket_options_are_refused_with_net_raw() {
    let run = adversary(&["--cap-add", "NET_RAW"], &["sockopts"]);
    for label in [
        "ipv6_freebind",
        "ipv6_transparent",
        "ip_freebind",
        "ip_freebind-tcp",
        "ip_freebind-on-v6",
        "ip_transparent",
        "ip_hdrincl",
        "ipv6_hdrincl",
        "raw4-ipproto-raw",
        "raw6-ipproto-raw",
        "ip_options-lsrr",
        "ipv6_rthdr-srh",
        "ipv6_2292rthdr",
        "ipv6_2292pktoptions",
    ] {
        assert_eq!(run.outcome(label), "EPERM", "{label}: {run:#?}");
    }
    for label in ["so_reuseaddr", "ipv6_v6only"] {
        assert_eq!(run.outcome(label), "ok", "{label}: {run:#?}");
    }
}

/// `prefix.N` of an IPv4 address's /24, `prefix::N` of an IPv6 address ending in `::M`.
fn sibling(addr: &str, n: u8) -> String {
    if addr.contains(':') {
        let (net, _) = addr.rsplit_once("::").expect("an address ending in ::N");
        format!("{net}::{n}")
    } else {
        let (net, _) = addr.rsplit_once('.').expect("IPv4");
        format!("{net}.{n}")
    }
}

#[test]
fn forged_source_datagrams_never_arrive() {
    let host = RemoteHost::new();
    let (x4, x6) = (host.v4[0].clone(), host.v6[0].clone());
    // Sources the sandbox may not reach (and nobody owns: the namespace takes them in).
    let (y4, y6) = (sibling(&x4, 9), sibling(&x6, 9));
    let (host4, host6) = (sibling(&x4, 1), host.host_v6.clone());
    let log = UdpLog::start(&host, &[&x4, &x6]);
    let port = UDP_LOG_PORT.to_string();
    let tag = format!("forge{}", std::process::id());
    let run = adversary(
        &[
            "--network",
            "allowlist",
            "--allow-out",
            &x4,
            "--allow-out",
            &x6,
            "--cap-add",
            "NET_RAW",
        ],
        &["forge", &port, &tag, &x6, &y6, &x4, &y4],
    );
    let plain = format!("plain-{tag}");
    wait_until("the plain datagrams did not arrive", || {
        let seen = log.seen();
        [&x4, &x6]
            .iter()
            .all(|x| seen.iter().any(|(to, _, p)| to == *x && *p == plain))
    });
    settle();
    let forged: Vec<_> = log
        .seen()
        .into_iter()
        .filter(|(_, src, _)| *src != host4 && *src != host6)
        .collect();
    assert!(
        forged.is_empty(),
        "datagrams with a forged source arrived: {forged:?}\n{run:#?}"
    );
    for label in [
        "freebind6-opt",
        "transparent6-opt",
        "freebind4-opt",
        "transparent4-opt",
        "raw4-send",
        "hdrincl4-send",
    ] {
        assert_eq!(run.outcome(label), "EPERM", "{label}: {run:#?}");
    }
}

#[test]
fn host_abstract_unix_socket_is_unreachable() {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("sa-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let listener = UnixListener::bind_addr(&addr).expect("bind the abstract socket");
    let run = adversary(&["--network", "blocked"], &["unix", &format!("@{name}")]);
    assert!(refused(&run.outcome("unix-connect")), "{run:#?}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the sandbox connected to the host's abstract socket @{name}"
    );
}

/// Removes a path on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn host_unix_socket_by_path_is_unreachable() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = PathBuf::from(format!("/tmp/sa-test-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind the path socket");
    let _remove = RemoveOnDrop(path.clone());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
    let run = adversary(
        &["--network", "blocked"],
        &["unix", path.to_str().expect("utf-8")],
    );
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the sandbox connected to the host's unix socket {}: {run:#?}",
        path.display()
    );
}

/// An ICMP counter of the namespace (`/proc/net/snmp` `Icmp: InEchos`, `/proc/net/snmp6`
/// `Icmp6InEchos`).
fn echoes_received(host: &RemoteHost, v6: bool) -> u64 {
    if v6 {
        let text = sh(&format!("ip netns exec {} cat /proc/net/snmp6", host.netns));
        return text
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6InEchos");
    }
    let text = sh(&format!("ip netns exec {} cat /proc/net/snmp", host.netns));
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let (names, values) = (rows[0], rows[1]);
    let i = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("InEchos");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("InEchos value")
}

#[test]
fn raw_icmp_to_a_denied_address_never_arrives() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let (a6, b6) = (host.v6[0].as_str(), host.v6[1].as_str());
    let policy = [
        "--network",
        "allowlist",
        "--allow-out",
        a,
        "--allow-out",
        a6,
        "--cap-add",
        "NET_RAW",
    ];
    for (v6, allowed, denied) in [(false, a, b), (true, a6, b6)] {
        let before = echoes_received(&host, v6);
        let run = adversary(&policy, &["rawicmp", denied]);
        assert!(refused(&run.outcome(denied)), "{run:#?}");
        settle();
        assert_eq!(
            echoes_received(&host, v6),
            before,
            "an echo request reached the denied {denied}"
        );
        // Control: the counter does count what a raw socket sends.
        let run = adversary(&policy, &["rawicmp", allowed]);
        assert_eq!(run.outcome(allowed), "ok", "{run:#?}");
        wait_until(&format!("the echo to {allowed} was not counted"), || {
            echoes_received(&host, v6) == before + 1
        });
    }
}

#[test]
fn tcp_fast_open_to_a_denied_address_never_arrives() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let (a6, b6) = (host.v6[0].as_str(), host.v6[1].as_str());
    let port = PORT.to_string();
    let run = adversary(
        &[
            "--network",
            "allowlist",
            "--allow-out",
            a,
            "--allow-out",
            a6,
        ],
        &["tfo", &port, a, b, a6, b6],
    );
    for allowed in [a, a6] {
        assert_eq!(
            run.outcome(&format!("fastopen {allowed}")),
            "ok",
            "{run:#?}"
        );
        assert_eq!(
            run.outcome(&format!("fastopen-connect {allowed}")),
            "ok",
            "{run:#?}"
        );
    }
    for denied in [b, b6] {
        assert!(
            refused(&run.outcome(&format!("fastopen {denied}"))),
            "{run:#?}"
        );
        assert!(
            refused(&run.outcome(&format!("fastopen-connect {denied}"))),
            "{run:#?}"
        );
    }
    settle();
    assert!(host.saw_tcp(a) && host.saw_tcp(a6), "{:?}", host.seen());
    assert!(
        !host.saw_tcp(b) && !host.saw_tcp(b6),
        "a fast-open connection reached a denied address: {:?}",
        host.seen()
    );
}

#[test]
fn reconnect_after_af_unspec_gets_a_fresh_verdict() {
    let host = RemoteHost::new();
    let port = PORT.to_string();
    for (a, b) in [
        (host.v4[0].as_str(), host.v4[1].as_str()),
        (host.v6[0].as_str(), host.v6[1].as_str()),
    ] {
        let tag = format!("re{}", a.len());
        let run = adversary(
            &["--network", "allowlist", "--allow-out", a],
            &["reconnect", &port, &tag, a, b],
        );
        assert_eq!(run.outcome("tcp-first"), "ok", "{run:#?}");
        assert_eq!(run.outcome("tcp-unspec"), "ok", "{run:#?}");
        assert!(refused(&run.outcome("tcp-second")), "{run:#?}");
        assert_eq!(run.outcome("udp-first"), "ok", "{run:#?}");
        assert!(refused(&run.outcome("udp-second")), "{run:#?}");
        assert!(refused(&run.outcome("udp-unconnected")), "{run:#?}");
        wait_until("the allowed datagram did not arrive", || {
            host.saw_udp(a, &format!("{tag}-first"))
        });
        settle();
        let leaked: Vec<String> = host
            .seen()
            .into_iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(b))
            .collect();
        assert!(
            leaked.is_empty(),
            "traffic reached the denied {b}: {leaked:?}"
        );
        assert!(host.saw_tcp(a), "{:?}", host.seen());
    }
}

#[test]
fn ipv6_spellings_of_a_denied_ipv4_address_never_arrive() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let o: Vec<u8> = b.split('.').map(|p| p.parse().expect("octet")).collect();
    let forms = [
        format!("::{b}"),        // IPv4-compatible
        format!("::ffff:0:{b}"), // SIIT
        format!("64:ff9b::{b}"), // NAT64
        format!("2002:{:02x}{:02x}:{:02x}{:02x}::1", o[0], o[1], o[2], o[3]), // 6to4
    ];
    // Whatever happens, these go to the test namespace, not out of the host's default route.
    for f in &forms {
        sh(&format!(
            "ip -6 route replace {f}/128 dev {}",
            host.host_if()
        ));
    }
    let targets: Vec<&str> = forms.iter().map(String::as_str).collect();
    let port = PORT.to_string();
    let mut client = vec!["tcp", port.as_str()];
    client.extend_from_slice(&targets);
    let run = run_client(&["--network", "allowlist", "--allow-out", a], &client);
    for t in &targets {
        assert!(refused(&run.outcome(t)), "{t}: {run:#?}");
    }
    settle();
    assert!(
        !host.saw_tcp(b),
        "an IPv6 spelling reached {b}: {:?}",
        host.seen()
    );
}

#[test]
fn broadcast_and_multicast_into_the_test_network_never_arrive() {
    let host = RemoteHost::new();
    let a = host.v4[0].clone();
    let (host4, bcast) = (sibling(&a, 1), sibling(&a, 255));
    let log = UdpLog::start(&host, &["0.0.0.0", "::"]);
    let port = UDP_LOG_PORT.to_string();
    let send = |policy: &[&str], tag: &str| {
        adversary(
            policy,
            &["mcast", &port, tag, host.host_if(), &host4, &a, &bcast],
        )
    };
    // Control: from an open sandbox all four arrive, so the listener would see them.
    let run = send(&["--network", "open"], "ctl");
    for kind in ["unicast", "bcast", "mcast4", "mcast6"] {
        wait_until(
            &format!("{kind} did not arrive from an open sandbox: {run:#?}"),
            || log.saw_payload(&format!("ctl-{kind}")),
        );
    }
    // Only the unicast address is allowed.
    let run = send(
        &[
            "--network",
            "allowlist",
            "--allow-out",
            &a,
            "--allow-out",
            &host.v6[0],
        ],
        "deny",
    );
    assert_eq!(run.outcome("unicast4"), "ok", "{run:#?}");
    for label in ["broadcast4", "multicast4", "multicast6"] {
        assert!(refused(&run.outcome(label)), "{label}: {run:#?}");
    }
    wait_until("the allowed unicast did not arrive", || {
        log.saw_payload("deny-unicast")
    });
    settle();
    for kind in ["bcast", "mcast4", "mcast6"] {
        assert!(
            !log.saw_payload(&format!("deny-{kind}")),
            "{kind} arrived: {:?}",
            log.seen()
        );
    }
}

#[test]
fn cgroup_escape_by_writing_cgroup_procs_is_refused() {
    let mount = cgroup2_mount();
    let run = adversary(
        &["--network", "blocked"],
        &["cgroup", mount.to_str().expect("utf-8")],
    );
    let before = run.outcome("cgroup-before");
    assert!(before.contains("/sandbox-agent/"), "{run:#?}");
    assert!(refused(&run.outcome("write-parent")), "{run:#?}");
    assert!(refused(&run.outcome("write-root")), "{run:#?}");
    assert_eq!(run.outcome("cgroup-after"), before, "{run:#?}");
}

/// Class 7: one sandbox cannot fill the host-wide `FLOWS`/`ORIG_DST` maps. A sandbox opens
/// more redirected UDP sockets (DNS, steered to its resolver) than its quota and holds them;
/// past the quota its sends get EPERM, while another sandbox's DNS is still answered.
/// Without the quota the first sandbox gets all its sockets and the test fails.
#[test]
fn one_sandbox_over_its_flow_quota_is_refused_and_others_keep_dns() {
    /// Ends the hog (EOF on its stdin, then kill) also when the test fails.
    use std::io::{BufRead as _, BufReader};
    let quota = 16_384; // sandbox_common::MAX_FLOWS_PER_SANDBOX
    let attempts = quota + 600;
    let hog = format!(
        r#"
import resource, socket, sys, time, errno
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, {attempts} + 100), hard))
held, ok, refused, other, names = [], 0, 0, 0, set()
for i in range({attempts}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.append(s)
    try:
        s.sendto(b"x", ("198.18.0.1", 53))
        ok += 1
    except OSError as e:
        if e.errno == errno.EPERM:
            refused += 1
        else:
            other += 1
            names.add(errno.errorcode.get(e.errno, str(e.errno)))
print(f"ok={{ok}} refused={{refused}} other={{other}} errors={{','.join(sorted(names)) or '-'}}", flush=True)
sys.stdin.read()
"#
    );
    let mut hog = std::process::Command::new(agent())
        .args([
            "run",
            "--network",
            "allowlist",
            "--allow-out",
            "quota.test",
            "--",
            "/usr/bin/python3",
            "-c",
            &hog,
        ])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the hog");
    let stdout = hog.stdout.take().expect("stdout");
    let hog = Reap(hog);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(sandbox_tests::RUN_LIMIT)
        .expect("the hog reports its sockets");
    let count = |key: &str| -> usize {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    assert_eq!(count("other"), 0, "{line}");
    assert!(
        count("refused") > 0 && count("ok") <= quota,
        "a sandbox held more redirected sockets than its quota: {line}"
    );
    // The hog holds its sockets: another sandbox's resolver still answers it.
    let neighbour = agent_cmd(&[
        "run",
        "--network",
        "allowlist",
        "--allow-out",
        "quota.test",
        "--",
        "/usr/bin/python3",
        "-c",
        r#"
import socket, struct
q = struct.pack("!HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0) + b"\x05quota\x04test\x00" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("198.18.0.1", 53))
data, _ = s.recvfrom(512)
print("answered", data[:2] == q[:2])
"#,
    ]);
    assert!(
        neighbour.stdout.contains("answered True"),
        "another sandbox's DNS failed while one sandbox held its quota: {neighbour:#?}"
    );
    drop(hog);
}

/// A namespace whose upstream DNS answers floods of AAAA records (`helpers/flooddns.py`),
/// every flood address its own (a local route) with a listener on port 9300 that logs
/// which address was reached.
struct FloodWorld {
    host: RemoteHost,
    /// `2001:db8:5b:N::`: flood addresses are `{prefix}1:XYZ`.
    prefix: String,
    log: PathBuf,
    server: Child,
}

impl FloodWorld {
    fn new() -> Self {
        let host = RemoteHost::new();
        // Not internal (a ULA would be refused as a rebinding target whatever the cap):
        // documentation space, routed to this namespace only.
        let n = host.netns.trim_start_matches("sa-test-");
        let prefix = format!("2001:db8:5b:{:x}::", n.parse::<u32>().expect("index"));
        let log = helpers().join(format!("flood-{}.log", host.netns));
        let _ = fs::remove_file(&log);
        sh(&format!(
            "ip -n {ns} -6 route add local {prefix}1:0/112 dev lo && ip -6 route add {prefix}1:0/112 via {via} dev {dev}",
            ns = host.netns,
            via = host.v6[0],
            dev = host.host_if()
        ));
        let server = Command::new("ip")
            .args(["netns", "exec", &host.netns, "python3"])
            .arg(helpers().join("flooddns.py"))
            .args(["--dns", &host.v6[0], "--prefix", &prefix, "--log"])
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start flooddns");
        let world = Self {
            host,
            prefix,
            log,
            server,
        };
        wait_until("flooddns is ready", || {
            world.reached().contains(&"ready".to_owned())
        });
        world
    }

    /// `[ADDR]:53` of the upstream DNS.
    fn upstream(&self) -> String {
        format!("[{}]:53", self.host.v6[0])
    }

    /// What the listener logged.
    fn reached(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for FloodWorld {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = fs::remove_file(&self.log);
    }
}

#[test]
fn one_sandbox_cannot_learn_past_its_caps_and_others_keep_learning() {
    let world = FloodWorld::new();
    let p = &world.prefix;
    let server = &world.host.v6[0];
    let flow_log = helpers().join(format!("flood-flows-{}.log", world.host.netns));
    let _ = fs::remove_file(&flow_log);
    // Four answers of 100 addresses each, with an hour's TTL; the flooder may hold 150.
    let mut steps: Vec<String> = (0..4)
        .map(|k| format!("dnstcp q{k} {server} q{k}.flood.test AAAA"))
        .collect();
    steps.push(format!("tcp first {p}1:0 9300"));
    steps.push(format!("tcp past {p}1:300 9300"));
    let client = helpers().join("webclient.py").display().to_string();
    let mut args = vec![
        "run".to_owned(),
        "--upstream-dns".into(),
        world.upstream(),
        "--flow-log".into(),
        flow_log.display().to_string(),
        "--max-learned-addresses".into(),
        "150".into(),
        "--network".into(),
        "allowlist".into(),
        "--allow-out".into(),
        "*.flood.test".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        // Holds its learned addresses (stays alive) until the test closes its stdin.
        "/usr/bin/python3 -u \"$0\" \"$@\"; read -r _".into(),
        client.clone(),
    ];
    args.extend(steps);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let flooder = Holder::start(&args);
    // The steps report in order, one line each.
    let mut out = std::collections::HashMap::new();
    for label in ["q0", "q1", "q2", "q3", "first", "past"] {
        let line = flooder.line(&format!("{label} "));
        out.insert(label, line[label.len() + 1..].to_owned());
    }
    // Each answer reaches the sandbox with at most 64 addresses (the per-answer cap)...
    for k in 0..4 {
        let answer = &out[format!("q{k}").as_str()];
        let addrs = answer
            .strip_prefix("NOERROR ")
            .unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(addrs.split(',').count(), 64, "q{k}: {answer}");
    }
    // ...and past its 150 learned addresses, the fourth answer's are not learned: its
    // connect is refused in the kernel and nothing arrives; the first answer's still work.
    assert_eq!(out["first"], "ok hi", "{out:?}");
    assert_eq!(out["past"], "EPERM", "{out:?}");
    let reached = world.reached();
    assert!(reached.contains(&format!("tcp {p}1:0")), "{reached:?}");
    assert!(!reached.contains(&format!("tcp {p}1:300")), "{reached:?}");
    let flows = fs::read_to_string(&flow_log).unwrap_or_default();
    assert!(flows.contains("addresses not learned"), "{flows}");
    assert!(flows.contains("left out of the answer"), "{flows}");

    // The flooder holds its addresses: another sandbox resolves, learns and connects.
    let neighbour = agent_cmd(&[
        "run",
        "--upstream-dns",
        &world.upstream(),
        "--network",
        "allowlist",
        "--allow-out",
        "ok.test",
        "--",
        "/usr/bin/python3",
        &client,
        &format!("dnstcp n0 {server} ok.test AAAA"),
        &format!("tcp n1 {p}1:ff00 9300"),
    ]);
    assert!(
        neighbour.stdout.contains(&format!("n0 NOERROR {p}1:ff00"))
            && neighbour.stdout.contains("n1 ok hi"),
        "{neighbour:#?}"
    );
    assert!(world.reached().contains(&format!("tcp {p}1:ff00")));
    drop(flooder);
    let _ = fs::remove_file(&flow_log);
}
