//! `sandbox-agent run [OPTIONS] -- CMD [ARGS...]`
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;
use hyper::Method;
use sandbox_agent::{
    api::{CreateRequest, SandboxView, WaitView, client::Client},
    domains::{self, DomainOptions},
    events::Events,
    paths::Paths,
    policy::{self, Mode},
    sandbox::{self, RunOptions},
    workload::{self, Workload},
};

/// Capabilities a sandbox may be given: none of them can open a way around the kernel wall
/// (raw IP is filtered by `cgroup_skb`, `AF_PACKET` is refused at socket creation).
const GRANTABLE_CAPS: [(&str, u32); 2] = [("NET_BIND_SERVICE", 10), ("NET_RAW", 13)];

#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line flags, each its own switch"
)]
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    policy: super::api::PolicyArgs,
    /// Environment variable for the workload, K=V; a bare K copies the agent's value (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<OsString>,
    /// Working directory of the workload [default: the current directory].
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// User to run as: a name, UID or UID:GID [default: the sandbox's own uid]. Never root.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    #[command(flatten)]
    resources: super::api::ResourceArgs,
    #[command(flatten)]
    view: super::api::ViewArgs,
    /// Run as root of a user namespace mapped to the sandbox's own uid, so that package
    /// managers work; no capability of the host's. Not with --user.
    #[arg(long)]
    root: bool,
    /// Kill the workload after this long (e.g. 30s, 5m); exit status 124.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// After the agent receives SIGINT/SIGTERM/SIGHUP it forwards it; the workload is killed
    /// if it has not exited after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Give the workload a capability (NET_RAW or NET_BIND_SERVICE); all others are dropped.
    #[expect(
        clippy::doc_markdown,
        reason = "clap shows this text as help, where backticks would be noise"
    )]
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Print the sandbox's packet counters to stderr when it ends.
    #[arg(long)]
    stats: bool,
    /// DNS server that resolves allowed names, ADDR or ADDR:PORT [default: the first
    /// nameserver of /etc/resolv.conf]. Used only when the policy has domain rules.
    #[arg(long = "upstream-dns", value_name = "ADDR[:PORT]")]
    upstream_dns: Option<String>,
    /// Set HTTP_PROXY, HTTPS_PROXY, ALL_PROXY (and lower-case forms) to the sandbox's own
    /// explicit proxy (HTTP CONNECT and SOCKS5), which applies the policy's rules.
    #[expect(
        clippy::doc_markdown,
        reason = "clap shows this text as help, where backticks would be noise"
    )]
    #[arg(long = "proxy-env")]
    proxy_env: bool,
    /// Send the agent's own proxied connections through an operator's proxy:
    /// http://HOST:PORT, socks5h://HOST:PORT (both pass the name on) or socks5://HOST:PORT.
    #[arg(long = "upstream-proxy", value_name = "URL")]
    upstream_proxy: Option<String>,
    /// Write a JSON line for every DNS and proxy decision to FILE ("-" for stderr).
    #[arg(long = "flow-log", value_name = "FILE")]
    flow_log: Option<PathBuf>,
    /// Addresses the sandbox's resolver may hold learned at a time [default: the config's
    /// `learned_per_sandbox`, 4096]; past it, connects to new addresses are refused.
    #[arg(long = "max-learned-addresses", value_name = "N")]
    max_learned_addresses: Option<u64>,
    /// Run in this process even when a daemon is running.
    #[arg(long)]
    embedded: bool,
    /// Through the daemon, pass the workload's control characters to the terminal as they
    /// are (escaped by default when the output is a terminal). Embedded, the workload
    /// writes to the terminal itself.
    #[arg(long)]
    raw: bool,
    /// The agent's configuration, for its host floor (default /etc/sandbox-agent/config.toml
    /// if it exists; the daemon uses its own).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Program run before CMD (CMD becomes its arguments); with --image, in place of the
    /// image's Entrypoint (and its Cmd).
    #[arg(long, value_name = "PROGRAM")]
    entrypoint: Option<String>,
    /// The command and its arguments (with --image: in place of the image's Cmd).
    #[arg(last = true, required_unless_present = "image", value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn main(args: &RunArgs, socket: &Path) -> i32 {
    if !args.embedded && socket.exists() {
        let client = Client::new(socket);
        if client.available() {
            return via_daemon(&client, args);
        }
    }
    let stats = args.stats;
    let (opts, name) = match prepare(args) {
        Ok(v) => v,
        Err(Failure { message, code }) => {
            eprintln!("sandbox-agent: {message}");
            return code;
        }
    };
    match sandbox::run(&Paths::default(), opts) {
        Ok(report) => {
            if report.oom {
                eprintln!(
                    "sandbox-agent: {name} ran out of memory (--memory); sandbox {} was killed",
                    report.id
                );
            }
            if report.timed_out {
                eprintln!(
                    "sandbox-agent: {name} timed out; sandbox {} was killed",
                    report.id
                );
            }
            if stats {
                let c = report.counters;
                eprintln!(
                    "sandbox-agent: sandbox {} exit={} allowed={} packets/{} bytes denied={} packets/{} bytes \
                     refused connects={} refused sends={} dns redirects={} proxy redirects={} \
                     learned connects={}",
                    report.id,
                    report.exit_code,
                    c.allowed_packets,
                    c.allowed_bytes,
                    c.denied_packets,
                    c.denied_bytes,
                    c.denied_connects,
                    c.denied_sends,
                    c.dns_redirects,
                    c.proxy_redirects,
                    c.learned_connects
                );
            }
            report.exit_code
        }
        Err(e) => {
            eprintln!("sandbox-agent: {}", sandbox_agent::error_line(&e));
            e.exit_code()
        }
    }
}

