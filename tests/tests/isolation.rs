//! Isolation around the wall: every sandbox has its own host uid, PID namespace and mount
//! namespace (the host's root read-only, private `/tmp`, `/home`, `/run`, ...), and resource
//! limits through cgroup v2 controllers or a refusal naming the missing one. Judged with real
//! processes: what the workload sees and can do from inside, what the host sees outside.
use std::{
    fs,
    io::ErrorKind,
    os::unix::net::UnixListener,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use sandbox_tests::{Holder, agent_cmd, daemon::TestDaemon, helpers, sh};

/// The default range of sandboxes' own uids (identity.rs).
const UID_FIRST: u32 = 0x6000_0000;
const UID_COUNT: u32 = 65_536;

/// Held by tests that change or count what the host has in `/run`.
static RUN_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn in_range(uid: u32) -> bool {
    (UID_FIRST..UID_FIRST + UID_COUNT).contains(&uid)
}

/// `run -- sh -c SCRIPT`, which must exit 0; its stdout.
fn inside(script: &str) -> String {
    inside_with(&[], script)
}

/// `run FLAGS -- sh -c SCRIPT`, which must exit 0; its stdout.
fn inside_with(flags: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--embedded"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    let run = agent_cmd(&args);
    assert_eq!(run.code, 0, "`{script}` failed: {run:#?}");
    run.stdout
}

/// `run --embedded FLAGS -- sh -c SCRIPT`, kept alive until finished or dropped.
fn live(flags: &[&str], script: &str) -> Holder {
    let mut args = vec!["run", "--embedded"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    Holder::start(&args)
}

#[test]
fn each_sandbox_runs_as_its_own_uid_with_a_passwd_entry_and_home() {
    let a = live(&[], "id -u; sleep 30");
    let b = live(&[], "id -u; sleep 30");
    let (ua, ub): (u32, u32) = (
        a.line("").trim().parse().expect("uid"),
        b.line("").trim().parse().expect("uid"),
    );
    assert!(
        in_range(ua) && in_range(ub),
        "uids {ua} {ub} outside the range"
    );
    assert_ne!(ua, ub, "two live sandboxes share uid {ua}");
    // The host sees them as those uids too (not only the sandbox's own view).
    let host_uids = sh(&format!("ps -o uid= -u {ua},{ub} | sort -u"));
    assert!(
        host_uids.contains(&ua.to_string()) && host_uids.contains(&ub.to_string()),
        "{host_uids}"
    );
    let out = inside(
        "whoami; id -gn; getent passwd \"$(id -u)\"; echo \"HOME=$HOME\"; \
         touch \"$HOME/f\" && echo home-writable; ls -ld \"$HOME\" | cut -c1-10",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "sandbox", "{out}");
    assert_eq!(lines[1], "sandbox", "{out}");
    assert!(
        lines[2].starts_with("sandbox:x:") && lines[2].contains(":/home/sandbox:"),
        "{out}"
    );
    assert_eq!(lines[3], "HOME=/home/sandbox", "{out}");
    assert_eq!(lines[4], "home-writable", "{out}");
    assert_eq!(lines[5], "drwx------", "{out}");
    // No capability anywhere.
    let caps = inside("grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status");
    for line in caps.lines() {
        assert!(line.ends_with("0000000000000000"), "{caps}");
    }
}

#[test]
fn a_sandbox_sees_only_its_own_processes() {
    let me = std::process::id();
    let out = inside(&format!(
        "ls /proc | grep -c '^[0-9]*$'; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         echo \"self=$$\"; [ -e /proc/{me} ] && echo host-visible || echo host-hidden; \
         ps -e -o comm= | sort | tr '\\n' ' '"
    ));
    let lines: Vec<&str> = out.lines().collect();
    let count: usize = lines[0].trim().parse().expect("count");
    // The init, the shell, ls and grep: nothing of the host's dozens of processes.
    assert!(count <= 5, "{count} processes visible: {out}");
    assert!(lines[1].starts_with("sandbox-agent-init "), "pid 1: {out}");
    assert_eq!(lines[2], "self=2", "{out}");
    assert_eq!(lines[3], "host-hidden", "{out}");
    assert!(
        !lines[4].contains("sandbox-agent ") && !lines[4].contains("cargo"),
        "{out}"
    );
}

#[test]
fn signals_reach_the_workload_through_its_init_and_orphans_are_reaped() {
    // A shell that leaves orphans behind, then waits for a TERM the agent forwards.
    let mut sandbox = live(
        &[],
        "for i in 1 2 3; do (sleep 0.1 &) ; done; trap 'echo got-term; exit 7' TERM; \
         echo ready; sleep 0.5; ps -e -o stat= | grep -c Z; while :; do sleep 0.1; done",
    );
    assert_eq!(sandbox.line(""), "ready");
    assert_eq!(sandbox.line("").trim(), "0", "zombies were left unreaped");
    sh(&format!("kill -TERM {}", sandbox.pid()));
    assert_eq!(sandbox.line(""), "got-term");
    let end = sandbox.finish();
    assert_eq!(end.code, 7, "the workload's own status: {end:#?}");
}

#[test]
fn host_private_directories_and_the_agents_state_are_invisible() {
    let _run = RUN_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tag = format!("sa-iso-{}", std::process::id());
    let planted: Vec<PathBuf> = ["/tmp", "/var/tmp", "/home", "/root", "/run", "/dev/shm"]
        .iter()
        .map(|d| PathBuf::from(d).join(&tag))
        .filter(|p| p.parent().is_some_and(std::path::Path::is_dir))
        .collect();
    for p in &planted {
        fs::write(p, "host secret").expect("plant a file");
    }
    let out = inside(&format!(
        "for d in /tmp /var/tmp /home /root /run /dev/shm; do \
           [ -e \"$d/{tag}\" ] && echo \"seen $d\"; done; \
         echo inside > /tmp/{tag}-in && echo wrote-tmp; \
         touch /etc/{tag} 2>&1 | grep -q 'Read-only' && echo etc-read-only; \
         ls -A /sys/fs/cgroup | wc -l; ls -A /sys/fs/bpf | wc -l; ls -A /run | wc -l; \
         [ -r /etc/resolv.conf ] && echo resolv; [ -d /etc/ssl/certs ] && echo certs; \
         ls /dev | tr '\\n' ' '"
    ));
    for p in &planted {
        let _ = fs::remove_file(p);
    }
    let lines: Vec<&str> = out.lines().collect();
    assert!(!out.contains("seen "), "host files visible: {out}");
    assert_eq!(lines[0], "wrote-tmp", "{out}");
    assert_eq!(lines[1], "etc-read-only", "{out}");
    assert_eq!(
        &lines[2..5],
        ["0", "0", "0"],
        "cgroupfs, bpffs or /run shown: {out}"
    );
    assert_eq!(&lines[5..7], ["resolv", "certs"], "{out}");
    for dev in ["null", "zero", "urandom", "pts", "shm"] {
        assert!(
            lines[7].split(' ').any(|d| d == dev),
            "/dev lacks {dev}: {out}"
        );
    }
    assert!(
        !lines[7].contains("vda") && !lines[7].contains("kmsg"),
        "{out}"
    );
    // What the sandbox wrote stayed in its own /tmp.
    assert!(!PathBuf::from(format!("/tmp/{tag}-in")).exists());
    // The daemon's state directory (here under /var/lib, outside every private directory)
    // is hidden too.
    let state = PathBuf::from(format!("/var/lib/{tag}-state"));
    fs::create_dir_all(&state).expect("state dir");
    fs::write(state.join("record.json"), "secret").expect("record");
    let config = helpers().join(format!("{tag}.toml"));
    fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).expect("config");
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--config",
        config.to_str().expect("utf-8"),
        "--",
        "/bin/sh",
        "-c",
        &format!("ls -A {} | wc -l", state.display()),
    ]);
    let _ = fs::remove_dir_all(&state);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(
        run.stdout.trim(),
        "0",
        "the state directory is visible: {run:#?}"
    );
}

