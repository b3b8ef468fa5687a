//! The daemon end to end: lifecycle through the CLI and raw HTTP on its socket, time limits,
//! probes, exec narrowing, live policy changes, the host floor, events and metrics, and a
//! `kill -9` of the daemon under load. Real kernel, real traffic into test namespaces.
use std::{thread, time::Duration};

use sandbox_tests::{HOLD_PORT, PORT, RemoteHost, daemon::TestDaemon, helpers};

/// A python program run in a sandbox.
fn py(code: &str) -> Vec<String> {
    vec!["/usr/bin/python3".into(), "-c".into(), code.into()]
}

/// `create` arguments: flags, then `--`, then the command.
fn create(d: &TestDaemon, flags: &[&str], command: &[String]) -> String {
    let mut args = vec!["create"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend(command.iter().map(String::as_str));
    d.ok(&args)
}

/// A TCP connect from python: prints `<addr> ok` or `<addr> <errno name>`.
const CONNECT: &str = r"
import errno, socket, sys
def connect(addr, port):
    s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((addr, port)); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
";

#[test]
fn lifecycle_through_the_cli() {
    let d = TestDaemon::start();
    // Output, stdin, exit status.
    let id = create(
        &d,
        &[
            "--name",
            "life-1",
            "--tag",
            "team=blue",
            "--tag",
            "tier=web",
            "--stdin",
        ],
        &[
            "/bin/sh".into(),
            "-c".into(),
            "echo started; read line; echo got $line; echo oops >&2; exit 7".into(),
        ],
    );
    d.wait_output(&id, "started");
    let stdin = d.cli(&["stdin", "life-1"]);
    assert_eq!(stdin.code, 0, "{stdin:#?}");
    // No newline: `read` waits for the close, so the sandbox is still there to close it.
    let (status, _) = d.http("POST", "/v1/sandboxes/life-1/stdin", Some(b"hello"));
    assert_eq!(status, 204);
    let (status, _) = d.http("POST", "/v1/sandboxes/life-1/stdin/close", None);
    assert_eq!(status, 204);
    let wait = d.cli(&["wait", "life-1"]);
    assert_eq!(wait.code, 7, "{wait:#?}");
    assert_eq!(wait.stdout.trim(), "exited 7");
    let logs = d.cli(&["logs", &id]);
    assert_eq!(logs.stdout, "started\ngot hello\n");
    assert_eq!(logs.stderr, "oops\n");
    let v = d.inspect(&id);
    assert_eq!(v["state"], "exited");
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["end_reason"], "exited");

    // Names: unique among live sandboxes, reusable after; lookup by name.
    let a = create(
        &d,
        &["--name", "life-2", "--tag", "team=blue"],
        &["sleep".into(), "60".into()],
    );
    let clash = d.cli(&["create", "--name", "life-2", "--", "true"]);
    assert_eq!(clash.code, 125);
    assert!(
        clash
            .stderr
            .contains("name \"life-2\" is taken by a live sandbox"),
        "{clash:#?}"
    );
    let bad = d.cli(&["create", "--name", "bad name", "--", "true"]);
    assert!(bad.stderr.contains("invalid name \"bad name\""), "{bad:#?}");
    let b = create(&d, &["--tag", "team=red"], &["sleep".into(), "60".into()]);

    // ls filters by tag, name and state.
    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["ls", "--json"];
        a.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&d.ok(&a)).expect("ls json");
        let mut ids: Vec<String> = v
            .as_array()
            .expect("list")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut blue = vec![id.clone(), a.clone()];
    blue.sort();
    assert_eq!(ids(&["--tag", "team=blue"]), blue);
    assert_eq!(
        ids(&["--tag", "team=blue", "--tag", "tier=web"]),
        vec![id.clone()]
    );
    assert_eq!(ids(&["--tag", "team=red"]), vec![b.clone()]);
    assert_eq!(ids(&["--name", "life-2"]), vec![a.clone()]);
    let mut running = vec![a.clone(), b.clone()];
    running.sort();
    assert_eq!(ids(&["--state", "running"]), running);
    assert_eq!(ids(&["--state", "exited"]), vec![id.clone()]);

    // kill: 137; rm refuses a live sandbox unless forced; removed ones are gone.
    let kill = d.cli(&["kill", "life-2"]);
    assert_eq!(kill.code, 137, "{kill:#?}");
    assert_eq!(d.inspect(&a)["end_reason"], "killed");
    let rm_live = d.cli(&["rm", &b]);
    assert_eq!(rm_live.code, 125);
    assert!(rm_live.stderr.contains("is running"), "{rm_live:#?}");
    d.ok(&["rm", "--force", &b]);
    d.ok(&["rm", &id]);
    let gone = d.cli(&["inspect", &id]);
    assert!(
        gone.stderr.contains("no sandbox with id or name"),
        "{gone:#?}"
    );
    // The name is free again once its sandbox has ended.
    let again = create(&d, &["--name", "life-2"], &["true".into()]);
    assert_ne!(again, a);
}