struct Failure {
    message: String,
    code: i32,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            message: e.to_string(),
            code: 125,
        }
    }
}

fn prepare(args: &RunArgs) -> Result<(RunOptions, String), Failure> {
    let config = sandbox_agent::config::Config::load(args.config.as_deref())?;
    let floor = config.floor().map_err(|e| format!("floor_deny: {e}"))?;
    let learned_limits = config
        .learned_limits(args.max_learned_addresses)
        .map_err(|e| format!("--max-learned-addresses: {e}"))?;
    let spec = args.policy.spec(Mode::Blocked)?;
    let compiled = policy::compile(&spec)?;
    let domains = domain_options(args, &compiled, learned_limits)?;
    let keep_caps = args
        .cap_add
        .iter()
        .map(|c| {
            let name = c.trim().to_ascii_uppercase();
            let name = name.strip_prefix("CAP_").unwrap_or(&name);
            GRANTABLE_CAPS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    format!(
                        "invalid --cap-add \"{c}\": only {} may be given to a sandbox",
                        GRANTABLE_CAPS.map(|(n, _)| n).join(" and ")
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limits = args
        .resources
        .request()
        .or(&config.default_resources())
        .limits()?;
    let paths = Paths::default();
    let uid_range = config.uid_range()?;
    let tmp_bytes = config.tmp_bytes()?;
    let hide = config.hidden_dirs(&paths);
    let (root, mounts, image) = view_of(args, &config, &paths, &hide)?;
    let defaults = image.as_ref().map(|i| &i.defaults);
    let command = command_of(args, defaults)?;
    let cwd = match &args.cwd {
        Some(d) => d.clone(),
        None if let Some(dir) = defaults.and_then(|d| d.working_dir.as_ref()) => PathBuf::from(dir),
        // A root directory has nothing of the host's current directory.
        None if root.is_some() => PathBuf::from("/"),
        None => sandbox_agent::view::start_dir(
            &std::env::current_dir()
                .map_err(|e| format!("cannot read the current directory: {e}"))?,
            &hide,
        ),
    };
    // The sandbox's own uid, held until it is gone (an explicit --user needs none).
    let lease = match args.user {
        Some(_) => None,
        None => Some(sandbox_agent::identity::lease(&paths, uid_range)?),
    };
    let env = env_of(args, defaults)?;
    let name = command[0].to_string_lossy().into_owned();
    let as_root = args.root
        || (args.user.is_none()
            && defaults.is_some_and(sandbox_agent::image::Defaults::runs_as_root));
    let launch = workload::prepare(Workload {
        command: &command,
        env,
        cwd,
        user: args.user.as_deref(),
        sandbox_uid: lease.as_ref().map(|l| l.uid),
        root: as_root,
        reserved: uid_range,
        keep_caps,
        namespaces: workload::Namespaces::New {
            hide,
            tmp_bytes,
            root,
            mounts,
        },
    })
    .map_err(|e| Failure {
        message: e.message,
        code: e.code,
    })?;
    Ok((
        RunOptions {
            policy: compiled,
            launch,
            timeout: args.timeout,
            stop_grace: args.stop_timeout,
            domains,
            proxy_env: args.proxy_env,
            floor,
            limits,
            lease,
            image: image.map(|i| i.hold),
        },
        name,
    ))
}

/// The workload's variables: the image's `Env` first, then the flags' (which replace its).
fn env_of(
    args: &RunArgs,
    defaults: Option<&sandbox_agent::image::Defaults>,
) -> Result<Vec<(OsString, OsString)>, Failure> {
    let mut env: Vec<(OsString, OsString)> = defaults
        .map(|d| {
            d.env_pairs()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
        })
        .unwrap_or_default();
    for item in &args.env {
        if let Some(pair) = workload::parse_env_item(item)? {
            env.push(pair);
        }
    }
    Ok(env)
}

/// The command to run: the flags' entrypoint and arguments, or with an image, its
/// Entrypoint and Cmd as far as the flags leave them.
fn command_of(
    args: &RunArgs,
    defaults: Option<&sandbox_agent::image::Defaults>,
) -> Result<Vec<OsString>, Failure> {
    let command: Vec<OsString> = match defaults {
        None => args
            .entrypoint
            .iter()
            .map(OsString::from)
            .chain(args.command.iter().cloned())
            .collect(),
        Some(d) => {
            let given: Vec<String> = args
                .command
                .iter()
                .map(|a| a.to_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or("with --image, the command must be valid UTF-8")?;
            let entrypoint = args.entrypoint.as_ref().map(|e| vec![e.clone()]);
            d.command(entrypoint.as_deref(), &given)
                .into_iter()
                .map(OsString::from)
                .collect()
        }
    };
    if command.is_empty() {
        return Err("no command: the image has no Entrypoint or Cmd; give one after --".into());
    }
    Ok(command)
}

/// A new sandbox's root (a directory or an image's layers), mounts, and image.
type ViewParts = (
    Option<sandbox_agent::view::RootDir>,
    Vec<sandbox_agent::view::BindMount>,
    Option<sandbox_agent::image::Rooted>,
);

/// The root directory or image, and the mounts asked for, checked (the image's layers
/// unpacked into the cache if need be).
fn view_of(
    args: &RunArgs,
    config: &sandbox_agent::config::Config,
    paths: &Paths,
    hide: &[PathBuf],
) -> Result<ViewParts, Failure> {
    let (root, image) = match (args.view.rootfs(), args.view.image()) {
        (Some(dir), _) => (
            Some(sandbox_agent::view::check_root(
                dir,
                hide,
                paths.root_staging(),
            )?),
            None,
        ),
        (None, Some(path)) => {
            let store = sandbox_agent::image::Store::new(&config.state_dir);
            let mut rooted = sandbox_agent::image::open_root(
                &store,
                path,
                paths.root_staging(),
                &sandbox_agent::image::terminal_progress,
            )?;
            // --root is root's: the files root owns in the image are its own.
            if args.root {
                rooted.root.owner = (0, 0);
            }
            (Some(rooted.root.clone()), Some(rooted))
        }
        (None, None) => (None, None),
    };
    let specs: Vec<_> = args
        .view
        .mounts()?
        .iter()
        .map(sandbox_agent::api::MountSpec::parts)
        .collect();
    let mounts = sandbox_agent::view::check_mounts(&specs, hide, root.is_some())?;
    Ok((root, mounts, image))
}

/// The resolver and proxy settings, when the policy has domain rules or `--proxy-env` asks
/// for the explicit proxy; the flags are validated either way.
fn domain_options(
    args: &RunArgs,
    compiled: &policy::CompiledPolicy,
    learned_limits: sandbox_agent::learned::Limits,
) -> Result<Option<DomainOptions>, Failure> {
    Ok(if compiled.has_names() || args.proxy_env {
        let upstream_dns = match &args.upstream_dns {
            Some(text) => domains::parse_upstream(text)?,
            None => domains::upstream_from_resolv_conf(Path::new("/etc/resolv.conf"))?,
        };
        let events = match &args.flow_log {
            None => Events::none(),
            Some(p) if p.as_os_str() == "-" => Events::stderr(),
            Some(p) => Events::file(p)
                .map_err(|e| format!("cannot open --flow-log {}: {e}", p.display()))?,
        };
        let upstream_proxy = args
            .upstream_proxy
            .as_deref()
            .map(sandbox_agent::upstream_proxy::parse)
            .transpose()?;
        Some(DomainOptions {
            upstream_dns,
            upstream_proxy,
            events: Arc::new(events),
            learned_limits,
        })
    } else {
        // Still validated: a typo should not wait for the day a domain rule is added.
        if let Some(text) = &args.upstream_dns {
            domains::parse_upstream(text)?;
        }
        if let Some(text) = &args.upstream_proxy {
            sandbox_agent::upstream_proxy::parse(text)?;
        }
        None
    })
}

/// `run` through the daemon: create with this command's stdin forwarded, stream the output,
/// wait; SIGINT/SIGTERM/SIGHUP kill the sandbox. The exit status is the workload's (124 on
/// timeout, as embedded).
fn via_daemon(client: &Client, args: &RunArgs) -> i32 {
    let req = match daemon_request(args) {
        Ok(r) => r,
        Err(Failure { message, code }) => {
            eprintln!("sandbox-agent: {message}");
            return code;
        }
    };
    // Signals are taken by a thread of ours (blocked everywhere else) and kill the sandbox.
    let mut mask = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    let view: SandboxView = match client.json(Method::POST, "/v1/sandboxes", Some(&req)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sandbox-agent: {e}");
            return match e {
                sandbox_agent::api::client::ClientError::Status {
                    exit_code: Some(code),
                    ..
                } => code,
                _ => 125,
            };
        }
    };
    let base = format!("/v1/sandboxes/{}", view.id);
    let socket = super::api::socket_for_threads();
    {
        let (socket, base) = (socket.clone(), base.clone());
        std::thread::spawn(move || {
            if mask.wait().is_ok() {
                let _ = Client::new(&socket).request(Method::POST, &format!("{base}/kill"), None);
            }
        });
    }
    {
        let (socket, base) = (socket.clone(), base.clone());
        std::thread::spawn(move || forward_stdin(&socket, &base));
    }
    let _ = super::api::follow_both(client, &format!("{base}/logs"), true, args.raw);
    match client.json::<WaitView>(Method::GET, &format!("{base}/wait"), None::<&()>) {
        Ok(w) if w.end_reason == Some(sandbox_agent::api::EndReason::Timeout) => {
            eprintln!("sandbox-agent: timed out; sandbox {} was killed", view.id);
            124
        }
        Ok(w) if w.end_reason == Some(sandbox_agent::api::EndReason::Oom) => {
            eprintln!(
                "sandbox-agent: ran out of memory (--memory); sandbox {} was killed",
                view.id
            );
            w.exit_code.unwrap_or(137)
        }
        Ok(w) => w.exit_code.unwrap_or(125),
        Err(e) => {
            eprintln!("sandbox-agent: {e}");
            125
        }
    }
}

/// The create request for `run`'s arguments; refuses what only embedded mode can do.
fn daemon_request(args: &RunArgs) -> Result<CreateRequest, Failure> {
    let embedded_only = [
        (args.flow_log.is_some(), "--flow-log"),
        (args.upstream_dns.is_some(), "--upstream-dns"),
        (args.upstream_proxy.is_some(), "--upstream-proxy"),
        (!args.cap_add.is_empty(), "--cap-add"),
        (args.stats, "--stats"),
        (args.config.is_some(), "--config"),
    ];
    if let Some((_, flag)) = embedded_only.iter().find(|(set, _)| *set) {
        return Err(format!(
            "{flag} is not available through the daemon (it is configured there); \
             add --embedded to run without it"
        )
        .into());
    }
    let not_utf8 =
        |what: &str| Failure::from(format!("{what} is not valid UTF-8 (use --embedded)"));
    let command: Vec<String> = args
        .command
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| not_utf8("the command"))?;
    let mut env = std::collections::BTreeMap::new();
    for item in &args.env {
        if let Some((k, v)) = workload::parse_env_item(item)? {
            let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) else {
                return Err(not_utf8("--env"));
            };
            env.insert(k, v);
        }
    }
    // The current directory, unless the sandbox's view hides it (the daemon's default then).
    let cwd = args
        .cwd
        .clone()
        .or_else(|| {
            std::env::current_dir().ok().filter(|d| {
                args.view.rootfs().is_none()
                    && args.view.image().is_none()
                    && sandbox_agent::view::start_dir(d, &[]) == *d
            })
        })
        .map(|p| p.to_string_lossy().into_owned());
    Ok(CreateRequest {
        command,
        env,
        cwd,
        user: args.user.clone(),
        policy: args.policy.body(Mode::Blocked)?,
        // Embedded `run` has no timeout unless asked; through the daemon the longest one
        // it allows stands in for that (not the daemon's 5-minute default for `create`).
        timeout: Some(args.timeout.map_or_else(
            || "24h".into(),
            |t| humantime::format_duration(t).to_string(),
        )),
        stdin: true,
        proxy_env: args.proxy_env,
        max_learned_addresses: args.max_learned_addresses,
        resources: args.resources.request(),
        root: args.root,
        rootfs: args.view.rootfs_request(),
        image: args.view.image_request(),
        entrypoint: args.entrypoint.iter().cloned().collect(),
        mounts: args.view.mounts()?,
        ..CreateRequest::default()
    })
}

/// Copies our stdin to the sandbox's, then closes it.
fn forward_stdin(socket: &Path, base: &str) {
    let client = Client::new(socket);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client
                    .request(
                        Method::POST,
                        &format!("{base}/stdin"),
                        Some(buf[..n].to_vec()),
                    )
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = client.request(Method::POST, &format!("{base}/stdin/close"), None);
}
