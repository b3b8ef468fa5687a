//! The daemon core's errors: what went wrong, with its facts, and whose fault it is. Only the
//! server turns a [`Fault`] into an HTTP status (`server::status_of`); the core never speaks
//! HTTP.
use std::{io, path::PathBuf};

use crate::{
    cgroup::CgroupError, domains::DomainError, enforcement::EnforcementError,
    identity::IdentityError, ingress::tokens::TokenError, learned::LimitError,
    limits::LimitError as LimitsError, policy::PolicyError,
};

/// Who must act for the request to succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is wrong.
    Request,
    /// What it names does not exist.
    Missing,
    /// It does not fit the sandbox's state now.
    State,
    /// The agent or the host failed.
    Agent,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request has a value the daemon refuses.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("max_learned_addresses: {0}")]
    LearnedLimit(#[source] LimitError),
    #[error("no sandbox with id or name \"{0}\"")]
    NoSandbox(String),
    #[error("sandbox {sandbox} has no exec {exec}")]
    NoExec { sandbox: String, exec: u32 },
    #[error("sandbox {0} has ended")]
    Ended(String),
    #[error("sandbox {0} is ending")]
    Ending(String),
    #[error("sandbox {0} is running: kill it first, or remove with force")]
    StillRunning(String),
    #[error("{}", name_taken(name, taken))]
    NameTaken { name: String, taken: String },
    #[error("sandbox {0} has no readiness probe")]
    NoProbe(String),
    #[error("sandbox {sandbox} is not ready: {why}")]
    NotReady { sandbox: String, why: String },
    /// `writing`: a write was refused (a close has nothing more to say).
    #[error("{}", no_stdin(sandbox, *writing))]
    NoStdin { sandbox: String, writing: bool },
    #[error("stdin of sandbox {sandbox}: {source}")]
    Stdin { sandbox: String, source: io::Error },
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The workload could not start; `exit_code` is what `run` exits with (127 not found,
    /// 126 cannot execute, 125 the agent's own failure).
    #[error("{message}")]
    Workload { message: String, exit_code: i32 },
    /// The workload was refused before anything started (no such user, cwd...): the
    /// request's fault, whatever `run` would exit with.
    #[error("{message}")]
    WorkloadRefused { message: String, exit_code: i32 },
    /// An exec's command could not start.
    #[error("exec: {0}")]
    ExecStart(String),
    #[error(transparent)]
    Kernel(#[from] EnforcementError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Domains(#[from] DomainError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("tunnel for port {port}: {source}")]
    Tunnel { port: u16, source: io::Error },
    /// Something the daemon keeps was not there (a bug or a race with the kernel).
    #[error("{0}")]
    Lost(&'static str),
    #[error(transparent)]
    Resources(#[from] LimitsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    View(#[from] crate::view::ViewError),
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::Image(e) => {
                if e.is_request() {
                    Fault::Request
                } else {
                    Fault::Agent
                }
            }
            Self::Invalid { .. }
            | Self::Policy(_)
            | Self::LearnedLimit(_)
            | Self::ExecStart(_)
            | Self::WorkloadRefused { .. }
            | Self::Resources(
                LimitsError::Invalid { .. } | LimitsError::MissingController { .. },
            )
            | Self::View(_)
            | Self::Files(crate::files::FilesError::BadPath(_))
            | Self::Token(TokenError::MetadataTooLarge(_) | TokenError::MetadataNotAHeader) => {
                Fault::Request
            }
            Self::Workload { exit_code, .. } => {
                if *exit_code == 125 {
                    Fault::Agent
                } else {
                    Fault::Request
                }
            }
            Self::NoSandbox(_) | Self::NoExec { .. } | Self::Token(TokenError::Unknown(_)) => {
                Fault::Missing
            }
            Self::Ended(_)
            | Self::Ending(_)
            | Self::StillRunning(_)
            | Self::NameTaken { .. }
            | Self::NoProbe(_)
            | Self::NotReady { .. }
            | Self::NoStdin { .. }
            | Self::Stdin { .. }
            | Self::Identity(IdentityError::Exhausted { .. })
            | Self::Files(
                crate::files::FilesError::Access { .. }
                | crate::files::FilesError::TooLarge { .. }
                | crate::files::FilesError::Full { .. }
                | crate::files::FilesError::IsDirectory(_),
            ) => Fault::State,
            Self::Token(TokenError::Save(_))
            | Self::Kernel(_)
            | Self::Cgroup(_)
            | Self::Domains(_)
            | Self::Io { .. }
            | Self::Tunnel { .. }
            | Self::Lost(_)
            | Self::Resources(LimitsError::Io { .. })
            | Self::Identity(_)
            | Self::Files(crate::files::FilesError::Root(_)) => Fault::Agent,
        }
    }

    /// The status `run` exits with when this kept the workload from starting.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Workload { exit_code, .. } | Self::WorkloadRefused { exit_code, .. } => {
                Some(*exit_code)
            }
            _ => None,
        }
    }
}

fn name_taken(name: &str, taken: &str) -> String {
    if taken == name {
        format!("name \"{name}\" is taken by a live sandbox")
    } else {
        format!(
            "name \"{name}\" is taken by a live sandbox named \"{taken}\" (names are case-insensitive)"
        )
    }
}

fn no_stdin(sandbox: &str, writing: bool) -> String {
    if writing {
        format!(
            "sandbox {sandbox} has no open stdin (create it with \"stdin\": true; a closed stdin stays closed)"
        )
    } else {
        format!("sandbox {sandbox} has no open stdin")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
