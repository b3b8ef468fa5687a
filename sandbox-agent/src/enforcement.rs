//! Loads, attaches and pins the eBPF programs once, then applies and removes per-sandbox
//! policies with map writes only.
//!
//! Layout in bpffs (`paths::Paths::pin_dir`): `maps/<NAME>` for every map, `links/<program>`
//! for every attachment to the parent cgroup, and `maps/META` written last, holding the hash
//! of the eBPF object and the id of the cgroup the links are attached to. Pinned links keep
//! the programs attached when the agent exits or dies, so sandboxes stay confined (fail
//! closed). Starting a sandbox with an install in place costs map writes and no program load.
use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        SockOps, links::FdLink,
    },
};
use ipnet::{Ipv4Net, Ipv6Net};
use sandbox_common::{
    Counters, DEFAULT_MAX_PREFIXES, FlowKind, FlowMark, Layer, LearnedV4, LearnedV6, ListenKey,
    LpmDataV4, LpmDataV6, OrigDst, POLICY_ID_BITS, ProxyKey, Reason, RuleValue, SandboxEntry,
    ServerPort, Verdict, combine, decide, loopback_min_v4, loopback_min_v6, lpm_data_v4,
    lpm_data_v6, map_names, program_names, v4_mapped,
};

use crate::{
    cgroup::{self, CgroupError},
    paths::{self, Paths},
    policy::CompiledPolicy,
};

/// The eBPF object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sandbox-ebpf"));

/// `BPF_NOEXIST`: insert only if the key is new.
const BPF_NOEXIST: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EnforcementError {
    #[error("sandbox-agent must run as root: it loads eBPF programs and creates cgroups")]
    NotRoot,
    #[error("cannot mount bpffs at {path}: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: {}", short_program_error(source))]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error(
        "the eBPF programs in {pin_dir} come from another sandbox-agent build and {live} \
         sandbox(es) still use them; stop those sandboxes, then run `sandbox-agent teardown`"
    )]
    OtherBuildInUse { pin_dir: PathBuf, live: usize },
    #[error("{live} sandbox(es) are still running; stop them before `teardown`")]
    SandboxesLive { live: usize },
    #[error("no free policy id (all {tried} tries taken)")]
    PolicyIdsExhausted { tried: u32 },
    #[error("cgroup {cgroup_id} has no sandbox entry in the kernel")]
    NoSandboxEntry { cgroup_id: u64 },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// A verifier rejection carries the whole log; one line of it (the verdict) is enough for
/// an error message. `SANDBOX_AGENT_VERIFIER_LOG=1` prints all of it.
fn short_program_error(err: &ProgramError) -> String {
    let text = err.to_string();
    if std::env::var_os("SANDBOX_AGENT_VERIFIER_LOG").is_some() {
        return text;
    }
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text;
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let verdict = lines
        .iter()
        .rev()
        .find(|l| {
            !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed")
        })
        .unwrap_or(&"");
    format!("{head}verifier: {verdict} (set SANDBOX_AGENT_VERIFIER_LOG=1 for the whole log)")
}

type Result<T, E = EnforcementError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> EnforcementError {
    move |source| EnforcementError::Map { name, source }
}

/// How a program attaches to the parent cgroup.
#[derive(Clone, Copy)]
enum Attach {
    Skb(CgroupSkbAttachType),
    /// The attach type comes from the program's section (`cgroup/connect4`, ...).
    SockAddr,
    /// `cgroup/sock_release`, `cgroup/post_bind4|6`; the attach type comes from the section.
    Sock,
    SockOps,
}

/// Every program, each attached through a pinned link named after it.
const PROGRAMS: [(&str, Attach); 14] = [
    (
        program_names::EGRESS,
        Attach::Skb(CgroupSkbAttachType::Egress),
    ),
    (
        program_names::INGRESS,
        Attach::Skb(CgroupSkbAttachType::Ingress),
    ),
    (program_names::CONNECT4, Attach::SockAddr),
    (program_names::CONNECT6, Attach::SockAddr),
    (program_names::SENDMSG4, Attach::SockAddr),
    (program_names::SENDMSG6, Attach::SockAddr),
    (program_names::RECVMSG4, Attach::SockAddr),
    (program_names::RECVMSG6, Attach::SockAddr),
    (program_names::SOCK_OPS, Attach::SockOps),
    (program_names::SOCK_RELEASE, Attach::Sock),
    (program_names::BIND4, Attach::SockAddr),
    (program_names::BIND6, Attach::SockAddr),
    (program_names::POST_BIND4, Attach::Sock),
    (program_names::POST_BIND6, Attach::Sock),
];

/// FNV-1a over the eBPF object: tells whether pinned programs come from this build.
fn object_hash() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Handles on the pinned maps; one per agent process.
pub struct Enforcement {
    pub parent_cgroup: PathBuf,
    sandboxes: HashMap<MapData, u64, SandboxEntry>,
    allow_v4: LpmTrie<MapData, LpmDataV4, RuleValue>,
    deny_v4: LpmTrie<MapData, LpmDataV4, RuleValue>,
    allow_v6: LpmTrie<MapData, LpmDataV6, RuleValue>,
    deny_v6: LpmTrie<MapData, LpmDataV6, RuleValue>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    /// Listener records per sandbox (the kernel counts; removed with the sandbox).
    listen_counts: HashMap<MapData, u64, u64>,
    policy_ids: HashMap<MapData, u32, u64>,
    learned_v4: HashMap<MapData, LearnedV4, u64>,
    learned_v6: HashMap<MapData, LearnedV6, u64>,
    flows: HashMap<MapData, u64, FlowMark>,
    /// The host floor every sandbox gets as an outer layer (each sandbox owns a copy of its
    /// rules, so that its lifetime is the sandbox's).
    floor: Option<CompiledPolicy>,
}

