//! Ingress end to end: sandboxes closed to inbound connections in the kernel, exposed ports
//! through the daemon's gateway (connect tokens, verified user data, HTTP/2, WebSocket) and
//! tunnels (raw TCP, TLS). Real clients: curl, python websockets, openssl, nc.
use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use sandbox_tests::{
    daemon::TestDaemon,
    gateway::{create, curl, path_url, token},
    helpers, sh,
};

/// The web helper binary, where sandboxes (user `nobody`) can run it.
fn web_helper() -> String {
    sandbox_tests::gateway::installed(env!("CARGO_BIN_EXE_sa-web-helper"))
}

fn ws_py() -> String {
    helpers().join("ws.py").display().to_string()
}

#[test]
fn gateway_checks_tokens_and_passes_only_verified_user_data() {
    let d = TestDaemon::start();
    let helper = web_helper();
    // Two sandboxes both listen on 8080: no clash.
    let a = create(
        &d,
        &["--name", "web-a", "--port", "8080", "--probe-tcp", "8080"],
        &[&helper, "8080", "a"],
    );
    let b = create(
        &d,
        &["--port", "8080", "--probe-tcp", "8080"],
        &[&helper, "8080", "b"],
    );
    let (tok_a, tok_a_id) = token(&d, &a, Some(r#"{"user":"ann","roles":["dev"]}"#));
    let (tok_b, _) = token(&d, &b, None);

    // No token: 401; a token of another sandbox: 403; a made-up one: 401.
    assert_eq!(curl(&[&path_url(&d, &a, 8080, "x")]).status, 401);
    let auth_b = format!("Authorization: Bearer {tok_b}");
    assert_eq!(
        curl(&["-H", &auth_b, &path_url(&d, &a, 8080, "x")]).status,
        403
    );
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Bearer sat_madeup",
            &path_url(&d, &a, 8080, "x")
        ])
        .status,
        401
    );

    // Bearer: the workload sees the metadata in X-Verified-User-Data, not the client's
    // forged one, and not the token.
    let auth_a = format!("Authorization: Bearer {tok_a}");
    let r = curl(&[
        "-H",
        &auth_a,
        "-H",
        "X-Verified-User-Data: {\"user\":\"root\"}",
        &path_url(&d, &a, 8080, "hello?x=1"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["server"], "a");
    assert_eq!(seen["path"], "/hello?x=1");
    let user_data: serde_json::Value =
        serde_json::from_str(seen["headers"]["x-verified-user-data"].as_str().unwrap()).unwrap();
    assert_eq!(
        user_data,
        serde_json::json!({"user": "ann", "roles": ["dev"]})
    );
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    query_and_cookie_tokens(&d, &a, &tok_a);

    // Routing by host name, and by the name of the sandbox.
    let r = curl(&[
        "--connect-to",
        &format!("::127.0.0.1:{}", d.ingress_port),
        "-H",
        &auth_a,
        &format!("http://8080-web-a.sandbox.localhost:{}/h", d.ingress_port),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["server"], "a");

    // B's token opens B, whose workload (on the same port) answers, without user data even
    // when the client sends some.
    let r = curl(&[
        "-H",
        &auth_b,
        "-H",
        "X-Verified-User-Data: forged",
        &path_url(&d, &b, 8080, "x"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["server"], "b");
    assert!(
        r.json()["headers"].get("x-verified-user-data").is_none(),
        "{}",
        r.body
    );

    refusals_revocation_and_the_end(&d, &a, &b, &auth_a, &auth_b, &tok_a_id);
    d.cli(&["kill", &a]);
}

/// Query-parameter and cookie tokens: accepted on host routes (the cookie set, the token not
/// forwarded), refused on path routes.
fn query_and_cookie_tokens(d: &TestDaemon, a: &str, tok_a: &str) {
    // Query parameter (on a host route: each sandbox port its own origin): answered, the
    // cookie is set, the parameter is not forwarded.
    let connect_to = format!("::127.0.0.1:{}", d.ingress_port);
    let host_url = |rest: &str| {
        format!(
            "http://8080-{a}.sandbox.localhost:{}/{rest}",
            d.ingress_port
        )
    };
    let r = curl(&[
        "--connect-to",
        &connect_to,
        &host_url(&format!("q?_sandbox_connect_token={tok_a}&y=2")),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/q?y=2");
    let cookie_line = r
        .headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie set: {}", r.headers));
    assert!(
        cookie_line.contains(&format!("_sandbox_connect_token={tok_a}")),
        "{cookie_line}"
    );
    assert!(cookie_line.contains("HttpOnly"), "{cookie_line}");

    // Cookie: answered; the workload gets the client's other cookies only.
    let r = curl(&[
        "--connect-to",
        &connect_to,
        "-b",
        &format!("_sandbox_connect_token={tok_a}; theirs=1"),
        &host_url("c"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["cookie"], "theirs=1");

    // Routes by path share one origin for all sandboxes: there only the bearer header
    // counts, never a query parameter or a cookie.
    let r = curl(&[&path_url(
        d,
        a,
        8080,
        &format!("q?_sandbox_connect_token={tok_a}"),
    )]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = curl(&[
        "-b",
        &format!("_sandbox_connect_token={tok_a}"),
        &path_url(d, a, 8080, "c"),
    ]);
    assert_eq!(r.status, 401, "{}", r.body);
}

/// The rest of `gateway_checks_tokens_and_passes_only_verified_user_data`.
fn refusals_revocation_and_the_end(
    d: &TestDaemon,
    a: &str,
    b: &str,
    auth_a: &str,
    auth_b: &str,
    tok_a_id: &str,
) {
    // A port that is not exposed: 404.
    assert_eq!(
        curl(&["-H", auth_a, &path_url(d, a, 9999, "x")]).status,
        404
    );

    // Revoked: refused.
    d.ok(&["token", a, "--revoke", tok_a_id]);
    assert_eq!(
        curl(&["-H", auth_a, &path_url(d, a, 8080, "x")]).status,
        401
    );
    // Tokens die with their sandbox.
    d.cli(&["kill", b]);
    let r = curl(&["-H", auth_b, &path_url(d, b, 8080, "x")]);
    assert_eq!(r.status, 401, "the token outlived its sandbox: {}", r.body);
    // Metadata over 511 bytes is refused.
    let big = format!("{{\"x\":\"{}\"}}", "y".repeat(600));
    let run = d.cli(&["token", a, "--user-metadata", &big]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("at most 511"), "{}", run.stderr);
}

#[test]
fn http2_and_websocket_through_the_gateway() {
    let d = TestDaemon::start();
    let helper = web_helper();
    let script = format!(
        "{helper} 8080 h1 & {helper} 9090 h2c & exec /usr/bin/python3 {} serve 8765",
        ws_py()
    );
    let sb = create(
        &d,
        &[
            "--port",
            "8080",
            "--port",
            "8765",
            "--h2-port",
            "9090",
            "--probe-tcp",
            "8765",
        ],
        &["/bin/sh", "-c", &script],
    );
    let (tok, _) = token(&d, &sb, None);
    let auth = format!("Authorization: Bearer {tok}");
    let https = |port: u16, rest: &str| {
        format!(
            "https://127.0.0.1:{}/_sandbox/{sb}/{port}/{rest}",
            d.ingress_port
        )
    };
    // HTTP/2 over TLS from the client; HTTP/1.1 to an `http` port's workload.
    let r = curl(&["-k", "--http2", "-H", &auth, &https(8080, "a")]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.body);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    // An `h2` port's workload gets HTTP/2 (cleartext, prior knowledge).
    let r = curl(&["-k", "--http2", "-H", &auth, &https(9090, "b")]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.body);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["server"], "h2c");
    // Plain HTTP/1.1 to the gateway works too.
    let r = curl(&["-H", &auth, &path_url(&d, &sb, 8080, "c")]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{}", r.body);

    // WebSocket echo, over ws:// and wss://.
    for url in [
        format!("ws://127.0.0.1:{}/_sandbox/{sb}/8765/", d.ingress_port),
        format!("wss://127.0.0.1:{}/_sandbox/{sb}/8765/", d.ingress_port),
    ] {
        let out = Command::new("/usr/bin/python3")
            .args([&ws_py(), "client", &url, &tok, "hello"])
            .output()
            .expect("ws client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            "echo:hello",
            "{url}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without a token the upgrade is refused.
    let out = Command::new("/usr/bin/python3")
        .args([
            &ws_py(),
            "client",
            &format!("ws://127.0.0.1:{}/_sandbox/{sb}/8765/", d.ingress_port),
            "sat_wrong",
            "hello",
        ])
        .output()
        .expect("ws client");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.cli(&["kill", &sb]);
}

/// An echo server for the tunnels: answers each connection's first line with `echo:LINE`.
const ECHO: &str = r#"
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen()
    while True:
        c, _ = s.accept()
        line = c.makefile().readline().strip()
        c.sendall(("echo:" + line + "\n").encode()); c.close()
for p in sys.argv[1:-1]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
serve(int(sys.argv[-1]))
"#;

#[test]
fn tcp_and_tls_tunnels_forward_to_the_workload() {
    let d = TestDaemon::start();
    let sb = create(
        &d,
        &[
            "--tcp-port",
            "9000",
            "--tls-port",
            "9001",
            "--probe-tcp",
            "9001",
        ],
        &["/usr/bin/python3", "-c", ECHO, "9000", "9001"],
    );
    let lines = d.ok(&["tunnels", &sb]);
    let tunnel = |proto: &str| -> String {
        lines
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(proto))
            .and_then(|l| l.split(' ').nth(2))
            .and_then(|u| u.split_once("://"))
            .map_or_else(
                || panic!("no {proto} tunnel: {lines}"),
                |(_, a)| a.to_owned(),
            )
    };
    let tcp = tunnel("tcp");
    let (host, port) = tcp.rsplit_once(':').unwrap();
    let out = sh(&format!("echo ping | timeout 10 nc -q 2 {host} {port}"));
    assert_eq!(out.trim(), "echo:ping");
    let tls = tunnel("tls");
    let out = sh(&format!(
        "echo ping | timeout 10 openssl s_client -connect {tls} -quiet 2>/dev/null"
    ));
    assert_eq!(out.trim(), "echo:ping");
    // The TLS tunnel does speak TLS: a plain client gets no echo.
    let out = sh(&format!(
        "echo ping | timeout 5 nc -q 2 {} {} || true",
        tls.rsplit_once(':').unwrap().0,
        tls.rsplit_once(':').unwrap().1
    ));
    assert!(!out.contains("echo:"), "{out}");
    d.cli(&["kill", &sb]);
    // The tunnels close with the sandbox.
    let start = Instant::now();
    while std::net::TcpStream::connect(&tcp).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tunnel {tcp} still open"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // An open tunnel connection is activity: the idle timeout waits for it to close.
    let sb = create(
        &d,
        &[
            "--tcp-port",
            "9000",
            "--idle-timeout",
            "2s",
            "--probe-tcp",
            "9000",
        ],
        &["/usr/bin/python3", "-c", ECHO, "9000"],
    );
    let lines = d.ok(&["tunnels", &sb]);
    let tcp = lines
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.strip_prefix("tcp://"))
        .expect("tcp tunnel")
        .to_owned();
    let held = std::net::TcpStream::connect(&tcp).expect("connect through the tunnel");
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        d.inspect(&sb)["state"],
        "running",
        "ended while a connection was open"
    );
    drop(held);
    d.wait_for(&sb, "the idle timeout", |v| v["state"] == "exited");
    assert_eq!(d.inspect(&sb)["end_reason"], "idle-timeout");
}

/// A minimal HTTP server that logs each accepted connection to stdout, on the given port.
const LOGGING_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("bound", s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    print("accepted", peer[0], flush=True)
    c.settimeout(5)
    try:
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
    except OSError:
        pass
    c.close()
"#;

/// A python connect from wherever it runs: prints `ok` or the error.
fn connect_code(port: u16) -> String {
    format!(
        "import socket\ns = socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port})); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('ok', s.recv(100))\nexcept OSError as e:\n    print('failed', e)\n"
    )
}

/// A sandbox's socket that reached its own listener (and so carried the ingress mark) cannot
/// be pointed elsewhere afterwards (`connect(AF_UNSPEC)`, then a's real port).
fn marked_socket_cannot_be_reused(d: &TestDaemon, a: &str, b: &str, real: u16) {
    let reuse = format!(
        r#"
import ctypes, socket
l = socket.socket(); l.bind(("0.0.0.0", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000))
libc = ctypes.CDLL(None, use_errno=True)
print("unspec", libc.connect(c.fileno(), (ctypes.c_ubyte * 16)(), 16))
c.settimeout(2)
try:
    c.connect(("127.0.0.1", {real})); print("reached", c.recv(100))
except OSError as e:
    print("refused", e)
"#
    );
    let accepted = || {
        d.stdout(a)
            .lines()
            .filter(|l| l.starts_with("accepted"))
            .count()
    };
    assert_eq!(accepted(), 0, "{}", d.stdout(a));
    let run = d.cli(&["exec", b, "--", "/usr/bin/python3", "-c", &reuse]);
    assert!(run.stdout.contains("unspec 0"), "{run:#?}");
    assert!(run.stdout.contains("refused"), "{run:#?}");
    assert_eq!(accepted(), 0, "{}\n{run:#?}", d.stdout(a));
}

#[test]
fn sandboxes_accept_no_connection_but_the_gateways() {
    let d = TestDaemon::start();
    // A host service on a port; a sandbox listening on the same port does not clash with it.
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").expect("host service");
    let port = host_service.local_addr().unwrap().port();
    let port_s = port.to_string();
    let a = create(
        &d,
        &[
            "--network",
            "allowlist",
            "--allow-out",
            "@loopback",
            "--port",
            &port_s,
            "--probe-tcp",
            &port_s,
        ],
        &["/usr/bin/python3", "-c", LOGGING_SERVER, &port_s],
    );
    let out = d.wait_output(&a, "bound");
    // The kernel moved the listener to a loopback port of its own.
    let real: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix("bound "))
        .and_then(|p| p.trim().parse().ok())
        .expect("bound port");
    assert_ne!(real, port);
    let listening = sh(&format!("ss -Htln sport = :{real}"));
    assert!(
        listening.contains(&format!("127.0.0.1:{real}")),
        "{listening}"
    );

    // A host process gets nothing at the real port (its SYN is dropped); at the port asked
    // for it reaches the host service, which kept its port.
    let host_try = sh(&format!("/usr/bin/python3 -c \"{}\"", connect_code(real)));
    assert!(host_try.starts_with("failed"), "{host_try}");
    let to_host_service = std::net::TcpStream::connect(("127.0.0.1", port)).expect("host service");
    let (_accepted, _) = host_service.accept().expect("the host service accepts");
    drop(to_host_service);
    // Another sandbox, even one allowed loopback, gets nothing either.
    let b = create(
        &d,
        &["--network", "allowlist", "--allow-out", "@loopback"],
        &["sleep", "60"],
    );
    let run = d.cli(&[
        "exec",
        &b,
        "--",
        "/usr/bin/python3",
        "-c",
        &connect_code(real),
    ]);
    assert!(
        run.stdout.starts_with("failed"),
        "sandbox b reached a's server: {}",
        run.stdout
    );
    marked_socket_cannot_be_reused(&d, &a, &b, real);
    // The sandbox itself reaches its own server at the port it asked for.
    let run = d.cli(&[
        "exec",
        &a,
        "--",
        "/usr/bin/python3",
        "-c",
        &connect_code(port),
    ]);
    assert!(run.stdout.contains("hello"), "{run:#?}");
    // The gateway does, with a token.
    let (tok, _) = token(&d, &a, None);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {tok}"),
        &path_url(&d, &a, port, ""),
    ]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello\n"));
    // Exactly two connections were accepted: the sandbox's own and the gateway's.
    let accepted = d
        .stdout(&a)
        .lines()
        .filter(|l| l.starts_with("accepted"))
        .count();
    assert_eq!(accepted, 2, "{}", d.stdout(&a));
    // The host service was never disturbed.
    host_service.set_nonblocking(true).unwrap();
    assert!(
        host_service.accept().is_err(),
        "something reached the host service"
    );
    d.cli(&["kill", &a]);
    d.cli(&["kill", &b]);
}

#[test]
fn private_ports_need_the_traffic_token_and_mask_host_rewrites_host() {
    let d = TestDaemon::start();
    let helper = web_helper();
    let out = d.ok(&[
        "create",
        "--port",
        "8080",
        "--probe-tcp",
        "8080",
        "--private-ports",
        "--mask-host",
        "localhost:${PORT}",
        "--",
        &helper,
        "8080",
    ]);
    let mut lines = out.lines();
    let sb = lines.next().unwrap().trim().to_owned();
    let traffic = lines
        .next()
        .and_then(|l| l.strip_prefix("traffic-token "))
        .unwrap_or_else(|| panic!("no traffic token printed: {out}"))
        .trim()
        .to_owned();
    d.ok(&["wait-ready", &sb]);
    // The record keeps no traffic token.
    assert!(d.inspect(&sb).get("traffic_token").is_none());
    let (tok, _) = token(&d, &sb, None);
    let auth = format!("Authorization: Bearer {tok}");
    let url = path_url(&d, &sb, 8080, "p");
    assert_eq!(curl(&["-H", &auth, &url]).status, 403);
    assert_eq!(
        curl(&[
            "-H",
            &auth,
            "-H",
            "X-Sandbox-Traffic-Token: stt_wrong",
            &url
        ])
        .status,
        403
    );
    let r = curl(&[
        "-H",
        &auth,
        "-H",
        &format!("X-Sandbox-Traffic-Token: {traffic}"),
        &url,
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["headers"]["host"], "localhost:8080");
    assert!(
        seen["headers"].get("x-sandbox-traffic-token").is_none(),
        "{seen}"
    );
    // Bad exposure requests are refused with a message.
    for (flags, needle) in [
        (vec!["--port", "0"], "port 0"),
        (vec!["--port", "80", "--tcp-port", "80"], "exposed twice"),
    ] {
        let mut args = vec!["create"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["--", "true"]);
        let run = d.cli(&args);
        assert_eq!(run.code, 125, "{run:#?}");
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    }
    d.cli(&["kill", &sb]);
}

#[test]
fn tokens_and_tunnels_survive_a_daemon_restart() {
    let mut d = TestDaemon::start();
    let helper = web_helper();
    let script = format!("{helper} 8080 web & exec /usr/bin/python3 -c '{ECHO}' 9000");
    let sb = create(
        &d,
        &[
            "--port",
            "8080",
            "--tcp-port",
            "9000",
            "--probe-tcp",
            "9000",
        ],
        &["/bin/sh", "-c", &script],
    );
    let (tok, _) = token(&d, &sb, Some(r#"{"user":"ann"}"#));
    let auth = format!("Authorization: Bearer {tok}");
    let tunnel_before = d.ok(&["tunnels", &sb]);
    d.kill9();
    // While the daemon is down, the gateway is gone and nothing else reaches the workload.
    assert_eq!(
        curl(&["-H", &auth, &path_url(&d, &sb, 8080, "x")]).status,
        0
    );
    d.spawn();
    let r = curl(&["-H", &auth, &path_url(&d, &sb, 8080, "x")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["headers"]["x-verified-user-data"],
        "{\"user\":\"ann\"}"
    );
    // The tunnel is back, on its old address (it was free).
    let tunnel_after = d.ok(&["tunnels", &sb]);
    assert_eq!(tunnel_before, tunnel_after);
    let tcp = tunnel_after
        .lines()
        .find_map(|l| l.split_whitespace().nth(2)?.strip_prefix("tcp://"))
        .expect("tcp tunnel")
        .to_owned();
    let (host, port) = tcp.rsplit_once(':').unwrap();
    let out = sh(&format!("echo again | timeout 10 nc -q 2 {host} {port}"));
    assert_eq!(out.trim(), "echo:again");
    d.cli(&["kill", &sb]);
}

#[test]
fn sandboxes_cannot_set_the_ingress_mark_or_open_unguarded_protocols() {
    // Even with CAP_NET_RAW (which lets a process set SO_MARK since Linux 5.17), the mark
    // stays out of reach, and SCTP, DCCP and MPTCP sockets (whose listeners the kernel does
    // not steer or guard) are refused.
    let code = r#"
import errno, socket
def t(f):
    try:
        f(); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
s = socket.socket()
print("mark", t(lambda: s.setsockopt(socket.SOL_SOCKET, 36, 0x53410001)))
print("sctp", t(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)))
print("dccp", t(lambda: socket.socket(socket.AF_INET, 6, 33)))
print("mptcp", t(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 262)))
print("tcp", t(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 6)))
print("keepalive", t(lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)))
"#;
    let run = sandbox_tests::agent_cmd(&[
        "run",
        "--embedded",
        "--cap-add",
        "NET_RAW",
        "--",
        "/usr/bin/python3",
        "-c",
        code,
    ]);
    assert_eq!(run.code, 0, "{run:#?}");
    for expected in [
        "mark EPERM",
        "sctp EPERM",
        "dccp EPERM",
        "mptcp EPERM",
        "tcp ok",
        "keepalive ok",
    ] {
        assert!(run.stdout.contains(expected), "{expected}: {}", run.stdout);
    }
}

#[test]
fn no_syn_reaches_a_sandbox_listener_behind_ipv6_extension_headers() {
    // A listener on [::] and a kernel-chosen port is not steered to loopback: the network
    // can send to it. Its policy allows the remote host, so only the inbound rule stands
    // between them. A bare SYN and one behind a Destination Options header (which the
    // packet parser does not walk; the listening-socket check catches it) both get no
    // SYN-ACK.
    let host = sandbox_tests::RemoteHost::new();
    let remote = &host.v6[0];
    let code = r#"
import socket, time
s = socket.socket(socket.AF_INET6); s.bind(("::", 0)); s.listen()
print("port", s.getsockname()[1], flush=True)
time.sleep(20)
"#;
    let mut child = Command::new(sandbox_tests::agent())
        .args([
            "run",
            "--embedded",
            "--network",
            "allowlist",
            "--allow-out",
            remote,
            "--",
            "/usr/bin/python3",
            "-c",
            code,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the listener");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read the port");
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port: {line:?}"));
    let probe = |mode: &str| {
        sh(&format!(
            "ip netns exec {} python3 {} {remote} {} {port} {mode}",
            host.netns,
            helpers().join("synprobe.py").display(),
            host.host_v6
        ))
        .trim()
        .to_owned()
    };
    let (plain, ext) = (probe("plain"), probe("ext"));
    // SIGTERM: the agent ends the workload and removes the sandbox.
    sh(&format!("kill -TERM {}", child.id()));
    let _ = child.wait();
    assert_eq!(plain, "nothing", "a bare SYN was answered");
    assert_eq!(
        ext, "nothing",
        "a SYN behind a Destination Options header was answered"
    );
}
