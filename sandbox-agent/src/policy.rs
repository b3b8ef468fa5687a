//! Network policy: parse and validate entries, expand presets, compile to the prefix lists that
//! `enforcement` writes into the kernel's LPM tries. Pure: no I/O, no root, unit-tested.
//!
//! Nothing is applied from here; a policy either compiles whole or is refused with an error
//! naming the entry, so nothing is ever applied half-way.
use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sandbox_common::{DefaultVerdict, Precedence as KernelPrecedence, SandboxEntry};
use serde::{Deserialize, Serialize};

/// What a sandbox may reach when no rule matches.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing leaves the sandbox.
    Blocked,
    /// Everything but `deny_out` (loopback included).
    Open,
    /// Only `allow_out`, minus `deny_out`.
    Allowlist,
}

/// How conflicts between a matching allow and deny entry are settled.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Precedence {
    DenyWins,
    AllowWins,
    MostSpecific,
}

impl From<Precedence> for KernelPrecedence {
    fn from(p: Precedence) -> Self {
        match p {
            Precedence::DenyWins => Self::DenyWins,
            Precedence::AllowWins => Self::AllowWins,
            Precedence::MostSpecific => Self::MostSpecific,
        }
    }
}

/// A policy as written in a TOML file or an API request (every key optional; flags add to it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub network: Option<Mode>,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
    pub precedence: Option<Precedence>,
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy file {path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
}

impl PolicyFile {
    /// The policy this describes, with entries named after `origin` in errors; `network`
    /// defaults to `default_mode`.
    pub fn spec(&self, origin: &str, default_mode: Mode) -> PolicySpec {
        let entries = |list: &[String], key: &str| {
            let origin: Arc<str> = format!("{origin}{key}").into();
            list.iter()
                .map(|text| RawEntry {
                    text: text.clone(),
                    origin: origin.clone(),
                    file: None,
                })
                .collect()
        };
        PolicySpec {
            mode: self.network.unwrap_or(default_mode),
            precedence: self.precedence.unwrap_or(Precedence::DenyWins),
            allow_out: entries(&self.allow_out, "allow_out"),
            deny_out: entries(&self.deny_out, "deny_out"),
        }
    }

    /// Reads and parses a TOML policy file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PolicyFileError::Parse {
            path: path.into(),
            message: e.message().trim().replace('\n', " "),
        })
    }
}

/// An entry before parsing, with where it came from, so errors can name both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub text: String,
    /// The flag or key it came from: `--allow-out`, `allow_out`.
    /// Shared by all entries of one list: a large policy has a million of them.
    pub origin: Arc<str>,
    /// The policy file it came from, if any.
    pub file: Option<Arc<str>>,
}

impl RawEntry {
    fn place(&self) -> String {
        self.file
            .as_ref()
            .map(|f| format!(" in {f}"))
            .unwrap_or_default()
    }
}

/// The policy of one sandbox, before compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub mode: Mode,
    pub precedence: Precedence,
    pub allow_out: Vec<RawEntry>,
    pub deny_out: Vec<RawEntry>,
}

/// A named set of entries that ships with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    All,
    CloudMetadata,
    Private,
    Loopback,
    Pypi,
    Npm,
    Crates,
    Github,
}