/// What `open` found or did, for reports and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallState {
    /// The programs of this build were already attached and pinned.
    Reused,
    /// The programs were loaded, attached and pinned now.
    Installed,
}

/// An exclusive `flock` on a file, released on drop.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path) -> io::Result<Self> {
        Self::lock(path, true).map(|l| l.expect("blocking lock"))
    }

    /// `None` when someone else holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Self>> {
        Self::lock(path, false)
    }

    fn lock(path: &Path, wait: bool) -> io::Result<Option<Self>> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(Some(Self { _file: file }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }
}

fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| EnforcementError::Io {
        action: "create directory",
        path: path.into(),
        source,
    })
}

/// Mounts bpffs at /sys/fs/bpf unless a bpffs is already there.
fn ensure_bpffs() -> Result<()> {
    let path = Path::new(paths::BPFFS);
    if let Ok(st) = nix::sys::statfs::statfs(path)
        && st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC
    {
        return Ok(());
    }
    ensure_dir(path)?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| EnforcementError::MountBpffs {
        path: path.into(),
        source,
    })
}

fn open_map(paths: &Paths, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(paths.maps_dir().join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// A pinned map as its typed handle (`HashMap`, `LpmTrie`, ...).
fn open_typed<T: TryFrom<Map, Error = MapError>>(paths: &Paths, name: &'static str) -> Result<T> {
    open_map(paths, name)?.try_into().map_err(map_err(name))
}

/// Reads META: `Some((object hash, cgroup id))` for a complete install.
fn read_meta(paths: &Paths) -> Option<(u64, u64)> {
    if !paths.maps_dir().join(map_names::META).exists() {
        return None;
    }
    let meta: Array<MapData, u64> = open_map(paths, map_names::META).ok()?.try_into().ok()?;
    Some((meta.get(&0, 0).ok()?, meta.get(&1, 0).ok()?))
}

/// Sandboxes with processes: entries of the pinned map whose cgroup below the parent still
/// has some. An entry left by an agent that was killed, whose workload is gone, does not
/// count (its maps go with the pins).
fn live_sandboxes(paths: &Paths) -> usize {
    let Ok(map) = open_map(paths, map_names::SANDBOXES) else {
        return 0;
    };
    let Ok(map): Result<HashMap<MapData, u64, SandboxEntry>, _> = map.try_into() else {
        return 0;
    };
    let entries: std::collections::HashSet<u64> = map.keys().filter_map(Result::ok).collect();
    let Ok(parent) = cgroup::find_cgroup2_mount().map(|m| m.join(paths::NAME)) else {
        return entries.len();
    };
    // Sandboxes and their narrowed execs' child cgroups.
    let mut live = 0;
    let mut dirs = vec![parent];
    while let Some(dir) = dirs.pop() {
        let Ok(children) = fs::read_dir(&dir) else {
            continue;
        };
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let path = child.path();
            if cgroup::SandboxCgroup::open(path.clone())
                .is_ok_and(|c| entries.contains(&c.id) && c.is_populated().unwrap_or(false))
            {
                live += 1;
            }
            dirs.push(path);
        }
    }
    live
}

impl Enforcement {
    /// Opens the pinned programs and maps of this build, installing them first if needed.
    pub fn open(paths: &Paths) -> Result<(Self, InstallState)> {
        if !nix::unistd::geteuid().is_root() {
            return Err(EnforcementError::NotRoot);
        }
        let mount = cgroup::find_cgroup2_mount()?;
        ensure_dir(&paths.run_dir)?;
        let lock_path = paths.install_lock();
        let _lock = FileLock::acquire(&lock_path).map_err(|source| EnforcementError::Io {
            action: "lock",
            path: lock_path,
            source,
        })?;
        let parent = cgroup::ensure_parent(&mount)?;
        let parent_id = cgroup::cgroup_id(&parent)?;
        let links_present = PROGRAMS
            .iter()
            .all(|(name, _)| paths.links_dir().join(name).exists());
        let meta = read_meta(paths);
        let state = if links_present && meta == Some((object_hash(), parent_id)) {
            InstallState::Reused
        } else {
            let live = live_sandboxes(paths);
            if live > 0 && meta.is_some_and(|(hash, _)| hash != object_hash()) {
                return Err(EnforcementError::OtherBuildInUse {
                    pin_dir: paths.pin_dir.clone(),
                    live,
                });
            }
            install(paths, &parent, parent_id)?;
            InstallState::Installed
        };
        Ok((Self::from_pins(paths, parent)?, state))
    }

    fn from_pins(paths: &Paths, parent_cgroup: PathBuf) -> Result<Self> {
        use map_names as n;
        Ok(Self {
            parent_cgroup,
            sandboxes: open_typed(paths, n::SANDBOXES)?,
            allow_v4: open_typed(paths, n::ALLOW_V4)?,
            deny_v4: open_typed(paths, n::DENY_V4)?,
            allow_v6: open_typed(paths, n::ALLOW_V6)?,
            deny_v6: open_typed(paths, n::DENY_V6)?,
            counters: open_typed(paths, n::COUNTERS)?,
            listen_counts: open_typed(paths, n::LISTEN_COUNTS)?,
            policy_ids: open_typed(paths, n::POLICY_IDS)?,
            learned_v4: open_typed(paths, n::LEARNED_V4)?,
            learned_v6: open_typed(paths, n::LEARNED_V6)?,
            flows: open_typed(paths, n::FLOWS)?,
            floor: None,
        })
    }

    /// Sets the host floor that every sandbox applied from now on gets.
    pub fn set_floor(&mut self, floor: Option<CompiledPolicy>) {
        self.floor = floor;
    }

    pub fn floor(&self) -> Option<&CompiledPolicy> {
        self.floor.as_ref()
    }

    /// Writes a sandbox's policy: a fresh policy id, its prefixes, zeroed counters, and last
    /// the SANDBOXES entry that makes the kernel use them. On error everything written so far
    /// is removed again, so nothing is applied half-way.
    ///
    /// `ports` are the loopback ports of the sandbox's resolver and proxy (`(0, 0)` without
    /// domain rules).
    pub fn apply(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        ports: (u16, u16),
    ) -> Result<u32> {
        self.apply_layered(cgroup_id, policy, ports, None)
    }

    /// As [`Enforcement::apply`], with a ceiling: the entry of the sandbox an exec runs in,
    /// whose own policy and floor become this entry's outer layers (owned by that sandbox).
    pub fn apply_layered(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        ports: (u16, u16),
        ceiling: Option<&SandboxEntry>,
    ) -> Result<u32> {
        let policy_id = self.install_policy(cgroup_id, policy)?;
        let outer = match ceiling {
            Some(c) => Ok([c.own(), c.outer[1]]),
            None => self
                .install_floor(cgroup_id)
                .map(|floor| [Layer::default(), floor]),
        };
        let result = outer.and_then(|outer| {
            let mut entry = policy.sandbox_entry(policy_id, ports.0, ports.1);
            entry.outer = outer;
            self.zero_counters(cgroup_id)?;
            self.sandboxes
                .insert(cgroup_id, entry, 0)
                .map_err(map_err(map_names::SANDBOXES))
        });
        if result.is_err() {
            self.remove(cgroup_id, policy_id, Some(policy));
        }
        result.map(|()| policy_id)
    }

    /// Replaces a live sandbox's policy: the new rules go in under a fresh policy id, then one
    /// map update switches the sandbox (and every entry that has it as a ceiling, `dependents`)
    /// to them, then the old rules go. New connections see either policy whole, never a mix.
    /// Learned addresses and learned-connection marks move to the new id where
    /// `keep_learned` says so. Returns the new policy id and the peers of learned connections
    /// that lost their mark.
    pub fn replace_policy(
        &mut self,
        cgroup_id: u64,
        old: (u32, &CompiledPolicy),
        new: &CompiledPolicy,
        ports: (u16, u16),
        dependents: &[u64],
        keep_learned: impl Fn(std::net::IpAddr) -> bool,
    ) -> Result<(u32, Vec<std::net::IpAddr>)> {
        let current = self
            .sandbox_entry(cgroup_id)
            .ok_or(EnforcementError::NoSandboxEntry { cgroup_id })?;
        let policy_id = self.install_policy(cgroup_id, new)?;
        // Learned addresses the new policy still permits move over before the switch, so
        // that no connect in between misses them.
        let cut = self.carry_learned(old.0, policy_id, keep_learned);
        let mut entry = new.sandbox_entry(policy_id, ports.0, ports.1);
        entry.outer = current.outer;
        if let Err(e) = self
            .sandboxes
            .insert(cgroup_id, entry, 0)
            .map_err(map_err(map_names::SANDBOXES))
        {
            self.uninstall_policy(policy_id, Some(new));
            return Err(e);
        }
        // Narrowed execs below it: the new policy is their ceiling. Only entries whose
        // ceiling is the old policy are touched.
        for &dependent in dependents {
            if let Some(mut d) = self.sandbox_entry(dependent)
                && d.outer[0].policy_id == old.0
            {
                d.outer[0] = entry.own();
                let _ = self.sandboxes.insert(dependent, d, 0);
            }
        }
        self.uninstall_policy(old.0, Some(old.1));
        Ok((policy_id, cut))
    }

    /// Points a sandbox's redirects at new resolver and proxy ports (a restarted daemon's).
    pub fn set_ports(&mut self, cgroup_id: u64, (dns_port, proxy_port): (u16, u16)) -> Result<()> {
        let mut entry = self
            .sandbox_entry(cgroup_id)
            .ok_or(EnforcementError::NoSandboxEntry { cgroup_id })?;
        entry.dns_port = u32::from(dns_port);
        entry.proxy_port = u32::from(proxy_port);
        self.sandboxes
            .insert(cgroup_id, entry, 0)
            .map_err(map_err(map_names::SANDBOXES))
    }

    /// Installs a policy's rules under a fresh id owned by `owner_cgroup`; on error nothing
    /// stays.
    fn install_policy(&mut self, owner_cgroup: u64, policy: &CompiledPolicy) -> Result<u32> {
        let policy_id = self.allocate_policy_id(owner_cgroup)?;
        let result = self.write_rules(policy_id, policy);
        if result.is_err() {
            self.uninstall_policy(policy_id, Some(policy));
        }
        result.map(|()| policy_id)
    }

    /// The floor as an outer layer owned by `cgroup_id` (an unused slot without a floor).
    fn install_floor(&mut self, cgroup_id: u64) -> Result<Layer> {
        let Some(floor) = self.floor.take() else {
            return Ok(Layer::default());
        };
        let result = self.install_policy(cgroup_id, &floor);
        let layer = result.map(|id| floor.sandbox_entry(id, 0, 0).own());
        self.floor = Some(floor);
        layer
    }

    fn allocate_policy_id(&mut self, cgroup_id: u64) -> Result<u32> {
        const TRIES: u32 = 64;
        for _ in 0..TRIES {
            let mut bytes = [0u8; 4];
            getrandom(&mut bytes);
            let id = u32::from_ne_bytes(bytes);
            // 0 marks an unused outer layer.
            if id == 0 {
                continue;
            }
            match self.policy_ids.insert(id, cgroup_id, BPF_NOEXIST) {
                Ok(()) => return Ok(id),
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_err(map_names::POLICY_IDS)(e)),
            }
        }
        Err(EnforcementError::PolicyIdsExhausted { tried: TRIES })
    }

    fn write_rules(&mut self, policy_id: u32, policy: &CompiledPolicy) -> Result<()> {
        insert_nets(
            &mut self.allow_v4,
            map_names::ALLOW_V4,
            &policy.allow_v4,
            v4_key(policy_id),
        )?;
        insert_nets(
            &mut self.deny_v4,
            map_names::DENY_V4,
            &policy.deny_v4,
            v4_key(policy_id),
        )?;
        insert_nets(
            &mut self.allow_v6,
            map_names::ALLOW_V6,
            &policy.allow_v6,
            v6_key(policy_id),
        )?;
        insert_nets(
            &mut self.deny_v6,
            map_names::DENY_V6,
            &policy.deny_v6,
            v6_key(policy_id),
        )
    }

    fn zero_counters(&mut self, cgroup_id: u64) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| EnforcementError::Io {
            action: "count",
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|source| {
            EnforcementError::Io {
                action: "size per-CPU values for",
                path: map_names::COUNTERS.into(),
                source,
            }
        })?;
        self.counters
            .insert(cgroup_id, zero, 0)
            .map_err(map_err(map_names::COUNTERS))
    }

    /// Removes a sandbox's entries: first the SANDBOXES entry (from then on the kernel denies
    /// everything for that cgroup), then its rules, the outer layers it owns (its floor) and
    /// its counters. With `policy` unknown (a sandbox whose agent died), the tries are scanned
    /// for the policy id. Best effort: every step runs even if an earlier one failed.
    pub fn remove(&mut self, cgroup_id: u64, policy_id: u32, policy: Option<&CompiledPolicy>) {
        let entry = self.sandbox_entry(cgroup_id);
        let _ = self.sandboxes.remove(&cgroup_id);
        self.uninstall_policy(policy_id, policy);
        for layer in entry.map(|e| e.outer).unwrap_or_default() {
            if layer.policy_id != 0
                && self.policy_ids.get(&layer.policy_id, 0).ok() == Some(cgroup_id)
            {
                let floor = self.floor.take();
                self.uninstall_policy(layer.policy_id, floor.as_ref());
                self.floor = floor;
            }
        }
        let _ = self.counters.remove(&cgroup_id);
        let _ = self.listen_counts.remove(&cgroup_id);
    }

    /// Removes a policy's rules, learned addresses, learned-connection marks and id.
    fn uninstall_policy(&mut self, policy_id: u32, policy: Option<&CompiledPolicy>) {
        if let Some(p) = policy {
            remove_nets(&mut self.allow_v4, &p.allow_v4, v4_key(policy_id));
            remove_nets(&mut self.deny_v4, &p.deny_v4, v4_key(policy_id));
            remove_nets(&mut self.allow_v6, &p.allow_v6, v6_key(policy_id));
            remove_nets(&mut self.deny_v6, &p.deny_v6, v6_key(policy_id));
        } else {
            remove_scanned(&mut self.allow_v4, policy_id);
            remove_scanned(&mut self.deny_v4, policy_id);
            remove_scanned(&mut self.allow_v6, policy_id);
            remove_scanned(&mut self.deny_v6, policy_id);
        }
        remove_learned_where(&mut self.learned_v4, |k, _| k.policy_id == policy_id);
        remove_learned_where(&mut self.learned_v6, |k, _| k.policy_id == policy_id);
        let _ = self.policy_ids.remove(&policy_id);
    }

    /// Moves learned addresses and learned-connection marks from one policy id to another,
    /// keeping those `keep` says the new policy still permits and dropping the rest (their
    /// packets are dropped from then on). Returns the peers whose connections lost their mark.
    pub fn carry_learned(
        &mut self,
        from: u32,
        to: u32,
        keep: impl Fn(std::net::IpAddr) -> bool,
    ) -> Vec<std::net::IpAddr> {
        // With `from == to` this prunes in place: what `keep` refuses goes.
        let v4: Vec<(LearnedV4, u64)> = self.learned_v4.iter().filter_map(Result::ok).collect();
        for (k, expiry) in v4.into_iter().filter(|(k, _)| k.policy_id == from) {
            if keep(std::net::IpAddr::V4(k.addr.into())) {
                let _ = self
                    .learned_v4
                    .insert(LearnedV4 { policy_id: to, ..k }, expiry, 0);
            } else if from == to {
                let _ = self.learned_v4.remove(&k);
            }
        }
        let v6: Vec<(LearnedV6, u64)> = self.learned_v6.iter().filter_map(Result::ok).collect();
        for (k, expiry) in v6.into_iter().filter(|(k, _)| k.policy_id == from) {
            if keep(std::net::IpAddr::V6(k.addr.into())) {
                let _ = self
                    .learned_v6
                    .insert(LearnedV6 { policy_id: to, ..k }, expiry, 0);
            } else if from == to {
                let _ = self.learned_v6.remove(&k);
            }
        }
        let marks: Vec<(u64, FlowMark)> = self.flows.iter().filter_map(Result::ok).collect();
        let mut cut = Vec::new();
        for (cookie, mark) in marks {
            if mark.kind != FlowKind::Learned as u32 || mark.policy_id != from {
                continue;
            }
            let peer = canonical(std::net::IpAddr::V6(mark.peer.into()));
            if keep(peer) {
                let _ = self.flows.insert(
                    cookie,
                    FlowMark {
                        policy_id: to,
                        ..mark
                    },
                    0,
                );
            } else {
                // Overwritten with a peer no packet has, not removed: the entry stays counted
                // against the sandbox's quota until the kernel forgets the socket, which the
                // caller cuts.
                let _ = self.flows.insert(
                    cookie,
                    FlowMark {
                        peer: [0; 16],
                        ..mark
                    },
                    0,
                );
                cut.push(peer);
            }
        }
        cut
    }

    /// Counters of one sandbox, summed over CPUs.
    pub fn counters(&self, cgroup_id: u64) -> Option<Counters> {
        let per_cpu = self.counters.get(&cgroup_id, 0).ok()?;
        Some(per_cpu.iter().fold(Counters::default(), |mut sum, c| {
            sum.allowed_packets += c.allowed_packets;
            sum.allowed_bytes += c.allowed_bytes;
            sum.denied_packets += c.denied_packets;
            sum.denied_bytes += c.denied_bytes;
            sum.denied_connects += c.denied_connects;
            sum.denied_sends += c.denied_sends;
            sum.dns_redirects += c.dns_redirects;
            sum.proxy_redirects += c.proxy_redirects;
            sum.learned_connects += c.learned_connects;
            sum
        }))
    }

    /// Every sandbox entry in the kernel.
    pub fn sandboxes(&self) -> Vec<(u64, SandboxEntry)> {
        self.sandboxes.iter().filter_map(Result::ok).collect()
    }

    /// Entries in the LPM tries per policy id, by kind: `[allow4, deny4, allow6, deny6]`.
    /// One scan of every trie; callers derive totals from it.
    pub fn rules_by_policy(&self) -> BTreeMap<u32, [usize; 4]> {
        let mut counts: BTreeMap<u32, [usize; 4]> = BTreeMap::new();
        let mut add =
            |kind: usize, data: &[u8]| counts.entry(policy_of(data)).or_default()[kind] += 1;
        for key in self.allow_v4.keys().filter_map(Result::ok) {
            add(0, &key.data());
        }
        for key in self.deny_v4.keys().filter_map(Result::ok) {
            add(1, &key.data());
        }
        for key in self.allow_v6.keys().filter_map(Result::ok) {
            add(2, &key.data());
        }
        for key in self.deny_v6.keys().filter_map(Result::ok) {
            add(3, &key.data());
        }
        counts
    }

    pub fn policy_id_count(&self) -> usize {
        self.policy_ids.keys().count()
    }

    /// The policy id of a sandbox from the kernel's entry.
    pub fn sandbox_entry(&self, cgroup_id: u64) -> Option<SandboxEntry> {
        self.sandboxes.get(&cgroup_id, 0).ok()
    }
}

