//! What the gateway and the tunnels need of the sandboxes they serve, and nothing more: a
//! live sandbox by id or name, its exposed ports, its listeners, the tokens, and a guard
//! that counts a request as activity. The daemon implements it; ingress never names the
//! daemon (the arrow goes one way: daemon → ingress).
use std::sync::Arc;

use crate::{api::PortView, enforcement::Listeners, ingress::tokens::Tokens};

/// The sandboxes as the ingress sees them.
pub trait Directory: Send + Sync + 'static {
    /// A live sandbox by id or name (`None` for an unknown or ended one).
    fn live(&self, reference: &str) -> Option<Arc<dyn Served>>;
    /// Connect and traffic tokens.
    fn tokens(&self) -> &Tokens;
    /// Where the sandboxes' listeners really are (the kernel moves them).
    fn listeners(&self) -> &Listeners;
}

/// One sandbox as the ingress sees it.
pub trait Served: Send + Sync {
    fn id(&self) -> &str;
    fn running(&self) -> bool;
    /// Its cgroup and those of its narrowed execs (where its listeners may be).
    fn cgroup_ids(&self) -> Vec<u64>;
    /// Its exposed ports and how they are opened.
    fn exposure(&self) -> Exposure;
    /// Counts a request or connection as activity (idle timeout) while the guard lives.
    fn activity(self: Arc<Self>) -> Activity;
}

/// What a sandbox exposes and on which terms.
pub struct Exposure {
    pub ports: Vec<PortView>,
    /// HTTP requests also need its traffic token.
    pub private_ports: bool,
    /// The `Host` the workload sees.
    pub mask_host: Option<String>,
}

/// A request or connection through the ingress, open while this lives.
pub struct Activity(#[expect(dead_code, reason = "held for its drop")] Box<dyn Send + Sync>);

impl Activity {
    /// `guard` ends the activity when it is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Box::new(guard))
    }
}