#[test]
fn raw_http_api_and_bad_input() {
    let d = TestDaemon::start();
    let (status, doc) = d.json("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/sandboxes"].is_object(), "{doc}");

    let (status, v) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(r#"{"command":["/bin/echo","via http"],"name":"raw-1","tags":{"k":"v"}}"#),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let (status, w) = d.json("GET", &format!("/v1/sandboxes/{id}/wait"), None);
    assert_eq!(status, 200);
    assert_eq!(w["exit_code"], 0);
    assert_eq!(d.stdout("raw-1"), "via http\n");

    for (body, expect) in [
        ("{not json", "Failed to parse the request body as JSON"),
        (
            r#"{"command":["true"],"comand":["x"]}"#,
            "unknown field `comand`",
        ),
        (r#"{"command":"true"}"#, "invalid type"),
        (
            r#"{"command":["true"],"policy":{"network":"sideways"}}"#,
            "unknown variant",
        ),
    ] {
        let (status, v) = d.json("POST", "/v1/sandboxes", Some(body));
        assert!((400..500).contains(&status), "{body}: {status} {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(expect), "{body}: {msg}");
    }
    let (status, v) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(
            r#"{"command":["true"],"policy":{"network":"allowlist","allow_out":["10.0.0.0/33"]}}"#,
        ),
    );
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("10.0.0.0/33"),
        "{v}"
    );
    let (status, v) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(r#"{"command":["true"],"timeout":"25h"}"#),
    );
    assert_eq!(status, 400, "{v}");
    let big = format!(
        r#"{{"command":["true"],"env":{{"X":"{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    let (status, _) = d.http("POST", "/v1/sandboxes", Some(big.as_bytes()));
    assert_eq!(status, 413);
    let (status, v) = d.json("GET", "/v1/nothing", None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = d.json("GET", "/v1/sandboxes/no-such", None);
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap_or_default().contains("no-such"));
    let (status, _) = d.json("GET", "/v1/sandboxes?colour=red", None);
    assert_eq!(status, 400);
    // One daemon per host.
    let second = d.cli(&[
        "daemon",
        "--socket",
        "/tmp/sa-second.sock",
        "--state-dir",
        "/tmp/sa-second",
    ]);
    assert_eq!(second.code, 125);
    assert!(
        second
            .stderr
            .contains("another sandbox-agent daemon is running"),
        "{second:#?}"
    );
    let _ = std::fs::remove_dir_all("/tmp/sa-second");
    // Still serving after all that.
    let (status, _) = d.json("GET", "/v1/health", None);
    assert_eq!(status, 200);
}

#[test]
fn timeout_and_idle_timeout_fire_and_are_recorded() {
    let d = TestDaemon::start();
    let t = create(&d, &["--timeout", "1s"], &["sleep".into(), "60".into()]);
    let idle = create(
        &d,
        &["--idle-timeout", "1s"],
        &["sleep".into(), "60".into()],
    );
    // Busy with an exec for longer than the idle timeout: not idle.
    let busy = create(
        &d,
        &["--idle-timeout", "1500ms"],
        &["sleep".into(), "60".into()],
    );
    let exec = d.cli(&["exec", &busy, "--", "sleep", "3"]);
    assert_eq!(exec.code, 0, "{exec:#?}");
    assert_eq!(
        d.inspect(&busy)["state"],
        "running",
        "idle while an exec ran"
    );
    d.wait_for(&t, "timeout", |v| v["state"] == "exited");
    let v = d.inspect(&t);
    assert_eq!(v["end_reason"], "timeout");
    assert_eq!(v["exit_code"], 137);
    d.wait_for(&idle, "idle timeout", |v| v["state"] == "exited");
    assert_eq!(d.inspect(&idle)["end_reason"], "idle-timeout");
    d.wait_for(&busy, "idle timeout after the exec", |v| {
        v["end_reason"] == "idle-timeout"
    });
}

#[test]
fn readiness_probes() {
    let d = TestDaemon::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Listens after a second.
    let server = format!(
        "import socket, time\ntime.sleep(1)\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\ntime.sleep(60)"
    );
    let tcp = create(
        &d,
        &["--probe-tcp", &port.to_string(), "--probe-timeout", "20s"],
        &py(&server),
    );
    assert_eq!(d.inspect(&tcp)["ready"], false);
    let ready = d.cli(&["wait-ready", &tcp]);
    assert_eq!(ready.code, 0, "{ready:#?}");
    assert_eq!(d.inspect(&tcp)["ready"], true);

    let exec = create(
        &d,
        &["--probe-exec", "test -d /tmp", "--probe-timeout", "20s"],
        &["sleep".into(), "60".into()],
    );
    assert_eq!(d.cli(&["wait-ready", &exec]).code, 0);

    let none = create(&d, &[], &["sleep".into(), "60".into()]);
    let r = d.cli(&["wait-ready", &none]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("has no readiness probe"), "{r:#?}");

    let never = create(
        &d,
        &["--probe-exec", "false", "--probe-timeout", "1s"],
        &["sleep".into(), "60".into()],
    );
    let r = d.cli(&["wait-ready", &never]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("not ready after 1s"), "{r:#?}");

    let dies = create(&d, &["--probe-tcp", "9"], &["true".into()]);
    let r = d.cli(&["wait-ready", &dies]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("ended before it was ready"), "{r:#?}");
}

#[test]
fn exec_can_narrow_but_never_broaden_the_sandbox_policy() {
    let host = RemoteHost::new();
    let (a, b, c) = (&host.v4[0], &host.v4[1], &host.v4[2]);
    let d = TestDaemon::start();
    let sb = create(
        &d,
        &["--network", "allowlist", "--allow-out", a, "--allow-out", b],
        &["sleep".into(), "120".into()],
    );
    let probe = |extra: &[&str], target: &str| -> String {
        let code = format!("{CONNECT}\nprint(connect('{target}', {PORT}))");
        let mut args = vec!["exec", sb.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "/usr/bin/python3", "-c", &code]);
        let run = d.cli(&args);
        assert_eq!(run.code, 0, "{run:#?}");
        run.stdout.trim().to_owned()
    };
    // Without narrowing, the sandbox's policy.
    assert_eq!(probe(&[], b), "ok");
    // Narrowed to a: b is refused in the kernel.
    assert_eq!(
        probe(&["--network", "allowlist", "--allow-out", a], b),
        "EPERM"
    );
    assert_eq!(
        probe(&["--network", "allowlist", "--allow-out", a], a),
        "ok"
    );
    assert_eq!(probe(&["--deny-out", a], a), "EPERM");
    // Asking for more than the ceiling gets nothing more.
    assert_eq!(probe(&["--network", "open"], c), "EPERM");
    assert_eq!(
        probe(&["--network", "allowlist", "--allow-out", c], c),
        "EPERM"
    );
    assert!(host.saw_tcp(a) && host.saw_tcp(b), "{:?}", host.seen());
    assert!(
        !host.saw_tcp(c),
        "a connection beyond the ceiling arrived: {:?}",
        host.seen()
    );
    let seen_b = host
        .seen()
        .iter()
        .filter(|l| **l == format!("tcp {b}"))
        .count();
    assert_eq!(
        seen_b,
        1,
        "only the unnarrowed exec reached b: {:?}",
        host.seen()
    );
}

