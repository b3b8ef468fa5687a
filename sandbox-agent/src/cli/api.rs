//! The commands that talk to the daemon: `create`, `exec`, `ls`, `inspect`, `logs`, `wait`,
//! `wait-ready`, `kill`, `rm`, `policy set`, `events`.
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Args, Subcommand};
use hyper::Method;

use super::terminal::{Relay, Stream};
use sandbox_agent::{
    api::{
        CreateRequest, ExecRequest, ExecView, ExposedPort, PortProtocol, PortView, ProbeSpec,
        SandboxView, TokenRequest, WaitView,
        client::{Client, ClientError},
    },
    policy::{self, Mode, PolicyFile, PolicyFileError, PolicySpec, Precedence, RawEntry},
};

/// Where the daemon listens; `--socket` or `SANDBOX_AGENT_SOCKET` overrides it.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| std::env::var_os("SANDBOX_AGENT_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| sandbox_agent::config::DEFAULT_SOCKET.into())
}

/// `network` and `precedence` as the flags or the file gave them (`None`: not given).
type GivenScalars = (Option<Mode>, Option<Precedence>);

/// Policy flags shared by `run`, `create`, `exec` and `policy set`.
#[derive(Args, Clone, Default)]
pub struct PolicyArgs {
    /// Network mode: blocked (nothing leaves), open (all but --deny-out), allowlist (only --allow-out).
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<Mode>,
    /// Allow traffic to an address, CIDR, domain, *.domain or @preset (repeatable).
    #[arg(long = "allow-out", value_name = "ENTRY")]
    pub allow_out: Vec<String>,
    /// Deny traffic to an address, CIDR, domain, *.domain or @preset (repeatable).
    #[arg(long = "deny-out", value_name = "ENTRY")]
    pub deny_out: Vec<String>,
    /// How an allow and a deny entry that both match are settled [default: deny-wins].
    #[arg(long, value_enum)]
    pub precedence: Option<Precedence>,
    /// Policy file (TOML); flags add entries to it and override its scalars.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

impl PolicyArgs {
    fn is_empty(&self) -> bool {
        self.network.is_none()
            && self.allow_out.is_empty()
            && self.deny_out.is_empty()
            && self.precedence.is_none()
            && self.policy.is_none()
    }

    /// The one merge of the policy flags with the policy file (flags add entries and
    /// override its scalars), for `run` (embedded or through the daemon), `create`, `exec`
    /// and `policy set`. Every entry keeps where it came from: the flag, or the file's key
    /// and path, so that a bad one is named the same way on every path.
    pub fn spec(&self, default_mode: Mode) -> Result<PolicySpec, PolicyFileError> {
        self.merge(default_mode).map(|(spec, _)| spec)
    }

    /// The merged spec, and the scalars as given (`None`: neither flag nor file set it).
    fn merge(&self, default_mode: Mode) -> Result<(PolicySpec, GivenScalars), PolicyFileError> {
        let (mut file, file_origin) = match &self.policy {
            Some(path) => (
                PolicyFile::load(path)?,
                Some(Arc::<str>::from(path.display().to_string())),
            ),
            None => (PolicyFile::default(), None),
        };
        let entries = |list: Vec<String>, origin: &str, file: Option<Arc<str>>| {
            let origin: Arc<str> = origin.into();
            list.into_iter().map(move |text| RawEntry {
                text,
                origin: origin.clone(),
                file: file.clone(),
            })
        };
        let mut allow_out: Vec<RawEntry> = entries(
            std::mem::take(&mut file.allow_out),
            "allow_out",
            file_origin.clone(),
        )
        .collect();
        allow_out.extend(entries(self.allow_out.clone(), "--allow-out", None));
        let mut deny_out: Vec<RawEntry> =
            entries(std::mem::take(&mut file.deny_out), "deny_out", file_origin).collect();
        deny_out.extend(entries(self.deny_out.clone(), "--deny-out", None));
        let given = (
            self.network.or(file.network),
            self.precedence.or(file.precedence),
        );
        let spec = PolicySpec {
            mode: given.0.unwrap_or(default_mode),
            precedence: given.1.unwrap_or(Precedence::DenyWins),
            allow_out,
            deny_out,
        };
        Ok((spec, given))
    }