impl Preset {
    pub const ALL: [Preset; 8] = [
        Self::All,
        Self::CloudMetadata,
        Self::Private,
        Self::Loopback,
        Self::Pypi,
        Self::Npm,
        Self::Crates,
        Self::Github,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::All => "@all",
            Self::CloudMetadata => "@cloud-metadata",
            Self::Private => "@private",
            Self::Loopback => "@loopback",
            Self::Pypi => "@pypi",
            Self::Npm => "@npm",
            Self::Crates => "@crates",
            Self::Github => "@github",
        }
    }

    /// The domain entries of the preset (exact names and `*.` wildcards). Sources are listed
    /// in README.md ("Presets").
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Self::All | Self::Private | Self::Loopback => &[],
            Self::CloudMetadata => &["metadata.google.internal"],
            // PyPI's index and the file host (pip's defaults).
            Self::Pypi => &["pypi.org", "files.pythonhosted.org", "*.pythonhosted.org"],
            // The npm registry (npm's default) and Yarn's mirror of it.
            Self::Npm => &["registry.npmjs.org", "registry.yarnpkg.com"],
            // crates.io's API, sparse index and downloads (cargo's defaults).
            Self::Crates => &["crates.io", "index.crates.io", "static.crates.io"],
            // git over HTTPS, the API, raw files, release assets and the container registry.
            Self::Github => &[
                "github.com",
                "*.github.com",
                "*.githubusercontent.com",
                "ghcr.io",
                "codeload.github.com",
            ],
        }
    }

    /// The networks of the preset. Sources are listed in README.md ("Presets").
    pub fn networks(self) -> &'static [&'static str] {
        match self {
            Self::All => &["0.0.0.0/0", "::/0"],
            Self::CloudMetadata => &[
                // AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, Hetzner... (169.254.169.254),
                // AWS ECS task metadata (169.254.170.2), Tencent (169.254.0.23): all link-local.
                "169.254.0.0/16",
                // AWS IMDS over IPv6 (Nitro).
                "fd00:ec2::254/128",
                // Alibaba Cloud ECS metadata.
                "100.100.100.200/32",
                // Azure WireServer / host agent.
                "168.63.129.16/32",
            ],
            Self::Private => &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.0.0/16",
                "fc00::/7",
                "fe80::/10",
            ],
            Self::Loopback => &["127.0.0.0/8", "::1/128"],
            Self::Pypi | Self::Npm | Self::Crates | Self::Github => &[],
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One parsed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Net(IpNet),
    /// An exact domain name, lower-case, without trailing dot.
    Domain(String),
    /// `*.suffix`: subdomains of `suffix` at any depth, not `suffix` itself.
    Wildcard(String),
    Preset(Preset),
}

/// What is wrong with an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("the entry is empty")]
    Empty,
    #[error("not a valid IPv4 address or CIDR")]
    BadIpv4,
    #[error("not a valid IPv6 address or CIDR")]
    BadIpv6,
    #[error("prefix length must be 0..={max}")]
    BadPrefixLength { max: u8 },
    #[error("host bits are set (did you mean {network}?)")]
    HostBitsSet { network: IpNet },
    #[error("unknown preset (known: {known})")]
    UnknownPreset { known: String },
    #[error("empty wildcard: write *.example.com, or @all for everything")]
    EmptyWildcard,
    #[error("invalid domain name: {why}")]
    BadDomain { why: &'static str },
}

/// Why a policy was refused. Each names the offending entry or setting.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid {origin} entry \"{entry}\"{place}: {problem}")]
    Entry {
        origin: String,
        entry: String,
        place: String,
        problem: EntryProblem,
    },
    #[error(
        "{origin} entry \"{entry}\"{place} has no effect with --network blocked, which allows \
         nothing; use --network allowlist"
    )]
    AllowInBlocked {
        origin: String,
        entry: String,
        place: String,
    },
}

/// A compiled policy: the sandbox settings and the prefix lists for the kernel, and the
/// domain rules for the agent's resolver and proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub mode: Mode,
    pub precedence: Precedence,
    pub allow_v4: Vec<Ipv4Net>,
    pub deny_v4: Vec<Ipv4Net>,
    pub allow_v6: Vec<Ipv6Net>,
    pub deny_v6: Vec<Ipv6Net>,
    pub names: NameRules,
}

/// Domain rules: exact names and `*.suffix` wildcards, allow and deny.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRules {
    allow_exact: HashSet<String>,
    allow_suffix: HashSet<String>,
    deny_exact: HashSet<String>,
    deny_suffix: HashSet<String>,
}

/// How specific a matching name rule is: any exact name beats any wildcard, and a longer
/// wildcard suffix (in labels) beats a shorter one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NameMatch {
    Wildcard { labels: usize },
    Exact,
}

/// Why a name was allowed or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NameReason {
    AllowRule,
    DenyRule,
    /// No rule matched; the mode (`open`) allows.
    DefaultAllow,
    /// No rule matched; the mode (`allowlist`, `blocked`) denies.
    DefaultDeny,
    /// `most-specific` with equally specific allow and deny rules.
    Tie,
}

impl fmt::Display for NameReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AllowRule => "allowed by a domain rule",
            Self::DenyRule => "denied by a domain rule",
            Self::DefaultAllow => "no domain rule matches; open mode allows",
            Self::DefaultDeny => "no domain rule matches",
            Self::Tie => "allow and deny rules equally specific (most-specific denies)",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameVerdict {
    pub allow: bool,
    pub reason: NameReason,
}