#[test]
fn live_policy_change_cuts_an_established_connection_and_opens_a_new_address() {
    let host = RemoteHost::new();
    let (a, b) = (&host.v4[0], &host.v4[1]);
    let d = TestDaemon::start();
    // Holds a connection to a, sending a numbered line every 50 ms; once that fails, keeps
    // trying b (bounded).
    let code = format!(
        r"{CONNECT}
import time
s = socket.create_connection(('{a}', {HOLD_PORT}), timeout=3)
print('connected', flush=True)
i = 0
try:
    for i in range(2000):
        s.sendall(b'line %d\n' % i)
        time.sleep(0.05)
    print('never cut', flush=True)
except OSError as e:
    print('cut', errno.errorcode.get(e.errno, str(e)), flush=True)
for _ in range(100):
    r = connect('{b}', {PORT})
    print('b', r, flush=True)
    if r == 'ok':
        break
    time.sleep(0.1)
"
    );
    let sb = create(
        &d,
        &["--network", "allowlist", "--allow-out", a],
        &py(&code),
    );
    d.wait_output(&sb, "connected");
    let lines = || {
        host.seen()
            .iter()
            .filter(|l| l.starts_with(&format!("data {a} ")))
            .count()
    };
    let start = std::time::Instant::now();
    while lines() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no data: {:?}",
            host.seen()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Before the change, b is refused.
    let out = d.stdout(&sb);
    assert!(!out.contains("b "), "{out}");
    d.ok(&[
        "policy",
        "set",
        &sb,
        "--network",
        "allowlist",
        "--allow-out",
        b,
    ]);
    let out = d.wait_output(&sb, "b ok");
    assert!(
        out.contains("cut "),
        "the held connection was not cut: {out}"
    );
    let after = lines();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lines(),
        after,
        "data still arrived after the cut: {:?}",
        host.seen()
    );
    assert!(host.saw_tcp(b), "{:?}", host.seen());
    let v = d.inspect(&sb);
    assert_eq!(v["policy"]["allow_out"][0], b.as_str());
}

