//! What the daemon reports: one stream of verdict events (the kernel's denials from the
//! `EVENTS` ring buffer, and the resolver's and proxy's decisions) as JSON lines, kept in a
//! bounded history and fanned out to followers; and Prometheus metrics.
use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sandbox_common::{EventBudget, EventKind, Reason, VerdictEvent, map_names};
use serde::Serialize;
use tokio::sync::broadcast;

use super::event_share::{Admission, Budgets, EVENTS_PER_SECOND, History};
use crate::{enforcement::canonical, events::FlowEvent, paths::Paths};

/// One event line with the fields followers filter on.
#[derive(Clone, Debug)]
pub struct Line {
    pub sandbox: Option<String>,
    pub denied: bool,
    pub text: Arc<str>,
}

#[derive(Serialize)]
struct KernelEventJson<'a> {
    ts_ms: u64,
    sandbox: Option<&'a str>,
    source: &'static str,
    kind: &'static str,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    verdict: &'static str,
    reason: &'static str,
    cgroup_id: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabels {
    pub sandbox: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub sandbox: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub source: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub packets: Family<VerdictLabels, Gauge<u64, AtomicU64>>,
    pub bytes: Family<VerdictLabels, Gauge<u64, AtomicU64>>,
    pub connects_refused: Family<SandboxLabels, Gauge<u64, AtomicU64>>,
    pub sends_refused: Family<SandboxLabels, Gauge<u64, AtomicU64>>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub sandboxes: Family<StateLabels, Gauge<i64, AtomicI64>>,
    pub events_suppressed: Gauge<u64, AtomicU64>,
    pub events_lost: Counter,
    pub events_dropped: Family<SandboxLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sandbox_agent");
        let m = Self {
            packets: Family::default(),
            bytes: Family::default(),
            connects_refused: Family::default(),
            sends_refused: Family::default(),
            decisions: Family::default(),
            sandboxes: Family::default(),
            events_suppressed: Gauge::default(),
            events_lost: Counter::default(),
            events_dropped: Family::default(),
            registry: Registry::default(),
        };
        // Kernel counters are totals read at scrape time: exposed as gauges of the totals
        // because they vanish with their sandbox (a counter must never go down).
        registry.register(
            "packets",
            "Packets of each sandbox by verdict, counted in the kernel",
            m.packets.clone(),
        );
        registry.register(
            "bytes",
            "Bytes of each sandbox by verdict, counted in the kernel",
            m.bytes.clone(),
        );
        registry.register(
            "connects_refused",
            "connect() calls of each sandbox refused in the kernel",
            m.connects_refused.clone(),
        );
        registry.register(
            "sends_refused",
            "sendto()/sendmsg() calls of each sandbox refused in the kernel",
            m.sends_refused.clone(),
        );
        registry.register(
            "decisions",
            "Resolver and proxy decisions by verdict",
            m.decisions.clone(),
        );
        registry.register("sandboxes", "Sandboxes by state", m.sandboxes.clone());
        registry.register(
            "kernel_events_suppressed",
            "Kernel verdict events not sent because of the per-CPU rate limit",
            m.events_suppressed.clone(),
        );
        registry.register(
            "kernel_events_lost",
            "Kernel verdict events that could not be read",
            m.events_lost.clone(),
        );
        registry.register(
            "events_dropped",
            "Events of each sandbox not published because it was over its event budget",
            m.events_dropped.clone(),
        );
        Self { registry, ..m }
    }
}

pub struct Observe {
    history: Mutex<History>,
    budgets: Mutex<Budgets>,
    live: broadcast::Sender<Line>,
    pub metrics: Metrics,
    budget: Mutex<PerCpuArray<MapData, EventBudget>>,
    ring: Mutex<Option<RingBuf<MapData>>>,
}