fn key_v4(policy_id: u32, net: Ipv4Net) -> Key<LpmDataV4> {
    Key::new(
        POLICY_ID_BITS + u32::from(net.prefix_len()),
        lpm_data_v4(policy_id, net.network().octets()),
    )
}

fn key_v6(policy_id: u32, net: Ipv6Net) -> Key<LpmDataV6> {
    Key::new(
        POLICY_ID_BITS + u32::from(net.prefix_len()),
        lpm_data_v6(policy_id, &net.network().octets()),
    )
}

/// Writes a policy's prefixes into one trie: batched, since a large policy (1M prefixes)
/// would otherwise cost one `bpf()` syscall per prefix.
fn insert_nets<K: aya::Pod, N: Copy>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    name: &'static str,
    nets: &[N],
    key_and_len: impl Fn(N) -> (Key<K>, u32),
) -> Result<()> {
    if nets.is_empty() {
        return Ok(());
    }
    let (keys, values): (Vec<Key<K>>, Vec<RuleValue>) = nets
        .iter()
        .map(|n| {
            let (key, prefix_len) = key_and_len(*n);
            (key, RuleValue { prefix_len })
        })
        .unzip();
    match batch::update(trie_fd(trie), &keys, &values) {
        Ok(()) => Ok(()),
        // Kernels without batch support for LPM tries: one element at a time.
        Err(e) if batch::unsupported(&e) => {
            for (key, value) in keys.iter().zip(&values) {
                trie.insert(key, value, 0).map_err(map_err(name))?;
            }
            Ok(())
        }
        Err(source) => Err(EnforcementError::Io {
            action: "write prefixes to",
            path: name.into(),
            source,
        }),
    }
}