#[test]
fn host_floor_beats_a_policy_that_allows_metadata() {
    let host = RemoteHost::new();
    let ll = host.link_local.clone();
    let a = host.v4[0].clone();
    let d = TestDaemon::start();
    let code = format!("{CONNECT}\nprint(connect('{ll}', {PORT}), connect('{a}', {PORT}))");
    for flags in [
        vec!["--network", "open"],
        vec![
            "--network",
            "allowlist",
            "--allow-out",
            &ll,
            "--allow-out",
            &a,
        ],
        vec![
            "--network",
            "allowlist",
            "--allow-out",
            "@cloud-metadata",
            "--allow-out",
            &a,
            "--precedence",
            "allow-wins",
        ],
    ] {
        let sb = create(&d, &flags, &py(&code));
        d.ok(&["wait", &sb]);
        assert_eq!(d.stdout(&sb).trim(), "EPERM ok", "{flags:?}");
    }
    assert!(
        !host.saw_tcp(&ll),
        "metadata was reached: {:?}",
        host.seen()
    );
    assert!(host.saw_tcp(&a));
    drop(d);

    // An operator can set another floor; an empty one lets the sandbox's policy decide.
    let open_floor = TestDaemon::start_with("floor_deny = []");
    let sb = create(
        &open_floor,
        &["--network", "allowlist", "--allow-out", &ll],
        &py(&code),
    );
    open_floor.ok(&["wait", &sb]);
    assert!(
        open_floor.stdout(&sb).starts_with("ok"),
        "{}",
        open_floor.stdout(&sb)
    );
}

#[test]
fn events_and_metrics_show_a_denied_connect() {
    let host = RemoteHost::new();
    let (a, b) = (&host.v4[0], &host.v4[1]);
    let d = TestDaemon::start();
    let code = format!("{CONNECT}\nprint(connect('{a}', {PORT}), connect('{b}', {PORT}))");
    let sb = create(
        &d,
        &["--name", "evt", "--network", "allowlist", "--allow-out", a],
        &py(&code),
    );
    d.ok(&["wait", &sb]);
    assert_eq!(d.stdout(&sb).trim(), "ok EPERM");
    let events = d.ok(&["events", "--sandbox", "evt", "--verdict", "denied"]);
    let denied: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    assert!(
        denied.iter().any(|e| e["kind"] == "connect"
            && e["peer"] == b.as_str()
            && e["port"] == PORT
            && e["sandbox"] == sb.as_str()
            && e["reason"] == "no rule allows it"),
        "{events}"
    );
    assert!(
        denied
            .iter()
            .all(|e| e["verdict"] == "denied" && e["sandbox"] == sb.as_str())
    );

    // A live sandbox's counters are in the metrics.
    let live = create(
        &d,
        &["--network", "allowlist", "--allow-out", a],
        &py(&format!(
            "{CONNECT}\nimport time\nprint(connect('{b}', {PORT}), flush=True)\ntime.sleep(60)"
        )),
    );
    d.wait_output(&live, "EPERM");
    let metrics = d.metrics();
    assert!(
        metrics.contains(&format!(
            "sandbox_agent_connects_refused{{sandbox=\"{live}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandbox_agent_sandboxes{state=\"running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sandbox_agent_packets{"), "{metrics}");
    // Followers get new events as they happen.
    let follower = {
        let socket = d.socket.clone();
        let sb = live.clone();
        thread::spawn(move || {
            std::process::Command::new(sandbox_tests::agent())
                .args(["events", "--follow", "--sandbox", &sb])
                .env("SANDBOX_AGENT_SOCKET", socket)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("events --follow")
        })
        .join()
        .expect("spawn")
    };
    thread::sleep(Duration::from_millis(300));
    d.cli(&[
        "exec",
        &live,
        "--",
        "/usr/bin/python3",
        "-c",
        &format!("{CONNECT}\nconnect('{b}', 1)"),
    ]);
    thread::sleep(Duration::from_millis(300));
    sandbox_tests::sh_quiet(&format!("kill {}", follower.id()));
    let out = follower.wait_with_output().expect("follower");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("\"port\":1,") && l.contains(b.as_str())),
        "{text}"
    );
    assert!(helpers().exists());
}