    /// The policy a daemon is sent. Compiled here first from [`PolicyArgs::spec`], so that a
    /// bad entry is refused with the message an embedded run gives, naming the flag or file.
    pub fn body(&self, default_mode: Mode) -> Result<PolicyFile, String> {
        let (spec, (network, precedence)) = self.merge(default_mode).map_err(|e| e.to_string())?;
        policy::compile(&spec).map_err(|e| e.to_string())?;
        let text = |list: Vec<RawEntry>| list.into_iter().map(|e| e.text).collect();
        Ok(PolicyFile {
            network,
            precedence,
            allow_out: text(spec.allow_out),
            deny_out: text(spec.deny_out),
        })
    }
}

/// A host path as a daemon must get it: absolute when it names something here (the daemon's
/// working directory is not this command's), as given otherwise (the daemon's refusal then
/// names it as the user wrote it, a registry reference too).
fn for_daemon(path: &str) -> String {
    let p = std::path::Path::new(path);
    if p.is_relative()
        && std::fs::symlink_metadata(p).is_ok()
        && let Ok(abs) = std::path::absolute(p)
    {
        return abs.to_string_lossy().into_owned();
    }
    path.to_owned()
}

/// What a new sandbox sees instead of (or besides) the host's root: `run` and `create`.
#[derive(Args, Clone, Default)]
pub struct ViewArgs {
    /// A directory (e.g. made by debootstrap) to use as the sandbox's root, read-only below
    /// a private writable layer.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    rootfs: Option<String>,
    /// An OCI image layout directory or archive (skopeo, buildah, umoci; docker save) to use
    /// as the sandbox's root; its environment, working directory, entrypoint, command and
    /// user are defaults.
    #[arg(long, value_name = "PATH")]
    image: Option<String>,
    /// Bind a host path into the sandbox: SRC:DST or SRC:DST:ro (repeatable).
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    mounts: Vec<String>,
}

impl ViewArgs {
    pub fn rootfs(&self) -> Option<&str> {
        self.rootfs.as_deref()
    }

    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// `--rootfs` as the daemon must get it (see [`for_daemon`]).
    pub fn rootfs_request(&self) -> Option<String> {
        self.rootfs.as_deref().map(for_daemon)
    }

    /// `--image` as the daemon must get it (see [`for_daemon`]).
    pub fn image_request(&self) -> Option<String> {
        self.image.as_deref().map(for_daemon)
    }