/// Puts `/etc/localtime` back as it was when dropped.
struct Restore {
    path: PathBuf,
    saved: PathBuf,
    dir: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::rename(&self.saved, &self.path);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_kept_file_that_points_into_run_stays_readable() {
    let _run = RUN_DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Hosts with systemd-resolved link /etc/resolv.conf into /run, which the view covers;
    // /etc/localtime is kept the same way, and changing it here disturbs nothing else.
    let localtime = PathBuf::from("/etc/localtime");
    let dir = PathBuf::from(format!("/run/sa-iso-zone-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("zone dir");
    let content = format!("zone-{}", std::process::id());
    fs::write(dir.join("localtime"), &content).expect("zone file");
    let saved = PathBuf::from(format!("/etc/.localtime-sa-{}", std::process::id()));
    if fs::symlink_metadata(&localtime).is_ok() {
        fs::rename(&localtime, &saved).expect("save /etc/localtime");
    }
    let _restore = Restore {
        path: localtime.clone(),
        saved,
        dir: dir.clone(),
    };
    std::os::unix::fs::symlink(dir.join("localtime"), &localtime).expect("link");
    let out = inside("cat /etc/localtime; echo; ls -A /run | tr '\\n' ' '");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], content, "{out}");
    // Only the kept file's directory is there, nothing else of the host's /run.
    assert_eq!(
        lines[1].trim(),
        dir.file_name().and_then(|n| n.to_str()).expect("name"),
        "{out}"
    );
}

#[test]
fn a_host_unix_socket_outside_the_private_directories_is_unreachable() {
    use std::os::unix::fs::PermissionsExt as _;
    // Not below /tmp or /run: only the per-socket cover hides it.
    let path = helpers().join(format!("host-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind the path socket");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
    let script = helpers().join("adversary.py");
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--",
        "/usr/bin/python3",
        script.to_str().expect("utf-8"),
        "unix",
        path.to_str().expect("utf-8"),
    ]);
    listener.set_nonblocking(true).expect("nonblocking");
    let accepted = listener.accept();
    let _ = fs::remove_file(&path);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        matches!(accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the sandbox connected to the host's unix socket {}: {run:#?}",
        path.display()
    );
    assert!(run.outcome("unix-connect").starts_with('E'), "{run:#?}");
}