impl NameRules {
    pub fn is_empty(&self) -> bool {
        self.allow_exact.is_empty()
            && self.allow_suffix.is_empty()
            && self.deny_exact.is_empty()
            && self.deny_suffix.is_empty()
    }

    pub fn len(&self) -> usize {
        self.allow_exact.len()
            + self.allow_suffix.len()
            + self.deny_exact.len()
            + self.deny_suffix.len()
    }

    fn add(&mut self, entry: &Entry, allow: bool) {
        let (exact, suffix) = if allow {
            (&mut self.allow_exact, &mut self.allow_suffix)
        } else {
            (&mut self.deny_exact, &mut self.deny_suffix)
        };
        match entry {
            Entry::Domain(name) => {
                exact.insert(name.clone());
            }
            Entry::Wildcard(name) => {
                suffix.insert(name.clone());
            }
            Entry::Net(_) | Entry::Preset(_) => {}
        }
    }

    /// The most specific rule of one kind matching `name` (normalised, see
    /// [`normalize_name`]). Wildcards match subdomains at any depth, never the bare suffix.
    fn best(exact: &HashSet<String>, suffix: &HashSet<String>, name: &str) -> Option<NameMatch> {
        if exact.contains(name) {
            return Some(NameMatch::Exact);
        }
        // Parent domains from the longest: a.b.example.com → b.example.com, example.com, com.
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if suffix.contains(parent) {
                return Some(NameMatch::Wildcard {
                    labels: parent.split('.').count(),
                });
            }
            rest = parent;
        }
        None
    }
}

impl CompiledPolicy {
    /// Whether the policy has domain rules, and so needs the agent's resolver and proxy.
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// The verdict for a host name (normalised, see [`normalize_name`]), in this order:
    ///
    /// 1. No rule matches: the mode's default (`open` allows, others deny).
    /// 2. Only one kind matches: that kind.
    /// 3. Both match: `deny-wins` denies, `allow-wins` allows, `most-specific` takes the more
    ///    specific rule (an exact name beats a wildcard, a longer suffix a shorter one) and
    ///    denies on a tie.
    pub fn decide_name(&self, name: &str) -> NameVerdict {
        let n = &self.names;
        let allow = NameRules::best(&n.allow_exact, &n.allow_suffix, name);
        let deny = NameRules::best(&n.deny_exact, &n.deny_suffix, name);
        let verdict = |allow, reason| NameVerdict { allow, reason };
        match (allow, deny) {
            (None, None) if self.mode == Mode::Open => verdict(true, NameReason::DefaultAllow),
            (None, None) => verdict(false, NameReason::DefaultDeny),
            (Some(_), None) => verdict(true, NameReason::AllowRule),
            (None, Some(_)) => verdict(false, NameReason::DenyRule),
            (Some(a), Some(d)) => match self.precedence {
                Precedence::DenyWins => verdict(false, NameReason::DenyRule),
                Precedence::AllowWins => verdict(true, NameReason::AllowRule),
                Precedence::MostSpecific => match a.cmp(&d) {
                    std::cmp::Ordering::Greater => verdict(true, NameReason::AllowRule),
                    std::cmp::Ordering::Less => verdict(false, NameReason::DenyRule),
                    std::cmp::Ordering::Equal => verdict(false, NameReason::Tie),
                },
            },
        }
    }

    /// The `SANDBOXES` map value for this policy under `policy_id`, with the loopback ports
    /// of the sandbox's resolver and proxy (0 when the policy has no domain rules).
    pub fn sandbox_entry(&self, policy_id: u32, dns_port: u16, proxy_port: u16) -> SandboxEntry {
        SandboxEntry {
            policy_id,
            default_verdict: if self.mode == Mode::Open {
                DefaultVerdict::Allow as u32
            } else {
                DefaultVerdict::Deny as u32
            },
            precedence: KernelPrecedence::from(self.precedence) as u32,
            guard_loopback: u32::from(self.mode != Mode::Open),
            dns_port: u32::from(dns_port),
            proxy_port: u32::from(proxy_port),
            outer: [sandbox_common::Layer::default(); sandbox_common::MAX_OUTER_LAYERS],
        }
    }