    /// The mounts as the API takes them (syntax checked).
    pub fn mounts(
        &self,
    ) -> Result<Vec<sandbox_agent::api::MountSpec>, sandbox_agent::view::ViewError> {
        self.mounts
            .iter()
            .map(|m| {
                sandbox_agent::view::parse_mount(m).map(|(source, target, read_only)| {
                    sandbox_agent::api::MountSpec {
                        source: for_daemon(&source),
                        target,
                        read_only,
                    }
                })
            })
            .collect()
    }
}

/// Resource limit flags shared by `run` and `create` (cgroup v2 controllers).
#[derive(Args, Clone, Default)]
pub struct ResourceArgs {
    /// Memory limit, e.g. 512m or 2g; past it the sandbox is OOM-killed (exit status 137).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU time limit in CPUs, e.g. 0.5 or 2.
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Most processes and threads at once.
    #[arg(long, value_name = "N")]
    pids: Option<String>,
}

impl ResourceArgs {
    pub fn request(&self) -> sandbox_agent::api::Resources {
        sandbox_agent::api::Resources {
            memory: self.memory.clone(),
            cpus: self.cpus.clone(),
            pids: self.pids.clone(),
        }
    }
}

#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line flags, each its own switch"
)]
#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    view: ViewArgs,
    /// Run as root of a user namespace mapped to the sandbox's own uid (package managers).
    #[arg(long)]
    root: bool,
    /// Unique among live sandboxes: 1-63 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    name: Option<String>,
    /// KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// Program run before CMD (CMD becomes its arguments).
    #[arg(long, value_name = "PROGRAM")]
    entrypoint: Option<String>,
    /// Maximum lifetime (default 5m, at most 24h).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// End the sandbox after this long idle.
    #[arg(long = "idle-timeout", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Ready when this loopback TCP port accepts.
    #[arg(long = "probe-tcp", value_name = "PORT")]
    probe_tcp: Option<u16>,
    /// Ready when this shell command (run in the sandbox with /bin/sh -c) exits 0.
    #[arg(long = "probe-exec", value_name = "COMMAND")]
    probe_exec: Option<String>,
    #[arg(long = "probe-interval", value_name = "DURATION")]
    probe_interval: Option<String>,
    #[arg(long = "probe-timeout", value_name = "DURATION")]
    probe_timeout: Option<String>,
    /// Keep stdin open for `sandbox-agent stdin`.
    #[arg(long)]
    stdin: bool,
    #[arg(long = "proxy-env")]
    proxy_env: bool,
    /// Expose an HTTP port through the gateway, opened by connect tokens (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    http_ports: Vec<u16>,
    /// Expose an HTTP/2 port (the workload speaks h2c; clients HTTP/2 over TLS).
    #[arg(long = "h2-port", value_name = "PORT")]
    h2_ports: Vec<u16>,
    /// Expose a port through a TLS tunnel (TLS ends at the agent; the workload authenticates).
    #[arg(long = "tls-port", value_name = "PORT")]
    tls_ports: Vec<u16>,
    /// Expose a port through a raw TCP tunnel (the workload authenticates).
    #[arg(long = "tcp-port", value_name = "PORT")]
    tcp_ports: Vec<u16>,
    /// Every HTTP request must also carry the traffic token (printed on a second line,
    /// `traffic-token TOKEN`) in X-Sandbox-Traffic-Token.
    #[arg(long = "private-ports")]
    private_ports: bool,
    /// The Host header the workload sees on HTTP ports (`${PORT}`: the port).
    #[arg(long = "mask-host", value_name = "HOST")]
    mask_host: Option<String>,
    /// Addresses the sandbox's resolver may hold learned at a time [default: the daemon's
    /// `learned_per_sandbox`].
    #[arg(long = "max-learned-addresses", value_name = "N")]
    max_learned_addresses: Option<u64>,
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct TokenArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// JSON passed to the workload in X-Verified-User-Data (under 512 bytes).
    #[arg(long = "user-metadata", value_name = "JSON", conflicts_with_all = ["revoke", "list"])]
    user_metadata: Option<String>,
    /// Revoke the token with this id instead.
    #[arg(long, value_name = "TOKEN_ID", conflicts_with = "list")]
    revoke: Option<String>,
    /// List the sandbox's tokens (without their secrets) instead.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Sandbox id or name.
    sandbox: String,
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// Start it and print its id instead of waiting for it.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Pass control characters to the terminal as they are (escaped by default when the
    /// output is a terminal).
    #[arg(long)]
    raw: bool,
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    #[arg(long)]
    name: Option<String>,
    /// running or exited.
    #[arg(long)]
    state: Option<String>,
    /// KEY=VALUE (repeatable; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RefArgs {
    /// Sandbox id or name.
    sandbox: String,
}

#[derive(Args)]
pub struct LogsArgs {
    sandbox: String,
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this stream (stdout or stderr); both by default.
    #[arg(long)]
    stream: Option<String>,
    /// An exec's output instead of the sandbox's.
    #[arg(long)]
    exec: Option<u32>,
    /// Pass control characters to the terminal as they are (escaped by default when the
    /// output is a terminal).
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
pub struct RmArgs {
    sandbox: String,
    /// Kill it first if it is running.
    #[arg(long, short = 'f')]
    force: bool,
}

#[derive(Args)]
pub struct StdinArgs {
    sandbox: String,
    /// Close stdin after writing.
    #[arg(long)]
    close: bool,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Replace a live sandbox's policy (new connections see it at once; established
    /// connections it denies are cut).
    Set {
        sandbox: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Args)]
pub struct EventsArgs {
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this sandbox (id or name).
    #[arg(long)]
    sandbox: Option<String>,
    /// allowed or denied.
    #[arg(long)]
    verdict: Option<String>,
}

fn fail(e: &dyn std::fmt::Display) -> i32 {
    eprintln!("sandbox-agent: {e}");
    125
}

fn env_map(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            Some(_) => Err(format!("invalid --env \"{i}\": empty variable name")),
            None => std::env::var(i)
                .map(|v| (i.clone(), v))
                .map_err(|_| format!("invalid --env \"{i}\": not K=V and not set here")),
        })
        .collect()
}