/// Whether the cgroup v2 hierarchy offers `controller` (this test host is hybrid: memory,
/// cpu and pids are on v1 here).
fn has_controller(controller: &str) -> bool {
    let root = sandbox_tests::cgroup2_mount();
    fs::read_to_string(root.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

#[test]
fn resource_limits_apply_or_are_refused_naming_the_missing_controller() {
    // Bad units are refused before anything exists, on every path.
    let run = agent_cmd(&["run", "--embedded", "--memory", "12q", "--", "/bin/true"]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(run.stderr.contains("invalid --memory \"12q\""), "{run:#?}");
    let run = agent_cmd(&["run", "--embedded", "--cpus", "0", "--", "/bin/true"]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(run.stderr.contains("invalid --cpus \"0\""), "{run:#?}");

    // Memory: an OOM kill where the controller exists, else a refusal naming it.
    let hog = "python3 -c 'b = bytearray(400 << 20); print(len(b))'";
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--memory",
        "64m",
        "--",
        "/bin/sh",
        "-c",
        hog,
    ]);
    if has_controller("memory") {
        assert_eq!(run.code, 137, "{run:#?}");
        assert!(run.stderr.contains("ran out of memory"), "{run:#?}");
    } else {
        assert_eq!(run.code, 125, "{run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(
            run.stderr
                .contains("--memory needs the cgroup v2 \"memory\" controller"),
            "{run:#?}"
        );
        assert!(run.stdout.is_empty(), "the workload ran: {run:#?}");
    }
    // Processes: fork fails past the limit where the controller exists.
    let forks = "for i in $(seq 40); do sleep 2 & done 2>&1 | head -1; wait; echo done";
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--pids",
        "10",
        "--",
        "/bin/sh",
        "-c",
        forks,
    ]);
    if has_controller("pids") {
        assert_eq!(run.code, 0, "{run:#?}");
        assert!(
            run.stdout.contains("fork") || run.stdout.contains("Resource temporarily"),
            "40 processes started under --pids 10: {run:#?}"
        );
    } else {
        assert_eq!(run.code, 125, "{run:#?}");
        assert!(run.stderr.contains("\"pids\" controller"), "{run:#?}");
    }
    let run = agent_cmd(&["run", "--embedded", "--cpus", "0.5", "--", "/bin/true"]);
    if has_controller("cpu") {
        assert_eq!(run.code, 0, "{run:#?}");
    } else {
        assert_eq!(run.code, 125, "{run:#?}");
        assert!(run.stderr.contains("\"cpu\" controller"), "{run:#?}");
    }
}