    pub fn prefix_count(&self) -> usize {
        self.allow_v4.len() + self.deny_v4.len() + self.allow_v6.len() + self.deny_v6.len()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Blocked => "blocked",
            Self::Open => "open",
            Self::Allowlist => "allowlist",
        })
    }
}

impl fmt::Display for Precedence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DenyWins => "deny-wins",
            Self::AllowWins => "allow-wins",
            Self::MostSpecific => "most-specific",
        })
    }
}

impl FromStr for Entry {
    type Err = EntryProblem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_entry(s)
    }
}

/// Parses one entry: address, CIDR, domain, `*.domain` or `@preset`.
pub fn parse_entry(text: &str) -> Result<Entry, EntryProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Err(EntryProblem::Empty);
    }
    if text.starts_with('@') {
        return Preset::parse(text)
            .map(Entry::Preset)
            .ok_or_else(|| EntryProblem::UnknownPreset {
                known: Preset::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
    }
    if text.contains(':') {
        return parse_net(text, false).map(Entry::Net);
    }
    // Only digits, dots and a slash: meant as IPv4, so report it as a bad address rather than
    // as a domain ("10.0.0.300" is a typo, not a host name).
    if text
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
    {
        return parse_net(text, true).map(Entry::Net);
    }
    if text.contains('/') {
        return Err(EntryProblem::BadIpv4);
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        if suffix.is_empty() || suffix == "." {
            return Err(EntryProblem::EmptyWildcard);
        }
        return validate_domain(suffix).map(Entry::Wildcard);
    }
    if text == "*" || text == "*." {
        return Err(EntryProblem::EmptyWildcard);
    }
    validate_domain(text).map(Entry::Domain)
}

fn parse_net(text: &str, v4: bool) -> Result<IpNet, EntryProblem> {
    let bad = if v4 {
        EntryProblem::BadIpv4
    } else {
        EntryProblem::BadIpv6
    };
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = if v4 {
        IpAddr::V4(addr.parse::<Ipv4Addr>().map_err(|_| bad.clone())?)
    } else {
        IpAddr::V6(addr.parse::<Ipv6Addr>().map_err(|_| bad.clone())?)
    };
    let max: u8 = if v4 { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => {
            let len: u8 = len
                .parse()
                .map_err(|_| EntryProblem::BadPrefixLength { max })?;
            if len > max {
                return Err(EntryProblem::BadPrefixLength { max });
            }
            len
        }
    };
    let net = IpNet::new(addr, len).map_err(|_| EntryProblem::BadPrefixLength { max })?;
    if net.trunc() != net {
        return Err(EntryProblem::HostBitsSet {
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// Validates a policy's DNS name (LDH labels), returns it lower-case, without a trailing dot,
/// and with internationalised labels converted to punycode (`bücher.example` becomes
/// `xn--bcher-kva.example`), the form in which names travel in DNS, SNI and Host headers.
fn validate_domain(text: &str) -> Result<String, EntryProblem> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let name = if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(text).map_err(|_| EntryProblem::BadDomain {
            why: "not a valid internationalised domain name",
        })?
    };
    if name.len() > 253 {
        return Err(EntryProblem::BadDomain {
            why: "longer than 253 characters",
        });
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(EntryProblem::BadDomain {
            why: "needs at least two labels, like example.com",
        });
    }
    for label in &labels {
        if label.is_empty() {
            return Err(EntryProblem::BadDomain { why: "empty label" });
        }
        if label.len() > 63 {
            return Err(EntryProblem::BadDomain {
                why: "a label is longer than 63 characters",
            });
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(EntryProblem::BadDomain {
                why: "labels may hold only letters, digits and hyphens",
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(EntryProblem::BadDomain {
                why: "a label starts or ends with a hyphen",
            });
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(EntryProblem::BadDomain {
            why: "the top-level label is all digits",
        });
    }
    Ok(name)
}

/// Normalises a host name met at run time (a TLS SNI, an HTTP Host, a DNS question) for
/// matching against domain rules: lower-case, no trailing dot. `None` for anything that is
/// not a plausible host name: non-ASCII (such names travel as punycode), empty or over-long
/// labels, characters other than letters, digits, `-` and `_` (service labels such as
/// `_dmarc`), or an all-digit last label (an IPv4 literal is not a name).
pub fn normalize_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 || !name.is_ascii() {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name)
}

/// Whether a resolved address is one that names must not lead to unless an address rule
/// allows it: loopback and unspecified, private (`@private`: RFC 1918, 6598, 4193, link-local),
/// cloud metadata (`@cloud-metadata`), multicast and reserved ranges. The resolver does not
/// hand such addresses out as reachable and the proxy does not connect to them, so that a
/// name under an allowed wildcard cannot be pointed at the host's own network.
pub fn is_internal(addr: IpAddr) -> bool {
    static NETS: std::sync::OnceLock<Vec<IpNet>> = std::sync::OnceLock::new();
    let nets = NETS.get_or_init(|| {
        [Preset::Loopback, Preset::Private, Preset::CloudMetadata]
            .iter()
            .flat_map(|p| p.networks().iter().copied())
            .chain([
                "0.0.0.0/8",
                "224.0.0.0/4",
                "240.0.0.0/4",
                "::/128",
                "ff00::/8",
            ])
            .map(|n| n.parse().expect("internal networks are valid"))
            .collect()
    });
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    };
    if let IpAddr::V6(a) = addr {
        // IPv4 inside IPv6 that leads to that IPv4 address: NAT64 (64:ff9b::/96, RFC 6052)
        // and 6to4 (2002::/16, RFC 3056).
        let o = a.octets();
        let embedded = if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
            Some([o[12], o[13], o[14], o[15]])
        } else if o[0] == 0x20 && o[1] == 0x02 {
            Some([o[2], o[3], o[4], o[5]])
        } else {
            None
        };
        if let Some(v4) = embedded
            && is_internal(IpAddr::V4(v4.into()))
        {
            return true;
        }
    }
    nets.iter().any(|n| n.contains(&addr))
}

/// Parses, validates and compiles a policy. Fails on the first bad entry, naming it.
pub fn compile(spec: &PolicySpec) -> Result<CompiledPolicy, PolicyError> {
    let allow = parse_list(&spec.allow_out)?;
    let deny = parse_list(&spec.deny_out)?;
    if spec.mode == Mode::Blocked
        && let Some((raw, _)) = allow.first()
    {
        return Err(PolicyError::AllowInBlocked {
            origin: raw.origin.to_string(),
            entry: raw.text.clone(),
            place: raw.place(),
        });
    }
    let (allow_v4, allow_v6) = split_families(allow.iter().map(|(_, e)| e));
    let (deny_v4, deny_v6) = split_families(deny.iter().map(|(_, e)| e));
    let mut names = NameRules::default();
    for (list, is_allow) in [(&allow, true), (&deny, false)] {
        for (_, entry) in list {
            match entry {
                Entry::Preset(p) => {
                    for text in p.names() {
                        names.add(
                            &parse_entry(text).expect("preset names are valid"),
                            is_allow,
                        );
                    }
                }
                other => names.add(other, is_allow),
            }
        }
    }
    // Merging adjacent or nested prefixes keeps the set of addresses but changes the lengths
    // of the longest matches, which `most-specific` compares: there, only duplicates go.
    let merge = spec.precedence != Precedence::MostSpecific;
    Ok(CompiledPolicy {
        mode: spec.mode,
        precedence: spec.precedence,
        allow_v4: normalize_v4(allow_v4, merge),
        deny_v4: normalize_v4(deny_v4, merge),
        allow_v6: normalize_v6(allow_v6, merge),
        deny_v6: normalize_v6(deny_v6, merge),
        names,
    })
}

fn parse_list(raw: &[RawEntry]) -> Result<Vec<(&RawEntry, Entry)>, PolicyError> {
    raw.iter()
        .map(|r| {
            parse_entry(&r.text)
                .map(|e| (r, e))
                .map_err(|problem| PolicyError::Entry {
                    origin: r.origin.to_string(),
                    entry: r.text.clone(),
                    place: r.place(),
                    problem,
                })
        })
        .collect()
}

fn split_families<'a>(entries: impl Iterator<Item = &'a Entry>) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut add = |net: IpNet| match net {
        IpNet::V4(n) => v4.push(n),
        IpNet::V6(n) => match v4_mapped_net(n) {
            // ::ffff:a.b.c.d/n is decided by the IPv4 rules, as the kernel does.
            Some(n4) => v4.push(n4),
            None => v6.push(n),
        },
    };
    for entry in entries {
        match entry {
            Entry::Net(net) => add(*net),
            Entry::Preset(p) => {
                for text in p.networks() {
                    add(text.parse().expect("preset networks are valid"));
                }
            }
            Entry::Domain(_) | Entry::Wildcard(_) => {}
        }
    }
    (v4, v6)
}

/// `::ffff:0:0/96` and longer prefixes inside it, as IPv4 networks.
fn v4_mapped_net(net: Ipv6Net) -> Option<Ipv4Net> {
    if net.prefix_len() < 96 {
        return None;
    }
    let o = net.addr().octets();
    if o[..10].iter().any(|&b| b != 0) || o[10] != 0xff || o[11] != 0xff {
        return None;
    }
    Ipv4Net::new(
        Ipv4Addr::new(o[12], o[13], o[14], o[15]),
        net.prefix_len() - 96,
    )
    .ok()
}

fn normalize_v4(mut nets: Vec<Ipv4Net>, merge: bool) -> Vec<Ipv4Net> {
    if merge {
        return Ipv4Net::aggregate(&nets);
    }
    nets.sort_unstable();
    nets.dedup();
    nets
}

fn normalize_v6(mut nets: Vec<Ipv6Net>, merge: bool) -> Vec<Ipv6Net> {
    if merge {
        return Ipv6Net::aggregate(&nets);
    }
    nets.sort_unstable();
    nets.dedup();
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(list: &[&str], origin: &str) -> Vec<RawEntry> {
        list.iter()
            .map(|t| RawEntry {
                text: (*t).into(),
                origin: origin.into(),
                file: None,
            })
            .collect()
    }

    fn spec(mode: Mode, precedence: Precedence, allow: &[&str], deny: &[&str]) -> PolicySpec {
        PolicySpec {
            mode,
            precedence,
            allow_out: raw(allow, "--allow-out"),
            deny_out: raw(deny, "--deny-out"),
        }
    }

    fn v4(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_every_kind_of_entry() {
        assert_eq!(
            parse_entry("1.1.1.1"),
            Ok(Entry::Net("1.1.1.1/32".parse().unwrap()))
        );
        assert_eq!(
            parse_entry("10.0.0.0/8"),
            Ok(Entry::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            parse_entry("2001:db8::/32"),
            Ok(Entry::Net("2001:db8::/32".parse().unwrap()))
        );
        assert_eq!(
            parse_entry("::1"),
            Ok(Entry::Net("::1/128".parse().unwrap()))
        );
        assert_eq!(
            parse_entry("PyPI.org."),
            Ok(Entry::Domain("pypi.org".into()))
        );
        assert_eq!(
            parse_entry("*.pythonhosted.org"),
            Ok(Entry::Wildcard("pythonhosted.org".into()))
        );
        assert_eq!(
            parse_entry("@cloud-metadata"),
            Ok(Entry::Preset(Preset::CloudMetadata))
        );
    }

    #[test]
    fn rejects_bad_entries_with_a_reason() {
        let cases: &[(&str, EntryProblem)] = &[
            ("", EntryProblem::Empty),
            ("10.0.0.300", EntryProblem::BadIpv4),
            ("10.0.0/8", EntryProblem::BadIpv4),
            ("10.0.0.0/33", EntryProblem::BadPrefixLength { max: 32 }),
            ("10.0.0.0/x", EntryProblem::BadIpv4),
            ("fe80::1::2", EntryProblem::BadIpv6),
            ("::/129", EntryProblem::BadPrefixLength { max: 128 }),
            (
                "10.0.0.1/8",
                EntryProblem::HostBitsSet {
                    network: "10.0.0.0/8".parse().unwrap(),
                },
            ),
            ("*.", EntryProblem::EmptyWildcard),
            ("*", EntryProblem::EmptyWildcard),
            (
                "exa mple.com",
                EntryProblem::BadDomain {
                    why: "labels may hold only letters, digits and hyphens",
                },
            ),
            (
                "localhost",
                EntryProblem::BadDomain {
                    why: "needs at least two labels, like example.com",
                },
            ),
            (
                "-bad.com",
                EntryProblem::BadDomain {
                    why: "a label starts or ends with a hyphen",
                },
            ),
            ("a..com", EntryProblem::BadDomain { why: "empty label" }),
            ("example.com/24", EntryProblem::BadIpv4),
        ];
        for (text, problem) in cases {
            assert_eq!(parse_entry(text).as_ref(), Err(problem), "entry {text:?}");
        }
        assert!(matches!(
            parse_entry("@nope"),
            Err(EntryProblem::UnknownPreset { .. })
        ));
    }

    #[test]
    fn error_messages_quote_the_entry_and_its_origin() {
        let err = compile(&spec(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["10.0.0.300"],
            &[],
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --allow-out entry \"10.0.0.300\": not a valid IPv4 address or CIDR"
        );
        let err = compile(&spec(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["pypi.org", "*.bad_name.org"],
            &[],
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --allow-out entry \"*.bad_name.org\": invalid domain name: labels may hold \
             only letters, digits and hyphens"
        );
        let err = compile(&spec(
            Mode::Blocked,
            Precedence::DenyWins,
            &["1.1.1.1"],
            &[],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("--network blocked"), "{err}");
    }

    #[test]
    fn one_bad_entry_refuses_the_whole_policy() {
        let result = compile(&spec(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["10.0.0.0/8", "@bogus"],
            &[],
        ));
        assert!(result.is_err());
    }

    #[test]
    fn presets_expand() {
        let c = compile(&spec(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["@all"],
            &["@cloud-metadata"],
        ))
        .unwrap();
        assert_eq!(c.allow_v4, v4(&["0.0.0.0/0"]));
        assert_eq!(c.allow_v6, vec!["::/0".parse::<Ipv6Net>().unwrap()]);
        assert!(c.deny_v4.contains(&"169.254.0.0/16".parse().unwrap()));
        assert!(c.deny_v6.contains(&"fd00:ec2::254/128".parse().unwrap()));
        for preset in Preset::ALL {
            for net in preset.networks() {
                assert!(net.parse::<IpNet>().is_ok(), "{net}");
            }
        }
    }

    #[test]
    fn v4_mapped_entries_become_ipv4_rules() {
        let c = compile(&spec(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["::ffff:10.1.0.0/112"],
            &[],
        ))
        .unwrap();
        assert_eq!(c.allow_v4, v4(&["10.1.0.0/16"]));
        assert!(c.allow_v6.is_empty());
    }

    #[test]
    fn merging_is_only_done_where_lengths_do_not_matter() {
        let allow = ["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16", "10.1.0.0/16"];
        let merged = compile(&spec(Mode::Allowlist, Precedence::DenyWins, &allow, &[])).unwrap();
        assert_eq!(merged.allow_v4, v4(&["10.0.0.0/8"]));
        let kept = compile(&spec(
            Mode::Allowlist,
            Precedence::MostSpecific,
            &allow,
            &[],
        ))
        .unwrap();
        assert_eq!(
            kept.allow_v4,
            v4(&["10.0.0.0/9", "10.1.0.0/16", "10.128.0.0/9"])
        );
    }

    #[test]
    fn sandbox_entry_reflects_mode_and_precedence() {
        let open = compile(&spec(
            Mode::Open,
            Precedence::AllowWins,
            &[],
            &["10.0.0.0/8"],
        ))
        .unwrap();
        let e = open.sandbox_entry(9, 0, 0);
        assert_eq!(e.policy_id, 9);
        assert_eq!(e.default_verdict, DefaultVerdict::Allow as u32);
        assert_eq!(e.precedence, KernelPrecedence::AllowWins as u32);
        assert_eq!(e.guard_loopback, 0);
        let blocked = compile(&spec(Mode::Blocked, Precedence::DenyWins, &[], &[])).unwrap();
        let e = blocked.sandbox_entry(1, 5300, 5301);
        assert_eq!((e.dns_port, e.proxy_port), (5300, 5301));
        assert_eq!(e.default_verdict, DefaultVerdict::Deny as u32);
        assert_eq!(e.guard_loopback, 1);
    }

    fn names(mode: Mode, precedence: Precedence, allow: &[&str], deny: &[&str]) -> CompiledPolicy {
        compile(&spec(mode, precedence, allow, deny)).unwrap()
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
            "fd00:ec2::254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a9fe:a9fe::1",
            "224.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "198.18.0.1",
            "2001:db8::1",
            "64:ff9b::c612:1",
            "2002:c612:1::1",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn domain_entries_are_normalised() {
        assert_eq!(
            parse_entry("Bücher.Example."),
            Ok(Entry::Domain("xn--bcher-kva.example".into()))
        );
        assert_eq!(
            parse_entry("*.München.de"),
            Ok(Entry::Wildcard("xn--mnchen-3ya.de".into()))
        );
        assert!(parse_entry("exa\u{200b}mple..com").is_err());
        assert_eq!(normalize_name("PyPI.org."), Some("pypi.org".into()));
        assert_eq!(
            normalize_name("_dmarc.example.com"),
            Some("_dmarc.example.com".into())
        );
        for bad in ["", "1.2.3.4", "a..b", "ex ample.com", "bü.de", "."] {
            assert_eq!(normalize_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_at_any_depth_not_the_bare_suffix() {
        let p = names(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["*.pythonhosted.org", "pypi.org"],
            &[],
        );
        assert!(p.decide_name("files.pythonhosted.org").allow);
        assert!(p.decide_name("a.b.pythonhosted.org").allow);
        assert!(!p.decide_name("pythonhosted.org").allow);
        assert!(p.decide_name("pypi.org").allow);
        assert!(!p.decide_name("www.pypi.org").allow);
        assert!(!p.decide_name("evilpythonhosted.org").allow);
        assert_eq!(p.decide_name("example.com").reason, NameReason::DefaultDeny);
        let open = names(Mode::Open, Precedence::DenyWins, &[], &["evil.com"]);
        assert_eq!(
            open.decide_name("good.com").reason,
            NameReason::DefaultAllow
        );
        assert!(!open.decide_name("evil.com").allow);
        assert!(open.has_names());
        assert!(!names(Mode::Open, Precedence::DenyWins, &[], &["10.0.0.0/8"]).has_names());
    }

    #[test]
    fn precedence_applies_to_names() {
        let allow = ["*.pythonhosted.org"];
        let deny = ["evil.pythonhosted.org", "*.x.pythonhosted.org"];
        let dw = names(Mode::Allowlist, Precedence::DenyWins, &allow, &deny);
        assert!(!dw.decide_name("evil.pythonhosted.org").allow);
        assert!(!dw.decide_name("a.x.pythonhosted.org").allow);
        assert!(dw.decide_name("files.pythonhosted.org").allow);
        let aw = names(Mode::Allowlist, Precedence::AllowWins, &allow, &deny);
        assert!(aw.decide_name("evil.pythonhosted.org").allow);
        let ms = names(Mode::Allowlist, Precedence::MostSpecific, &allow, &deny);
        assert!(!ms.decide_name("evil.pythonhosted.org").allow); // exact beats wildcard
        assert!(!ms.decide_name("a.x.pythonhosted.org").allow); // longer suffix wins
        assert!(ms.decide_name("files.pythonhosted.org").allow);
        // The more specific allow wins too.
        let ms2 = names(
            Mode::Allowlist,
            Precedence::MostSpecific,
            &["a.evil.com"],
            &["*.evil.com"],
        );
        assert!(ms2.decide_name("a.evil.com").allow);
        assert!(!ms2.decide_name("b.evil.com").allow);
        let tie = names(
            Mode::Allowlist,
            Precedence::MostSpecific,
            &["*.t.com"],
            &["*.t.com"],
        );
        assert_eq!(tie.decide_name("a.t.com").reason, NameReason::Tie);
    }

    #[test]
    fn name_presets_expand() {
        let p = names(
            Mode::Allowlist,
            Precedence::DenyWins,
            &["@pypi"],
            &["@cloud-metadata"],
        );
        assert!(p.decide_name("pypi.org").allow);
        assert!(p.decide_name("files.pythonhosted.org").allow);
        assert!(!p.decide_name("metadata.google.internal").allow);
        assert_eq!(
            p.decide_name("metadata.google.internal").reason,
            NameReason::DenyRule
        );
        for preset in Preset::ALL {
            for name in preset.names() {
                assert!(parse_entry(name).is_ok(), "{name}");
            }
        }
        let err = compile(&spec(
            Mode::Blocked,
            Precedence::DenyWins,
            &["pypi.org"],
            &[],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("--network blocked"), "{err}");
    }
}