fn tag_map(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("invalid --tag \"{i}\": use KEY=VALUE")),
        })
        .collect()
}

/// Percent-encodes a query value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn path_of(sandbox: &str) -> String {
    format!("/v1/sandboxes/{}", enc(sandbox))
}

pub fn create_request(args: &CreateArgs) -> Result<CreateRequest, String> {
    let probe = match (&args.probe_tcp, &args.probe_exec) {
        (None, None) => None,
        (tcp, exec) => Some(ProbeSpec {
            tcp_port: *tcp,
            exec: exec
                .as_ref()
                .map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
            interval: args.probe_interval.clone(),
            timeout: args.probe_timeout.clone(),
        }),
    };
    Ok(CreateRequest {
        command: args.command.clone(),
        entrypoint: args.entrypoint.iter().cloned().collect(),
        env: env_map(&args.env)?,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        name: args.name.clone(),
        tags: tag_map(&args.tags)?,
        policy: args.policy.body(Mode::Blocked)?,
        timeout: args.timeout.clone(),
        idle_timeout: args.idle_timeout.clone(),
        probe,
        stdin: args.stdin,
        proxy_env: args.proxy_env,
        ports: exposed_ports(args),
        private_ports: args.private_ports,
        mask_host: args.mask_host.clone(),
        resources: args.resources.request(),
        root: args.root,
        rootfs: args.view.rootfs_request(),
        image: args.view.image_request(),
        mounts: args.view.mounts().map_err(|e| e.to_string())?,
        max_learned_addresses: args.max_learned_addresses,
    })
}

fn exposed_ports(args: &CreateArgs) -> Vec<ExposedPort> {
    [
        (&args.http_ports, PortProtocol::Http),
        (&args.h2_ports, PortProtocol::H2),
        (&args.tls_ports, PortProtocol::Tls),
        (&args.tcp_ports, PortProtocol::Tcp),
    ]
    .into_iter()
    .flat_map(|(ports, protocol)| {
        ports
            .iter()
            .map(move |&port| ExposedPort { port, protocol })
    })
    .collect()
}

/// `tunnels`: one line per exposed port: port, protocol, URL (and the path URL of HTTP
/// ports).
pub fn tunnels(client: &Client, args: &RefArgs) -> i32 {
    match client.json::<Vec<PortView>>(
        Method::GET,
        &format!("{}/tunnels", path_of(&args.sandbox)),
        None::<&()>,
    ) {
        Ok(ports) => {
            for p in ports {
                let path = p.path_url.map(|u| format!(" {u}")).unwrap_or_default();
                println!("{} {} {}{path}", p.port, p.protocol.as_str(), p.url);
            }
            0
        }
        Err(e) => fail(&e),
    }
}

/// `token`: a new connect token as JSON (its secret, id and URLs), or the list, or a
/// revocation.
pub fn token(client: &Client, args: &TokenArgs) -> i32 {
    let base = format!("{}/tokens", path_of(&args.sandbox));
    if let Some(id) = &args.revoke {
        return match client.request(Method::DELETE, &format!("{base}/{}", enc(id)), None) {
            Ok(_) => 0,
            Err(e) => fail(&e),
        };
    }
    let answer = if args.list {
        client.json::<serde_json::Value>(Method::GET, &base, None::<&()>)
    } else {
        let user_metadata = match args.user_metadata.as_deref().map(serde_json::from_str) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return fail(&format!("--user-metadata is not JSON: {e}")),
        };
        client.json::<serde_json::Value>(Method::POST, &base, Some(&TokenRequest { user_metadata }))
    };
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => fail(&e),
    }
}

