//! What a workload is started with: program, arguments, environment, directory and user,
//! turned into a [`LaunchSpec`]. Shared by embedded `run` and the daemon.
use std::{
    ffi::{CString, OsStr, OsString},
    os::{
        fd::OwnedFd,
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::PathBuf,
};

use crate::{
    identity,
    launch::{self, Enter, LaunchSpec},
    user, view,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A workload as asked for.
pub struct Workload<'a> {
    pub command: &'a [OsString],
    /// Variables set on top of the defaults (`PATH`, `HOME`, `USER`, `LOGNAME`, and the
    /// agent's `TERM`/`LANG`), in order; a later one replaces an earlier one.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// A user name or uid; `None`: the sandbox's own user (`sandbox_uid`).
    pub user: Option<&'a str>,
    /// The uid leased for the sandbox ([`identity`]); `None` only with an explicit `user`.
    pub sandbox_uid: Option<u32>,
    /// `--root`: uid 0 in a user namespace of the sandbox's own, mapped to `sandbox_uid`.
    pub root: bool,
    /// The ids sandboxes lease their own uids from: an explicit `user` may not name one.
    pub reserved: identity::UidRange,
    pub keep_caps: Vec<u32>,
    pub namespaces: Namespaces,
}

/// The namespaces a workload starts in.
pub enum Namespaces {
    /// A new sandbox: namespaces of its own and its view (the host's root hiding these host
    /// directories, the agent's state, besides the fixed ones; or a root directory), with
    /// `--mount`s (checked by `view::check_mounts`).
    New {
        hide: Vec<PathBuf>,
        tmp_bytes: u64,
        root: Option<view::RootDir>,
        mounts: Vec<view::BindMount>,
    },
    /// An exec into a live sandbox: its init's pidfd.
    Join(OwnedFd),
}

/// Why a workload cannot start, with the exit status `docker run` would give.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WorkloadError {
    pub message: String,
    /// 127: command not found; 125: anything else.
    pub code: i32,
}

impl WorkloadError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 125,
        }
    }
}

/// Resolves the user and the program and prepares everything the child needs.
pub fn prepare(w: Workload<'_>) -> Result<LaunchSpec, WorkloadError> {
    let Some(command) = w.command.first() else {
        return Err(WorkloadError::new("no command given"));
    };
    let user = workload_user(&w)?;
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), user.home.clone().into_os_string()),
        ("USER".into(), user.name.clone().into()),
        ("LOGNAME".into(), user.name.clone().into()),
    ];
    for key in ["TERM", "LANG"] {
        if let Some(v) = std::env::var_os(key) {
            env.push((key.into(), v));
        }
    }
    for (k, v) in w.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(WorkloadError::new(format!(
                "invalid environment variable name \"{}\"",
                k.to_string_lossy()
            )));
        }
        env.retain(|(old, _)| *old != k);
        env.push((k, v));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let name = command.to_string_lossy().into_owned();
    let root = match &w.namespaces {
        Namespaces::New { root: Some(r), .. } => Some(r.clone()),
        _ => None,
    };
    let program = match &root {
        None => launch::resolve_program(command, path_var.as_deref()),
        Some(root) => resolve_in_root(root, command, path_var.as_deref()),
    };
    let Some(program) = program else {
        return Err(WorkloadError {
            message: match &root {
                None => format!("{name}: command not found"),
                Some(r) => format!("{name}: command not found in the {}", r.label),
            },
            code: 127,
        });
    };
    let enter = enter(
        w.namespaces,
        &user,
        (w.user.is_none() && w.sandbox_uid.is_some(), w.root),
    )?;
    Ok(LaunchSpec {
        program: cstr(program.as_os_str().as_bytes(), "the command")?,
        argv: w
            .command
            .iter()
            .map(|a| cstr(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(&kv, "an environment variable")
            })
            .collect::<Result<_, _>>()?,
        cwd: cstr(w.cwd.as_os_str().as_bytes(), "the working directory")?,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        keep_caps: w.keep_caps,
        stdio: None,
        // Never the agent's controlling terminal: a workload holding it could push input
        // into the operator's shell (`TIOCSTI`) or read it after the agent exits.
        new_session: true,
        enter,
        user_namespace: w.root,
    })
}