/// Removes a policy's prefixes from one trie, batched like [`insert_nets`]; best effort.
fn remove_nets<K: aya::Pod, N: Copy>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    nets: &[N],
    key_and_len: impl Fn(N) -> (Key<K>, u32),
) {
    if nets.is_empty() {
        return;
    }
    let keys: Vec<Key<K>> = nets.iter().map(|n| key_and_len(*n).0).collect();
    if batch::delete(trie_fd(trie), &keys).is_err() {
        for key in &keys {
            let _ = trie.remove(key);
        }
    }
}

fn trie_fd<K: aya::Pod>(trie: &LpmTrie<MapData, K, RuleValue>) -> std::os::fd::BorrowedFd<'_> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    trie.map().fd().as_fd()
}

fn v4_key(policy_id: u32) -> impl Fn(Ipv4Net) -> (Key<LpmDataV4>, u32) {
    move |net| (key_v4(policy_id, net), u32::from(net.prefix_len()))
}

fn v6_key(policy_id: u32) -> impl Fn(Ipv6Net) -> (Key<LpmDataV6>, u32) {
    move |net| (key_v6(policy_id, net), u32::from(net.prefix_len()))
}

/// `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` (Linux 5.6+), hand-rolled because aya
/// 0.14 has no batch API. Keys and values are passed as contiguous arrays.
mod batch {
    use std::{
        io, mem,
        os::fd::{AsRawFd as _, BorrowedFd},
    };

    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    /// Elements per syscall: bounds the time the kernel holds the trie lock in one go.
    const CHUNK: usize = 65_536;

    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    /// The kernel or the map type has no batch operation.
    pub fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)
        )
    }

    fn call<K, V>(
        cmd: libc::c_long,
        fd: BorrowedFd<'_>,
        keys: &[K],
        values: Option<&[V]>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < keys.len() {
            let n = (keys.len() - done).min(CHUNK);
            let mut attr = BatchAttr {
                in_batch: 0,
                out_batch: 0,
                keys: keys[done..].as_ptr() as u64,
                values: values.map_or(0, |v| v[done..].as_ptr() as u64),
                count: u32::try_from(n).expect("chunk fits u32"),
                map_fd: fd.as_raw_fd().cast_unsigned(),
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: attr points at arrays of `n` keys (and values) that outlive the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    cmd,
                    &raw mut attr,
                    mem::size_of::<BatchAttr>(),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            done += n;
        }
        Ok(())
    }

    pub fn update<K, V>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
        call(BPF_MAP_UPDATE_BATCH, fd, keys, Some(values))
    }

    pub fn delete<K>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
        call::<K, u8>(BPF_MAP_DELETE_BATCH, fd, keys, None)
    }
}