#[test]
fn daemon_sandboxes_have_their_own_uids_and_execs_enter_their_namespaces() {
    let d = TestDaemon::start();
    let id = d.ok(&[
        "create",
        "--",
        "/bin/sh",
        "-c",
        "echo from-main > /tmp/mark; exec sleep 60",
    ]);
    let view = d.inspect(&id);
    let uid = u32::try_from(view["uid"].as_u64().expect("uid")).expect("u32");
    assert!(in_range(uid), "{view}");
    assert_eq!(view["user"], "sandbox");
    let exec = |cmd: &str| d.ok(&["exec", &id, "--", "/bin/sh", "-c", cmd]);
    // The exec sees the main process's private /tmp, runs as its uid, in its PID namespace.
    let seen = (0..50)
        .map(|_| {
            thread::sleep(Duration::from_millis(20));
            exec("cat /tmp/mark 2>/dev/null || true")
        })
        .find(|o| o == "from-main");
    assert_eq!(
        seen.as_deref(),
        Some("from-main"),
        "the exec sees another /tmp"
    );
    assert_eq!(exec("id -u"), uid.to_string());
    let procs = exec("ps -e -o pid=,comm= | tr -s ' ' | tr '\\n' ';'");
    assert!(procs.starts_with("1 sandbox-init;"), "{procs}");
    assert!(
        procs.contains("sleep"),
        "the exec does not see the sandbox's processes: {procs}"
    );
    // A second sandbox has another uid and sees neither.
    let other = d.ok(&["create", "--", "/bin/sleep", "60"]);
    let other_uid = d.inspect(&other)["uid"].as_u64().expect("uid");
    assert_ne!(u64::from(uid), other_uid);
    let theirs = d.ok(&[
        "exec",
        &other,
        "--",
        "/bin/sh",
        "-c",
        "cat /tmp/mark 2>&1; ps -e -o comm= | tr '\\n' ' '",
    ]);
    assert!(
        !theirs.contains("from-main") && !theirs.contains("sh -c"),
        "{theirs}"
    );
    // After a daemon restart, execs still enter the sandbox.
    let mut d = d;
    d.kill9();
    d.spawn();
    assert_eq!(
        d.ok(&["exec", &id, "--", "/bin/cat", "/tmp/mark"]),
        "from-main"
    );
    d.cli(&["kill", &id]);
    d.cli(&["kill", &other]);
}