#[test]
fn daemon_kill9_under_load_fails_closed_and_restart_readopts() {
    let host = RemoteHost::new();
    let (allowed, denied) = (&host.v4[0], &host.v4[1]);
    let mut d = TestDaemon::start();
    // Hammers b over TCP and UDP (denied) and prints a heartbeat, for 60 s at most.
    let code = format!(
        r"{CONNECT}
import time
end = time.time() + 60
n = 0
while time.time() < end:
    connect('{denied}', {PORT})
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'leak', ('{denied}', {PORT})); u.close()
    except OSError:
        pass
    n += 1
    if n % 50 == 0:
        print('beat', n, flush=True)
    time.sleep(0.005)
"
    );
    let sb = create(
        &d,
        &[
            "--name",
            "hammer",
            "--network",
            "allowlist",
            "--allow-out",
            allowed,
        ],
        &py(&code),
    );
    d.wait_output(&sb, "beat");
    d.kill9();
    thread::sleep(Duration::from_secs(2));
    // The sandbox kept running while no daemon was there, and nothing reached b.
    let out = std::fs::read_to_string(d.dir.join(format!("state/sandboxes/{sb}/stdout.log")))
        .expect("stdout file");
    let beats = out.lines().filter(|l| l.starts_with("beat")).count();
    assert!(beats >= 2, "{out}");
    assert!(
        !host.saw_tcp(denied) && !host.saw_udp(denied, "leak"),
        "{:?}",
        host.seen()
    );

    d.spawn();
    let v = d.inspect("hammer");
    assert_eq!(v["id"], sb.as_str());
    assert_eq!(v["state"], "running");
    let list = d.ok(&["ls", "--state", "running"]);
    assert!(list.contains(&sb), "{list}");
    // Supervised again: output continues, kill works, and the end is recorded.
    let printed = d.stdout(&sb).len();
    let start = std::time::Instant::now();
    while d.stdout(&sb).len() == printed {
        assert!(start.elapsed() < Duration::from_secs(10), "no more output");
        thread::sleep(Duration::from_millis(50));
    }
    let kill = d.cli(&["kill", &sb]);
    assert_eq!(kill.code, 137, "{kill:#?}");
    assert!(
        !host.saw_tcp(denied) && !host.saw_udp(denied, "leak"),
        "{:?}",
        host.seen()
    );
}