/// The policy id at the front of an LPM key's data.
fn policy_of(data: &[u8]) -> u32 {
    u32::from_be_bytes([data[0], data[1], data[2], data[3]])
}

fn remove_scanned<K: aya::Pod + AsRef<[u8]>>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    policy_id: u32,
) {
    let keys: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| policy_of(k.data().as_ref()) == policy_id)
        .collect();
    for key in keys {
        let _ = trie.remove(&key);
    }
}

/// Removes the learned addresses (`LEARNED_*` entries: key → expiry) for which `pred` holds;
/// a scan, best effort.
fn remove_learned_where<K: aya::Pod>(
    map: &mut HashMap<MapData, K, u64>,
    pred: impl Fn(&K, u64) -> bool,
) {
    let keys: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, expiry)| pred(k, *expiry))
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

/// Records a learned address until `expiry`, keeping a later expiry already there.
fn learn_until<K: aya::Pod>(
    map: &mut HashMap<MapData, K, u64>,
    name: &'static str,
    key: K,
    expiry: u64,
) -> Result<()> {
    let old = map.get(&key, 0).unwrap_or(0);
    map.insert(key, old.max(expiry), 0).map_err(map_err(name))
}

/// A sandbox's listener: its loopback address, and its socket's cookie, which tells it apart
/// from a later listener on the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: std::net::SocketAddr,
    pub cookie: u64,
}