pub fn create(client: &Client, args: &CreateArgs) -> i32 {
    let req = match create_request(args) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match client.json::<SandboxView>(Method::POST, "/v1/sandboxes", Some(&req)) {
        Ok(view) => {
            println!("{}", view.id);
            if let Some(t) = view.traffic_token {
                println!("traffic-token {t}");
            }
            0
        }
        Err(e) => fail(&e),
    }
}

pub fn exec(client: &Client, args: &ExecArgs) -> i32 {
    let env = match env_map(&args.env) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let policy = if args.policy.is_empty() {
        None
    } else {
        match args.policy.body(Mode::Open) {
            Ok(p) => Some(p),
            Err(e) => return fail(&e),
        }
    };
    let req = ExecRequest {
        command: args.command.clone(),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        policy,
    };
    let base = path_of(&args.sandbox);
    let view: ExecView = match client.json(Method::POST, &format!("{base}/execs"), Some(&req)) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if args.detach {
        println!("{}", view.id);
        return 0;
    }
    let logs = format!("{base}/execs/{}/logs", view.id);
    if let Err(e) = follow_both(client, &logs, true, args.raw) {
        return fail(&e);
    }
    match client.json::<serde_json::Value>(
        Method::GET,
        &format!("{base}/execs/{}/wait", view.id),
        None::<&()>,
    ) {
        Ok(v) => v["exit_code"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(125),
        Err(e) => fail(&e),
    }
}

/// Streams stdout and stderr of `logs` (a logs path) to ours, both at once; control
/// characters escaped on a terminal unless `raw` (`terminal`).
pub fn follow_both(
    client: &Client,
    logs: &str,
    follow: bool,
    raw: bool,
) -> Result<(), ClientError> {
    let socket = client_socket();
    let err_path = format!("{logs}?stream=stderr&follow={follow}");
    let stderr = std::thread::spawn(move || {
        let mut relay = Relay::new(Stream::Stderr, raw);
        let streamed =
            Client::new(&socket).stream(Method::GET, &err_path, None, |b| relay.write(b));
        let _ = relay.finish();
        streamed
    });
    let mut relay = Relay::new(Stream::Stdout, raw);
    let out = client.stream(
        Method::GET,
        &format!("{logs}?stream=stdout&follow={follow}"),
        None,
        |b| relay.write(b),
    );
    let _ = relay.finish();
    let err = stderr
        .join()
        .unwrap_or_else(|_| Err(ClientError::Http("stderr reader panicked".into())));
    out.and(err)
}

/// Passes a chunk of the answer on to our stdout at once.
fn to_stdout(b: &[u8]) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(b)?;
    o.flush()
}

/// The socket the current command uses (set once by `main`).
static SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

pub fn set_socket(path: PathBuf) {
    let _ = SOCKET.set(path);
}

pub fn socket_for_threads() -> PathBuf {
    client_socket()
}

fn client_socket() -> PathBuf {
    SOCKET.get().cloned().unwrap_or_else(|| socket_path(None))
}

pub fn ls(client: &Client, args: &LsArgs) -> i32 {
    let mut query = Vec::new();
    if let Some(n) = &args.name {
        query.push(format!("name={}", enc(n)));
    }
    if let Some(s) = &args.state {
        query.push(format!("state={}", enc(s)));
    }
    for t in &args.tags {
        query.push(format!("tag={}", enc(t)));
    }
    let path = format!("/v1/sandboxes?{}", query.join("&"));
    let views: Vec<SandboxView> = match client.json(Method::GET, &path, None::<&()>) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
        return 0;
    }
    println!(
        "{:<16} {:<20} {:<8} {:<6} {:<24} COMMAND",
        "ID", "NAME", "STATE", "EXIT", "TAGS"
    );
    for v in views {
        let tags: Vec<String> = v.tags.iter().map(|(k, val)| format!("{k}={val}")).collect();
        println!(
            "{:<16} {:<20} {:<8} {:<6} {:<24} {}",
            v.id,
            v.name.unwrap_or_else(|| "-".into()),
            v.state.as_str(),
            v.exit_code.map_or("-".into(), |c| c.to_string()),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
            // One line per sandbox: control characters (a script's newlines) shown escaped.
            v.command.join(" ").escape_debug()
        );
    }
    0
}