#[test]
fn domain_rules_through_the_daemon_fail_closed_while_it_is_down() {
    use sandbox_tests::web::WebWorld;
    let w = WebWorld::new();
    let mut d = TestDaemon::start_with(&format!("upstream_dns = \"{}\"", w.upstream()));
    let client = helpers().join("webclient.py").display().to_string();
    let ca = w.ca().display().to_string();
    // Every 300 ms: a fresh resolution and an HTTPS request to an allowed name, and one to a
    // denied name, each line tagged with its round (bounded: 400 rounds).
    let script = format!(
        "for i in $(seq 400); do /usr/bin/python3 {client} \
         \"resolve r$i allowed.test\" \
         \"curl a$i --cacert {ca} -4 --max-time 3 https://allowed.test/\" \
         \"curl d$i --cacert {ca} -4 --max-time 3 https://denied.test/\"; sleep 0.3; done"
    );
    let sb = create(
        &d,
        &["--network", "allowlist", "--allow-out", "allowed.test"],
        &["/bin/sh".into(), "-c".into(), script],
    );
    let a3 = w.v4(3);
    let out = d.wait_output(&sb, "d2 ");
    let round = |out: &str, label: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{label} ")).map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(round(&out, "r1").starts_with("ok "), "{out}");
    assert!(
        round(&out, "a1").starts_with(&format!("exit=0 hello from {a3} sni=allowed.test")),
        "{out}"
    );
    assert!(!round(&out, "d1").starts_with("exit=0"), "{out}");
    // The resolver's and the proxy's decisions are events of the sandbox.
    let events = d.ok(&["events", "--sandbox", &sb]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"source\":\"proxy\"") && l.contains("\"name\":\"allowed.test\"")),
        "{events}"
    );
    assert!(
        events.lines().any(|l| l.contains("\"name\":\"denied.test\"")
            && l.contains("\"verdict\":\"denied\"")),
        "{events}"
    );

    // Daemon gone: no new name is resolved and no connection goes out for a name.
    d.kill9();
    let dead_from = d.stdout_file(&sb).lines().count();
    thread::sleep(Duration::from_secs(2));
    let queries_then = w.upstream_queries().len();
    let tls_then = w.seen().iter().filter(|l| l.starts_with("tls ")).count();
    thread::sleep(Duration::from_secs(2));
    let down: Vec<String> = d
        .stdout_file(&sb)
        .lines()
        .skip(dead_from)
        .map(str::to_owned)
        .collect();
    let rounds_down: Vec<&String> = down.iter().filter(|l| l.starts_with('a')).collect();
    assert!(rounds_down.len() >= 2, "the workload stopped: {down:?}");
    assert!(
        rounds_down.iter().all(|l| !l.contains("exit=0")),
        "a request for a name succeeded with no daemon: {down:?}"
    );
    assert!(
        down.iter()
            .filter(|l| l.starts_with('r'))
            .all(|l| !l.split_once(' ').is_some_and(|(_, o)| o.starts_with("ok"))),
        "a name resolved with no daemon: {down:?}"
    );
    assert_eq!(
        w.upstream_queries().len(),
        queries_then,
        "the resolver was asked"
    );
    assert_eq!(
        w.seen().iter().filter(|l| l.starts_with("tls ")).count(),
        tls_then,
        "a TLS connection arrived"
    );

    // Back: the sandbox is re-adopted with its resolver and proxy, and names work again.
    d.spawn();
    let back_from = d.stdout(&sb).lines().count();
    let start = std::time::Instant::now();
    loop {
        let out = d.stdout(&sb);
        let back: Vec<&str> = out.lines().skip(back_from).collect();
        if back.iter().any(|l| {
            l.starts_with('a') && l.contains(&format!("exit=0 hello from {a3} sni=allowed.test"))
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "names did not work again after the restart: {back:?}\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.inspect(&sb)["state"], "running");
}

#[test]
fn policy_change_after_a_restart_reaches_execs_narrowed_before_it() {
    let host = RemoteHost::new();
    let (a, b) = (&host.v4[0], &host.v4[1]);
    let mut d = TestDaemon::start();
    let sb = create(&d, &["--network", "open"], &["sleep".into(), "120".into()]);
    // A narrowed exec (its own kernel entry, the sandbox's policy as its ceiling) that keeps
    // connecting to b, for 60 s at most.
    let code = format!(
        r"{CONNECT}
import time
end = time.time() + 60
while time.time() < end:
    print('b', connect('{b}', {PORT}), flush=True)
    time.sleep(0.1)
"
    );
    let exec = d.ok(&[
        "exec",
        "-d",
        &sb,
        "--deny-out",
        a,
        "--",
        "/usr/bin/python3",
        "-c",
        &code,
    ]);
    let exec_output = |d: &TestDaemon| {
        d.http(
            "GET",
            &format!(
                "/v1/sandboxes/{sb}/execs/{}/logs?stream=stdout",
                exec.trim()
            ),
            None,
        )
        .1
    };
    let wait_exec_output = |d: &TestDaemon, needle: &str| {
        let start = std::time::Instant::now();
        loop {
            let out = exec_output(d);
            if out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the exec never printed {needle:?}: {out}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_exec_output(&d, "b ok");
    // The exec outlives the daemon; the restarted one knows it only from the record.
    d.kill9();
    d.spawn();
    d.ok(&["policy", "set", &sb, "--network", "open", "--deny-out", b]);
    let printed = exec_output(&d).len();
    let start = std::time::Instant::now();
    while !exec_output(&d)[printed..].contains("b EPERM") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the exec still reaches b under the new ceiling: {}",
            &exec_output(&d)[printed..]
        );
        thread::sleep(Duration::from_millis(50));
    }
    let arrived = host.seen().len();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        host.seen().len(),
        arrived,
        "connections still arrive: {:?}",
        host.seen()
    );
    let kill = d.cli(&["kill", &sb]);
    assert_eq!(kill.code, 137, "{kill:#?}");
}