/// Where sandboxes' TCP listeners really are: the kernel steers a sandbox's `bind()` of a
/// fixed port to loopback and a port of its choice, and records both (`LISTENING`).
pub struct Listeners {
    listening: HashMap<MapData, ListenKey, ServerPort>,
}

impl Listeners {
    pub fn open(paths: &Paths) -> Result<Self> {
        Ok(Self {
            listening: open_typed(paths, map_names::LISTENING)?,
        })
    }

    /// The listener on `port` (as the workload asked for it) in one of these cgroups, IPv4
    /// first.
    pub fn find(&self, cgroup_ids: &[u64], port: u16) -> Option<Listener> {
        for &cgroup_id in cgroup_ids {
            for (family, ip) in [
                (4, std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                (6, std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            ] {
                let key = ListenKey {
                    cgroup_id,
                    port,
                    family,
                    pad: 0,
                };
                if let Ok(listener) = self.listening.get(&key, 0) {
                    return Some(Listener {
                        addr: std::net::SocketAddr::new(ip, listener.assigned),
                        cookie: listener.cookie,
                    });
                }
            }
        }
        None
    }
}

/// The maps the resolver and the proxy of one agent process use, opened from the pins:
/// original destinations of proxied connections, learned addresses, and the address rules
/// (the very lookups the kernel makes, so that the proxy checks the addresses it connects to
/// exactly as the kernel would).
pub struct AgentMaps {
    sandboxes: HashMap<MapData, u64, SandboxEntry>,
    allow_v4: LpmTrie<MapData, LpmDataV4, RuleValue>,
    deny_v4: LpmTrie<MapData, LpmDataV4, RuleValue>,
    allow_v6: LpmTrie<MapData, LpmDataV6, RuleValue>,
    deny_v6: LpmTrie<MapData, LpmDataV6, RuleValue>,
    proxy_conns: HashMap<MapData, ProxyKey, OrigDst>,
    learned_v4: HashMap<MapData, LearnedV4, u64>,
    learned_v6: HashMap<MapData, LearnedV6, u64>,
}

impl AgentMaps {
    pub fn open(paths: &Paths) -> Result<Self> {
        use map_names as n;
        Ok(Self {
            sandboxes: open_typed(paths, n::SANDBOXES)?,
            allow_v4: open_typed(paths, n::ALLOW_V4)?,
            deny_v4: open_typed(paths, n::DENY_V4)?,
            allow_v6: open_typed(paths, n::ALLOW_V6)?,
            deny_v6: open_typed(paths, n::DENY_V6)?,
            proxy_conns: open_typed(paths, n::PROXY_CONNS)?,
            learned_v4: open_typed(paths, n::LEARNED_V4)?,
            learned_v6: open_typed(paths, n::LEARNED_V6)?,
        })
    }

    /// Takes the original destination of a connection the kernel redirected to the proxy:
    /// `None` for a connection that did not come through the redirect.
    pub fn take_proxy_conn(&mut self, key: ProxyKey) -> Option<OrigDst> {
        let orig = self.proxy_conns.get(&key, 0).ok()?;
        let _ = self.proxy_conns.remove(&key);
        Some(orig)
    }

    /// Makes `addr` reachable on any TCP port for the policy until `expiry_boot_ns`
    /// (`CLOCK_BOOTTIME`), keeping a later expiry already there.
    pub fn learn(
        &mut self,
        policy_id: u32,
        addr: std::net::IpAddr,
        expiry_boot_ns: u64,
    ) -> Result<()> {
        match canonical(addr) {
            std::net::IpAddr::V4(a) => learn_until(
                &mut self.learned_v4,
                map_names::LEARNED_V4,
                LearnedV4 {
                    policy_id,
                    addr: a.octets(),
                },
                expiry_boot_ns,
            ),
            std::net::IpAddr::V6(a) => learn_until(
                &mut self.learned_v6,
                map_names::LEARNED_V6,
                LearnedV6 {
                    policy_id,
                    addr: a.octets(),
                },
                expiry_boot_ns,
            ),
        }
    }

    /// Removes the policy's learned addresses that expired before `now_boot_ns`.
    pub fn prune_learned(&mut self, policy_id: u32, now_boot_ns: u64) {
        let expired = |id: u32, expiry: u64| id == policy_id && expiry <= now_boot_ns;
        remove_learned_where(&mut self.learned_v4, |k, e| expired(k.policy_id, e));
        remove_learned_where(&mut self.learned_v6, |k, e| expired(k.policy_id, e));
    }

    /// The kernel's address verdict for a sandbox: the same lookups, layers and
    /// `sandbox_common::decide`.
    pub fn address_verdict(&self, cgroup_id: u64, addr: std::net::IpAddr) -> Verdict {
        let Ok(entry) = self.sandboxes.get(&cgroup_id, 0) else {
            return Verdict::deny(Reason::UnknownSandbox);
        };
        let mut verdict = self.layer_verdict(&entry.own(), addr);
        for layer in entry.outer.iter().filter(|l| l.policy_id != 0) {
            verdict = combine(verdict, self.layer_verdict(layer, addr));
        }
        verdict
    }

    fn layer_verdict(&self, layer: &Layer, addr: std::net::IpAddr) -> Verdict {
        let len = |r: std::result::Result<RuleValue, MapError>| r.ok().map(|v| v.prefix_len);
        match canonical(addr) {
            std::net::IpAddr::V4(a) => {
                let key = Key::new(
                    POLICY_ID_BITS + 32,
                    lpm_data_v4(layer.policy_id, a.octets()),
                );
                decide(
                    layer,
                    len(self.allow_v4.get(&key, 0)),
                    len(self.deny_v4.get(&key, 0)),
                    loopback_min_v4(layer, a.octets()),
                )
            }
            std::net::IpAddr::V6(a) => {
                let key = Key::new(
                    POLICY_ID_BITS + 128,
                    lpm_data_v6(layer.policy_id, &a.octets()),
                );
                decide(
                    layer,
                    len(self.allow_v6.get(&key, 0)),
                    len(self.deny_v6.get(&key, 0)),
                    loopback_min_v6(layer, &a.octets()),
                )
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, as the kernel programs treat them.
pub fn canonical(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V6(a) => match v4_mapped(&a.octets()) {
            Some(v4) => std::net::IpAddr::V4(v4.into()),
            None => addr,
        },
        v4 @ std::net::IpAddr::V4(_) => v4,
    }
}

pub(crate) fn getrandom(buf: &mut [u8]) {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        // getrandom(2) cannot fail for 4 bytes once the pool is ready; fall back to the clock
        // rather than failing a sandbox start. Ids need only be unique, which NOEXIST checks.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        buf.copy_from_slice(&t.to_ne_bytes()[..buf.len()]);
    }
}

/// Random hex id for a sandbox.
pub fn random_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom(&mut bytes);
    bytes.iter().fold(String::with_capacity(12), |mut s, b| {
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        s
    })
}

/// A loaded program of ours, as the kernel reports it.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    /// The kernel keeps 15 characters of the name.
    pub name: String,
    /// Instructions the verifier processed (its budget is 1M per program).
    pub verified_instructions: Option<u32>,
    /// Size of the program after translation, in bytes.
    pub translated_bytes: Option<u32>,
}

/// The kernel's view of every loaded `sandbox_*` program.
pub fn program_stats() -> Vec<ProgramStats> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            name.starts_with("sandbox_").then(|| ProgramStats {
                name,
                verified_instructions: p.verified_instruction_count(),
                translated_bytes: p.size_translated(),
            })
        })
        .collect()
}