impl Observe {
    pub fn new(paths: &Paths) -> Result<Self, crate::enforcement::EnforcementError> {
        let open = |name: &'static str| {
            let path = paths.maps_dir().join(name);
            MapData::from_pin(&path).map_err(|e| crate::enforcement::EnforcementError::Io {
                action: "open pinned map",
                path,
                source: std::io::Error::other(e.to_string()),
            })
        };
        let budget =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(map_names::EVENT_BUDGET)?))
                .map_err(|e| crate::enforcement::EnforcementError::Io {
                    action: "open",
                    path: map_names::EVENT_BUDGET.into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        let ring =
            RingBuf::try_from(aya::maps::Map::RingBuf(open(map_names::EVENTS)?)).map_err(|e| {
                crate::enforcement::EnforcementError::Io {
                    action: "open",
                    path: map_names::EVENTS.into(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        Ok(Self {
            history: Mutex::new(History::default()),
            budgets: Mutex::new(Budgets::default()),
            live: broadcast::channel(4096).0,
            metrics: Metrics::new(),
            budget: Mutex::new(budget),
            ring: Mutex::new(Some(ring)),
        })
    }

    /// Within the sandbox's budget (see `event_share`): into the history and to followers.
    fn publish(&self, line: Line) {
        if let Some(sandbox) = &line.sandbox {
            let admission = self
                .budgets
                .lock()
                .map_or(Admission::Publish { dropped_before: 0 }, |mut b| {
                    b.admit(sandbox, Instant::now())
                });
            match admission {
                Admission::Drop => {
                    self.metrics
                        .events_dropped
                        .get_or_create(&SandboxLabels {
                            sandbox: sandbox.clone(),
                        })
                        .inc();
                    return;
                }
                Admission::Publish { dropped_before } if dropped_before > 0 => {
                    self.send(dropped_line(sandbox, dropped_before));
                }
                Admission::Publish { .. } => {}
            }
        }
        self.send(line);
    }

    fn send(&self, line: Line) {
        if let Ok(mut h) = self.history.lock() {
            h.push(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The kept history and a receiver for what follows.
    pub fn subscribe(&self) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let rx = self.live.subscribe();
        let history = self.history.lock().map(|h| h.lines()).unwrap_or_default();
        (history, rx)
    }

    /// A resolver or proxy decision.
    pub fn flow_event(&self, sandbox: &str, event: &FlowEvent) {
        let Ok(text) = serde_json::to_string(event) else {
            return;
        };
        let source = match event.source {
            Some(crate::events::Source::Dns) => "dns",
            Some(crate::events::Source::Proxy) => "proxy",
            None => "agent",
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                source: source.into(),
                verdict: event.verdict.into(),
            })
            .inc();
        self.publish(Line {
            sandbox: Some(sandbox.to_owned()),
            denied: event.verdict == "denied",
            text: text.into(),
        });
    }

    pub fn sandbox_started(&self) {
        self.state_gauge("running").inc();
    }

    pub fn sandbox_ended(&self) {
        self.state_gauge("running").dec();
        self.state_gauge("exited").inc();
    }

    fn state_gauge(&self, state: &str) -> Gauge<i64, AtomicI64> {
        self.metrics
            .sandboxes
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .clone()
    }

    /// Reads the kernel's ring buffer until the daemon stops; `sandbox_of` names the
    /// sandbox of a cgroup id.
    pub async fn read_kernel_events(
        self: Arc<Self>,
        sandbox_of: impl Fn(u64) -> Option<String> + Send + 'static,
    ) {
        let Some(ring) = self.ring.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        // SAFETY: the AsyncFd owns the ring buffer map, whose descriptor lives as long.
        let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot watch the kernel event ring: {e}");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<VerdictEvent>() {
                    self.metrics.events_lost.inc();
                    continue;
                }
                // SAFETY: the kernel wrote a whole VerdictEvent (size checked); read unaligned.
                let event: VerdictEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                drop(item);
                let sandbox = sandbox_of(event.cgroup_id);
                self.publish(kernel_line(&event, sandbox));
            }
            guard.clear_ready();
        }
    }

    /// Brings the kernel-side gauges up to date (at scrape time).
    pub fn refresh_kernel(&self, counters: &[(String, sandbox_common::Counters)]) {
        let m = &self.metrics;
        m.packets.clear();
        m.bytes.clear();
        m.connects_refused.clear();
        m.sends_refused.clear();
        for (sandbox, c) in counters {
            let v = |verdict: &str| VerdictLabels {
                sandbox: sandbox.clone(),
                verdict: verdict.into(),
            };
            m.packets
                .get_or_create(&v("allowed"))
                .set(c.allowed_packets);
            m.packets.get_or_create(&v("denied")).set(c.denied_packets);
            m.bytes.get_or_create(&v("allowed")).set(c.allowed_bytes);
            m.bytes.get_or_create(&v("denied")).set(c.denied_bytes);
            let s = SandboxLabels {
                sandbox: sandbox.clone(),
            };
            m.connects_refused.get_or_create(&s).set(c.denied_connects);
            m.sends_refused.get_or_create(&s).set(c.denied_sends);
        }
        if let Ok(budget) = self.budget.lock()
            && let Ok(per_cpu) = budget.get(&0, 0)
        {
            m.events_suppressed
                .set(per_cpu.iter().map(|b| b.suppressed).sum());
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry);
        out
    }
}

#[derive(Serialize)]
struct DroppedJson<'a> {
    ts_ms: u64,
    sandbox: &'a str,
    source: &'static str,
    kind: &'static str,
    dropped: u64,
    reason: String,
}

/// Says that `dropped` events of the sandbox were left out.
fn dropped_line(sandbox: &str, dropped: u64) -> Line {
    let json = DroppedJson {
        ts_ms: now_ms(),
        sandbox,
        source: "agent",
        kind: "events-dropped",
        dropped,
        reason: format!("over the sandbox's event budget ({EVENTS_PER_SECOND}/s)"),
    };
    Line {
        sandbox: Some(sandbox.to_owned()),
        denied: true,
        text: serde_json::to_string(&json).unwrap_or_default().into(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn kernel_line(event: &VerdictEvent, sandbox: Option<String>) -> Line {
    let kind = match event.kind {
        k if k == EventKind::Connect as u16 => "connect",
        k if k == EventKind::Send as u16 => "send",
        k if k == EventKind::Egress as u16 => "egress-packet",
        _ => "ingress-packet",
    };
    let json = KernelEventJson {
        ts_ms: now_ms(),
        sandbox: sandbox.as_deref(),
        source: "kernel",
        kind,
        peer: canonical(IpAddr::from(event.peer)).to_string(),
        port: (event.port != 0).then_some(event.port),
        verdict: "denied",
        reason: reason_text(event.reason),
        cgroup_id: event.cgroup_id,
    };
    let text = serde_json::to_string(&json).unwrap_or_default().into();
    Line {
        sandbox,
        denied: true,
        text,
    }
}

fn reason_text(reason: u32) -> &'static str {
    const ALL: [(Reason, &str); 13] = [
        (Reason::AllowRule, "allow rule"),
        (Reason::DenyRule, "deny rule"),
        (Reason::DefaultAllow, "default allow"),
        (Reason::DefaultDeny, "no rule allows it"),
        (Reason::LoopbackNotNamed, "loopback not allowed by name"),
        (Reason::Tie, "allow and deny rules of equal length"),
        (Reason::UnknownSandbox, "unknown sandbox"),
        (Reason::Malformed, "malformed packet"),
        (Reason::AgentFlow, "agent flow"),
        (Reason::LearnedAddress, "learned address"),
        (
            Reason::Inbound,
            "inbound connection not from the agent's ingress",
        ),
        (Reason::Ingress, "ingress connection"),
        (
            Reason::Quota,
            "over the sandbox's quota of a shared kernel map",
        ),
    ];
    ALL.iter()
        .find(|(r, _)| *r as u32 == reason)
        .map_or("unknown", |(_, t)| t)
}