#[test]
fn an_exhausted_uid_range_refuses_a_create_whole() {
    // Two ids only; the test takes them from the end of the default range.
    let first = UID_FIRST + UID_COUNT - 2;
    let d = TestDaemon::start_with(&format!("uid_first = {first}\nuid_count = 2\n"));
    let a = d.ok(&["create", "--", "/bin/sleep", "60"]);
    let b = d.ok(&["create", "--", "/bin/sleep", "60"]);
    let run = d.cli(&["create", "--name", "third", "--", "/bin/sleep", "60"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("is exhausted"), "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    let (status, _) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(r#"{"command": ["/bin/sleep", "60"]}"#),
    );
    assert_eq!(status, 409);
    // Nothing of it was made, and its name is free.
    let ls = d.ok(&["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.contains("running")).count(),
        2,
        "{ls}"
    );
    // A uid comes back once its sandbox has ended.
    d.cli(&["kill", &a]);
    let start = Instant::now();
    loop {
        let run = d.cli(&["create", "--name", "third", "--", "/bin/sleep", "60"]);
        if run.code == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{run:#?}");
        thread::sleep(Duration::from_millis(100));
    }
    d.cli(&["kill", &b]);
    d.cli(&["kill", "third"]);
}

#[test]
fn uid_ranges_that_meet_host_users_are_refused() {
    let config = helpers().join(format!("uid-overlap-{}.toml", std::process::id()));
    // nobody is 65534.
    fs::write(&config, "uid_first = 65000\nuid_count = 1000\n").expect("config");
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--config",
        config.to_str().expect("utf-8"),
        "--",
        "/bin/true",
    ]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(
        run.stderr.contains("overlaps user nobody (65534)"),
        "{run:#?}"
    );
}

#[test]
fn root_is_uid_0_of_its_own_user_namespace_with_no_host_capability() {
    let out = inside_with(
        &["--root"],
        "id -u; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; echo \"HOME=$HOME\"; \
         touch /root/f && echo root-home-writable; \
         mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED || echo mount-refused; \
         unshare -U true 2>/dev/null && echo NESTED || echo nested-refused; \
         python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' \
           2>/dev/null && echo RAW || echo raw-refused; \
         touch /tmp/x; chown 1000 /tmp/x 2>/dev/null && echo CHOWNED || echo chown-refused",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    let map: Vec<&str> = lines[1].split(' ').collect();
    assert_eq!(map.len(), 3, "{out}");
    let host_uid: u32 = map[1].parse().expect("uid");
    assert!(
        map[0] == "0" && map[2] == "1" && in_range(host_uid),
        "{out}"
    );
    assert_eq!(
        &lines[2..],
        [
            "HOME=/root",
            "root-home-writable",
            "mount-refused",
            "nested-refused",
            "raw-refused",
            "chown-refused"
        ],
        "{out}"
    );
    // The host sees the sandbox's own uid, not root.
    let sandbox = live(&["--root"], "echo up; sleep 30");
    assert_eq!(sandbox.line(""), "up");
    let uids = sh(&format!(
        "for p in $(cat /proc/{}/task/*/children); do ps -o uid= --ppid $p; ps -o uid= -p $p; done",
        sandbox.pid()
    ));
    assert!(
        !uids.is_empty()
            && uids
                .split_whitespace()
                .all(|u| u.parse().is_ok_and(in_range)),
        "host uids of a --root sandbox: {uids:?}"
    );
    // --root with --user is refused before anything starts.
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--root",
        "--user",
        "nobody",
        "--",
        "/bin/true",
    ]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(
        run.stderr.contains("cannot be combined with --user"),
        "{run:#?}"
    );
}

#[test]
fn execs_into_a_root_sandbox_are_its_root() {
    let d = TestDaemon::start();
    let id = d.ok(&[
        "create",
        "--root",
        "--",
        "/bin/sh",
        "-c",
        "echo from-root > /root/mark; exec sleep 60",
    ]);
    let view = d.inspect(&id);
    assert_eq!(view["root"], true, "{view}");
    assert_eq!(view["user"], "root", "{view}");
    let seen = (0..50)
        .map(|_| {
            thread::sleep(Duration::from_millis(20));
            d.ok(&[
                "exec",
                &id,
                "--",
                "/bin/sh",
                "-c",
                "id -u; cat /root/mark 2>/dev/null || true",
            ])
        })
        .find(|o| o.ends_with("from-root"));
    assert_eq!(
        seen.as_deref(),
        Some("0\nfrom-root"),
        "the exec is not the sandbox's root"
    );
    let run = d.cli(&["exec", &id, "--user", "nobody", "--", "/bin/true"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("--root sandbox"), "{run:#?}");
    d.cli(&["kill", &id]);
}

#[test]
fn keyrings_are_refused_and_reserved_uids_cannot_be_asked_for() {
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0): per-uid state that outlives
    // a sandbox; request_key would start host helpers.
    let out = inside(
        "python3 -c 'import ctypes, os; l = ctypes.CDLL(None, use_errno=True); \
         r = l.syscall(250, 0, -4, 0); print(r, os.strerror(ctypes.get_errno()))'",
    );
    assert!(out.starts_with("-1 Operation not permitted"), "{out}");
    let uid = format!("{}", UID_FIRST + 7);
    let run = agent_cmd(&["run", "--embedded", "--user", &uid, "--", "/bin/true"]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(
        run.stderr.contains("reserved for sandboxes' own ids"),
        "{run:#?}"
    );
}

#[test]
fn config_default_limits_apply_or_are_refused() {
    // `state` says what the host's cgroup v2 hierarchy offers, and what else it lacks.
    let st = sandbox_tests::state();
    let offered = st["cgroup_v2_controllers"]
        .as_array()
        .unwrap_or_else(|| panic!("no controllers in state: {st}"));
    assert_eq!(
        offered.iter().any(|c| c == "pids"),
        has_controller("pids"),
        "{st}"
    );
    assert!(st["host_gaps"].is_array(), "{st}");
    let config = helpers().join(format!("default-limits-{}.toml", std::process::id()));
    fs::write(&config, "default_pids = \"50\"\n").expect("config");
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--config",
        config.to_str().expect("utf-8"),
        "--",
        "/bin/true",
    ]);
    if has_controller("pids") {
        assert_eq!(run.code, 0, "{run:#?}");
    } else {
        assert_eq!(run.code, 125, "{run:#?}");
        assert!(
            run.stderr
                .contains("--pids needs the cgroup v2 \"pids\" controller"),
            "{run:#?}"
        );
    }
}

#[test]
fn host_sockets_behind_links_or_in_replaced_directories_do_not_stop_a_start() {
    // Docker's /var/run/docker.sock is /run/docker.sock through a link; any local user can
    // bind one in /dev/shm. Neither may keep a sandbox from starting.
    let pid = std::process::id();
    let paths = [
        PathBuf::from(format!("/var/run/sa-iso-{pid}.sock")),
        PathBuf::from(format!("/dev/shm/sa-iso-{pid}.sock")),
    ];
    let listeners: Vec<UnixListener> = paths
        .iter()
        .filter(|p| p.parent().is_some_and(std::path::Path::is_dir))
        .map(|p| {
            let _ = fs::remove_file(p);
            UnixListener::bind(p).expect("bind")
        })
        .collect();
    let run = agent_cmd(&["run", "--embedded", "--", "/bin/true"]);
    for p in &paths {
        let _ = fs::remove_file(p);
    }
    drop(listeners);
    assert_eq!(run.code, 0, "{run:#?}");
}

#[test]
fn a_sandbox_whose_agent_was_killed_keeps_its_uid() {
    // One uid only: while the first sandbox runs on, orphaned by its agent, no other may
    // take it.
    let first = UID_FIRST + UID_COUNT - 3;
    let config = helpers().join(format!("one-uid-{}.toml", std::process::id()));
    fs::write(&config, format!("uid_first = {first}\nuid_count = 1\n")).expect("config");
    let config = config.to_str().expect("utf-8");
    let orphaned = live(&["--config", config], "echo up; exec sleep 30");
    orphaned.line("up");
    // Its agent dies at once; the sandbox runs on.
    sh(&format!("kill -9 {}", orphaned.pid()));
    drop(orphaned);
    let run = agent_cmd(&["run", "--embedded", "--config", config, "--", "/bin/true"]);
    // The orphan goes (its processes are the uid's), then the uid is free again.
    sh(&format!("pkill -9 -u {first} || true"));
    let start = Instant::now();
    let again = loop {
        let again = agent_cmd(&["run", "--embedded", "--config", config, "--", "/bin/true"]);
        if again.code == 0 || start.elapsed() > Duration::from_secs(10) {
            break again;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        run.code, 125,
        "a second sandbox got the orphan's uid: {run:#?}"
    );
    assert!(run.stderr.contains("is exhausted"), "{run:#?}");
    assert_eq!(again.code, 0, "the uid did not come back: {again:#?}");
}