/// Loads every program, attaches it to `parent` and pins links and maps. Any earlier pins
/// are removed first (their links detach).
fn install(paths: &Paths, parent: &Path, parent_id: u64) -> Result<()> {
    ensure_bpffs()?;
    remove_pins(paths)?;
    ensure_dir(&paths.maps_dir())?;
    ensure_dir(&paths.links_dir())?;
    let max = std::env::var("SANDBOX_AGENT_MAX_PREFIXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_PREFIXES);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::ALLOW_V4, max)
        .map_max_entries(map_names::DENY_V4, max)
        .map_max_entries(map_names::ALLOW_V6, max)
        .map_max_entries(map_names::DENY_V6, max)
        .load(OBJECT)
        .map_err(EnforcementError::Load)?;
    let cgroup = fs::File::open(parent).map_err(|source| EnforcementError::Io {
        action: "open cgroup",
        path: parent.into(),
        source,
    })?;
    // With BPF links (what aya uses from Linux 5.7) cgroup attachments always coexist with
    // other programs, and the kernel refuses attach flags on link creation: hence `Single`,
    // which aya turns into flags 0.
    for (name, attach) in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(EnforcementError::MissingProgram { name })?;
        let perr = |source| EnforcementError::Program { name, source };
        // Every program type loads, attaches and hands over its link the same way; only the
        // attach arguments differ.
        macro_rules! attach {
            ($ty:ty $(, $arg:expr)?) => {{
                let prog: &mut $ty = program.try_into().map_err(perr)?;
                prog.load().map_err(perr)?;
                let id = prog
                    .attach(&cgroup, $($arg,)? CgroupAttachMode::Single)
                    .map_err(perr)?;
                prog.take_link(id).map_err(perr)?.try_into()
            }};
        }
        let link: FdLink = match attach {
            Attach::Skb(attach_type) => attach!(CgroupSkb, attach_type),
            Attach::SockAddr => attach!(CgroupSockAddr),
            Attach::Sock => attach!(CgroupSock),
            Attach::SockOps => attach!(SockOps),
        }
        .map_err(|source| EnforcementError::Link { name, source })?;
        pin_link(link, &paths.links_dir().join(name))?;
    }
    for name in map_names::ALL {
        let path = paths.maps_dir().join(name);
        let map = ebpf.map(name).ok_or(EnforcementError::Map {
            name,
            source: MapError::InvalidName { name: name.into() },
        })?;
        map.pin(&path)
            .map_err(|source| EnforcementError::Pin { path, source })?;
    }
    let meta_map = ebpf
        .take_map(map_names::META)
        .ok_or(EnforcementError::Map {
            name: map_names::META,
            source: MapError::InvalidName {
                name: map_names::META.into(),
            },
        })?;
    let mut meta: Array<MapData, u64> = meta_map.try_into().map_err(map_err(map_names::META))?;
    meta.set(0, object_hash(), 0)
        .map_err(map_err(map_names::META))?;
    meta.set(1, parent_id, 0)
        .map_err(map_err(map_names::META))?;
    let path = paths.maps_dir().join(map_names::META);
    meta.pin(&path)
        .map_err(|source| EnforcementError::Pin { path, source })?;
    Ok(())
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    link.pin(path)
        .map(drop)
        .map_err(|source| EnforcementError::Pin {
            path: path.into(),
            source,
        })
}

/// Removes the pinned maps and links; links detach when their last pin goes.
fn remove_pins(paths: &Paths) -> Result<()> {
    match fs::remove_dir_all(&paths.pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EnforcementError::Io {
            action: "remove",
            path: paths.pin_dir.clone(),
            source,
        }),
    }
}

/// Detaches and unpins everything and removes the parent cgroup, if no sandbox is live.
pub fn teardown(paths: &Paths) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EnforcementError::NotRoot);
    }
    ensure_dir(&paths.run_dir)?;
    let lock_path = paths.install_lock();
    let _lock = FileLock::acquire(&lock_path).map_err(|source| EnforcementError::Io {
        action: "lock",
        path: lock_path,
        source,
    })?;
    let live = live_sandboxes(paths);
    if live > 0 {
        return Err(EnforcementError::SandboxesLive { live });
    }
    remove_pins(paths)?;
    if let Ok(mount) = cgroup::find_cgroup2_mount() {
        let parent = mount.join(paths::NAME);
        match fs::remove_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EnforcementError::Io {
                    action: "remove cgroup",
                    path: parent,
                    source,
                });
            }
        }
    }
    Ok(())
}