pub fn inspect(client: &Client, args: &RefArgs) -> i32 {
    match client.json::<serde_json::Value>(Method::GET, &path_of(&args.sandbox), None::<&()>) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => fail(&e),
    }
}

pub fn logs(client: &Client, args: &LogsArgs) -> i32 {
    let base = match args.exec {
        Some(n) => format!("{}/execs/{n}/logs", path_of(&args.sandbox)),
        None => format!("{}/logs", path_of(&args.sandbox)),
    };
    let result = match args.stream.as_deref() {
        None => follow_both(client, &base, args.follow, args.raw),
        Some(stream) => {
            let mut relay = Relay::new(Stream::Stdout, args.raw);
            let streamed = client.stream(
                Method::GET,
                &format!("{base}?stream={}&follow={}", enc(stream), args.follow),
                None,
                |b| relay.write(b),
            );
            let _ = relay.finish();
            streamed
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

/// Prints the end and returns the sandbox's exit code (125 when unknown).
pub fn wait(client: &Client, args: &RefArgs, path: &str, method: Method) -> i32 {
    match client.json::<WaitView>(
        method,
        &format!("{}{path}", path_of(&args.sandbox)),
        None::<&()>,
    ) {
        Ok(v) => {
            println!(
                "{} {}",
                v.end_reason.map_or("", |r| r.as_str()),
                v.exit_code.map_or("unknown".into(), |c| c.to_string())
            );
            v.exit_code.unwrap_or(125)
        }
        Err(e) => fail(&e),
    }
}

pub fn wait_ready(client: &Client, args: &RefArgs) -> i32 {
    match client.request(
        Method::GET,
        &format!("{}/wait-ready", path_of(&args.sandbox)),
        None,
    ) {
        Ok(_) => {
            println!("ready");
            0
        }
        Err(e) => fail(&e),
    }
}

pub fn rm(client: &Client, args: &RmArgs) -> i32 {
    match client.request(
        Method::DELETE,
        &format!("{}?force={}", path_of(&args.sandbox), args.force),
        None,
    ) {
        Ok(_) => 0,
        Err(e) => fail(&e),
    }
}

pub fn stdin(client: &Client, args: &StdinArgs) -> i32 {
    let base = path_of(&args.sandbox);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return fail(&e),
        };
        if let Err(e) = client.request(
            Method::POST,
            &format!("{base}/stdin"),
            Some(buf[..n].to_vec()),
        ) {
            return fail(&e);
        }
    }
    if args.close
        && let Err(e) = client.request(Method::POST, &format!("{base}/stdin/close"), None)
    {
        return fail(&e);
    }
    0
}

pub fn policy(client: &Client, cmd: &PolicyCommand) -> i32 {
    let PolicyCommand::Set { sandbox, policy } = cmd;
    let body = match policy.body(Mode::Blocked) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    match client.json::<SandboxView>(
        Method::PUT,
        &format!("{}/policy", path_of(sandbox)),
        Some(&body),
    ) {
        Ok(v) => {
            println!("{} policy {}", v.id, v.policy_id);
            0
        }
        Err(e) => fail(&e),
    }
}

pub fn events(client: &Client, args: &EventsArgs) -> i32 {
    let mut query = vec![format!("follow={}", args.follow)];
    if let Some(s) = &args.sandbox {
        query.push(format!("sandbox={}", enc(s)));
    }
    if let Some(v) = &args.verdict {
        query.push(format!("verdict={}", enc(v)));
    }
    let result = client.stream(
        Method::GET,
        &format!("/v1/events?{}", query.join("&")),
        None,
        to_stdout,
    );
    match result {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

#[derive(Args)]
pub struct CpArgs {
    /// A local file or directory, or SANDBOX:PATH (id or name, then an absolute path in the
    /// sandbox).
    source: String,
    /// A local path, or SANDBOX:PATH. A directory is copied to a new path (into a local
    /// directory that exists, under its own name).
    destination: String,
}

/// How the files route says the path is a directory (`FilesError::IsDirectory`).
const DIRECTORY_HINT: &str = ": a directory (GET .../archive copies directories)";

/// A local directory as a tar (links as links); what it leaves out is said.
fn pack_local(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let open = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (tar, summary) = sandbox_agent::tarball::pack(std::os::fd::AsFd::as_fd(&open), u64::MAX)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if summary.skipped_devices > 0 {
        eprintln!(
            "sandbox-agent: {}: left out {} sockets, FIFOs or device nodes",
            dir.display(),
            summary.skipped_devices
        );
    }
    Ok(tar)
}

/// A sandbox's tar unpacked as the new local directory `local`, whole or not at all, never
/// leaving it (the sandbox wrote it: `..`, links and devices are handled as for images).
fn unpack_local(local: &std::path::Path, tar: &[u8]) -> Result<(), String> {
    let shown = || local.display().to_string();
    let name = local
        .file_name()
        .ok_or_else(|| format!("{}: not a name for a new directory", shown()))?;
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let parent = std::fs::File::open(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let name = std::ffi::CString::new(name.as_encoded_bytes())
        .map_err(|_| format!("{}: a NUL byte in the name", shown()))?;
    let rules = sandbox_agent::tarball::Rules {
        layer: false,
        max_bytes: u64::MAX,
        // Nothing the sandbox sent becomes writable by others on the host.
        mode_mask: 0o755,
    };
    sandbox_agent::tarball::unpack_new(std::os::fd::AsFd::as_fd(&parent), &name, tar, &rules)
        .map(drop)
        .map_err(|e| format!("{}: {e}", shown()))
}

/// `SANDBOX:PATH` when the part before the first `:` names no local path.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (sandbox, path) = arg.split_once(':')?;
    (!sandbox.is_empty() && !sandbox.contains('/')).then_some((sandbox, path))
}

/// `cp LOCAL SANDBOX:PATH` or `cp SANDBOX:PATH LOCAL`: a file, or a directory as a tar
/// stream, through the API.
pub fn cp(client: &Client, args: &CpArgs) -> i32 {
    let failed = |message: String| {
        eprintln!("sandbox-agent: {message}");
        125
    };
    match (remote(&args.source), remote(&args.destination)) {
        (None, Some((sandbox, path))) => {
            let local = std::path::Path::new(&args.source);
            let (route, data) = match std::fs::metadata(local) {
                Ok(m) if m.is_dir() => match pack_local(local) {
                    Ok(tar) => ("archive", tar),
                    Err(message) => return failed(message),
                },
                Ok(_) => match std::fs::read(local) {
                    Ok(d) => ("files", d),
                    Err(e) => return failed(format!("{}: {e}", local.display())),
                },
                Err(e) => return failed(format!("{}: {e}", local.display())),
            };
            let url = format!("{}/{route}?path={}", path_of(sandbox), enc(path));
            match client.request(Method::PUT, &url, Some(data)) {
                Ok(_) => 0,
                Err(e) => fail(&e),
            }
        }
        (Some((sandbox, path)), None) => {
            let url = format!("{}/files?path={}", path_of(sandbox), enc(path));
            let mut local = std::path::PathBuf::from(&args.destination);
            if local.is_dir() {
                let name = std::path::Path::new(path).file_name().unwrap_or_default();
                local.push(name);
            }
            match client.request(Method::GET, &url, None) {
                Ok(data) => match std::fs::write(&local, data) {
                    Ok(()) => 0,
                    Err(e) => failed(format!("{}: {e}", local.display())),
                },
                // A directory: its tar instead.
                Err(sandbox_agent::api::client::ClientError::Status { message, .. })
                    if message.ends_with(DIRECTORY_HINT) =>
                {
                    let url = format!("{}/archive?path={}", path_of(sandbox), enc(path));
                    match client.request(Method::GET, &url, None) {
                        Ok(tar) => match unpack_local(&local, &tar) {
                            Ok(()) => 0,
                            Err(message) => failed(message),
                        },
                        Err(e) => fail(&e),
                    }
                }
                Err(e) => fail(&e),
            }
        }
        _ => failed(
            "cp takes one local path and one SANDBOX:PATH (cp FILE SANDBOX:PATH, cp SANDBOX:PATH FILE)"
                .into(),
        ),
    }
}