/// The namespaces of the launch: new ones with the view, or a live sandbox's. `own`: the
/// user is the sandbox's own (its view lists it); `as_root`: as root of its user namespace.
fn enter(
    namespaces: Namespaces,
    user: &user::User,
    (own, as_root): (bool, bool),
) -> Result<Enter, WorkloadError> {
    Ok(match namespaces {
        Namespaces::New {
            hide,
            tmp_bytes,
            root,
            mounts,
        } => {
            // The sandbox's own user is in no host file: its view lists it, with a home.
            let identity = own.then(|| view::Identity {
                name: user.name.clone(),
                uid: user.uid,
                gid: user.gid,
                home: user.home.clone(),
                // root is in the host's passwd already (uid 0 is the sandbox's own uid in
                // its user namespace); only its home becomes its own.
                listed: !as_root,
            });
            // A root directory's or image's files of uid 0 are the sandbox's own (an explicit
            // --user keeps them as they are).
            let idmap = match (&root, own) {
                (Some(r), true) => Some(std::sync::Arc::new(
                    view::mapping_userns(r.owner, user.uid, user.gid).map_err(|e| {
                        WorkloadError::new(format!(
                            "cannot map the owners of the {} to the sandbox's user: {e}",
                            r.label
                        ))
                    })?,
                )),
                _ => None,
            };
            let plan = view::default_plan(&view::ViewOptions {
                hide,
                identity,
                tmp_bytes,
                root,
                mounts,
                idmap,
            });
            Enter::New(plan)
        }
        Namespaces::Join(pidfd) => Enter::Join(pidfd),
    })
}

/// Who the workload runs as: the sandbox's own uid (named `sandbox`, or `root` of its user
/// namespace with `--root`), or the user asked for.
fn workload_user(w: &Workload<'_>) -> Result<user::User, WorkloadError> {
    if w.root && (w.user.is_some() || w.sandbox_uid.is_none()) {
        return Err(WorkloadError::new(
            "--root runs as root of the sandbox's own user namespace, mapped to its own uid: it cannot be combined with --user",
        ));
    }
    Ok(match (w.user, w.sandbox_uid) {
        (None, Some(uid)) if w.root => user::User {
            name: "root".into(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: "/root".into(),
        },
        (None, Some(uid)) => user::User {
            name: identity::SANDBOX_USER.into(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: identity::SANDBOX_HOME.into(),
        },
        (spec, _) => {
            let user = user::resolve(spec).map_err(|e| WorkloadError::new(e.to_string()))?;
            if w.reserved.contains(user.uid) || w.reserved.contains(user.gid) {
                return Err(WorkloadError::new(format!(
                    "invalid --user \"{}\": uid or gid in the range reserved for sandboxes' own ids ({})",
                    spec.unwrap_or_default(),
                    w.reserved
                )));
            }
            user
        }
    })
}

/// `command` found as `launch::resolve_program` finds it, but inside `root` (its links
/// resolved there): the path the workload will exec after the view's `pivot_root`.
fn resolve_in_root(root: &view::RootDir, command: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |candidate: &std::path::Path| {
        let text = candidate.to_str()?;
        let fd = root.open(text, libc::O_PATH).ok()?;
        let meta = std::fs::File::from(fd).metadata().ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| candidate.to_owned())
    };
    if command.as_bytes().contains(&b'/') {
        return executable(std::path::Path::new(command));
    }
    path?
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|dir| dir.starts_with(b"/"))
        .find_map(|dir| executable(&std::path::Path::new(OsStr::from_bytes(dir)).join(command)))
}

fn cstr(b: &[u8], what: &str) -> Result<CString, WorkloadError> {
    CString::new(b).map_err(|_| WorkloadError::new(format!("{what} contains a NUL byte")))
}

/// `K=V` as a pair; `K` alone takes the agent's own value, or nothing if it has none.
pub fn parse_env_item(item: &OsStr) -> Result<Option<(OsString, OsString)>, WorkloadError> {
    let bytes = item.as_bytes();
    let (k, v) = match bytes.iter().position(|&b| b == b'=') {
        Some(i) => (
            OsStr::from_bytes(&bytes[..i]).to_owned(),
            OsStr::from_bytes(&bytes[i + 1..]).to_owned(),
        ),
        None => match std::env::var_os(item) {
            Some(v) => (item.to_owned(), v),
            None => return Ok(None),
        },
    };
    if k.is_empty() {
        return Err(WorkloadError::new(format!(
            "invalid --env \"{}\": empty variable name",
            item.to_string_lossy()
        )));
    }
    Ok(Some((k, v)))
}
