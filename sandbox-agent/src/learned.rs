//! What one sandbox's resolver made reachable: each learned address with the names it was
//! handed out for and its expiry, within the sandbox's caps.
//!
//! The kernel's `LEARNED_V4|6` maps are shared by every sandbox on the host. Without a cap,
//! one sandbox asking for names whose answers hold thousands of addresses fills them, and
//! its neighbours' resolvers can no longer record what they resolve (their connects fail).
//! So the agent counts what each sandbox holds there and refuses only the sandbox over its
//! cap; an address already held is always refreshed.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use sandbox_common::MAX_LEARNED;

/// Addresses of one answer the resolver passes on and learns; the rest of the answer's
/// addresses are left out of the response (round-robin answers hold a few dozen at most).
pub const DEFAULT_PER_ANSWER: usize = 64;
/// Addresses one sandbox may hold learned at a time: 64 sandboxes at their cap fill the
/// kernel's map (`MAX_LEARNED`).
pub const DEFAULT_PER_SANDBOX: usize = 4096;
/// Names kept per address for policy changes; an address handed out for more names keeps
/// the first ones (a policy change that denies all of them drops it: fail closed).
const NAMES_PER_ADDRESS: usize = 16;

/// The caps, from the daemon's configuration and the sandbox's own override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_answer: usize,
    pub per_sandbox: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_answer: DEFAULT_PER_ANSWER,
            per_sandbox: DEFAULT_PER_SANDBOX,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{what} must be between 1 and {max}, not {value}")]
    OutOfRange {
        what: &'static str,
        value: u64,
        max: u64,
    },
}

impl Limits {
    /// Checks both caps: at least 1, and no more than the kernel's map holds.
    pub fn checked(per_answer: u64, per_sandbox: u64) -> Result<Self, LimitError> {
        let max = u64::from(MAX_LEARNED);
        for (what, value) in [
            ("the learned addresses per answer", per_answer),
            ("the learned addresses per sandbox", per_sandbox),
        ] {
            if value == 0 || value > max {
                return Err(LimitError::OutOfRange { what, value, max });
            }
        }
        Ok(Self {
            per_answer: usize::try_from(per_answer).unwrap_or(usize::MAX),
            per_sandbox: usize::try_from(per_sandbox).unwrap_or(usize::MAX),
        })
    }
}

/// Why an address was not learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the sandbox holds its cap of {cap} learned addresses")]
    SandboxCap { cap: usize },
}

struct Entry {
    /// `CLOCK_BOOTTIME` ns, as in the kernel map.
    expiry: u64,
    names: BTreeSet<String>,
}

/// One sandbox's learned addresses (canonical: v4-mapped addresses as IPv4).
pub struct Learned {
    cap: usize,
    entries: HashMap<IpAddr, Entry>,
}

impl Learned {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: HashMap::new(),
        }
    }

    /// Takes `addr` (handed out for `name`, until `expiry`) into the sandbox's share, before
    /// the kernel map is written. At the cap, expired entries and those `still_allowed`
    /// rejects (a policy change dropped them from the kernel) make room first.
    pub fn admit(
        &mut self,
        addr: IpAddr,
        name: &str,
        expiry: u64,
        now: u64,
        still_allowed: impl Fn(&BTreeSet<String>) -> bool,
    ) -> Result<(), Refusal> {
        if !self.entries.contains_key(&addr) && self.entries.len() >= self.cap {
            self.entries
                .retain(|_, e| e.expiry > now && still_allowed(&e.names));
            if self.entries.len() >= self.cap {
                return Err(Refusal::SandboxCap { cap: self.cap });
            }
        }
        let entry = self.entries.entry(addr).or_insert_with(|| Entry {
            expiry,
            names: BTreeSet::new(),
        });
        entry.expiry = entry.expiry.max(expiry);
        if entry.names.len() < NAMES_PER_ADDRESS {
            entry.names.insert(name.to_owned());
        }
        Ok(())
    }

    /// Gives back an address the kernel map did not take.
    pub fn withdraw(&mut self, addr: IpAddr) {
        self.entries.remove(&addr);
    }

    /// Drops what expired before `now` (the kernel map is pruned alongside).
    pub fn prune(&mut self, now: u64) {
        self.entries.retain(|_, e| e.expiry > now);
    }

    /// The names `addr` was handed out for.
    pub fn names_of(&self, addr: IpAddr) -> Vec<String> {
        self.entries
            .get(&addr)
            .map(|e| e.names.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_sandbox_at_its_cap_is_refused_new_addresses_but_refreshes_held_ones() {
        let mut l = Learned::new(2);
        assert_eq!(l.admit(v4(1), "a.test", 100, 0, |_| true), Ok(()));
        assert_eq!(l.admit(v4(2), "b.test", 100, 0, |_| true), Ok(()));
        assert_eq!(
            l.admit(v4(3), "c.test", 100, 0, |_| true),
            Err(Refusal::SandboxCap { cap: 2 })
        );
        // Held: refreshed, and a second name is recorded.
        assert_eq!(l.admit(v4(1), "a2.test", 200, 0, |_| true), Ok(()));
        assert_eq!(l.names_of(v4(1)), ["a.test", "a2.test"]);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn expired_and_disallowed_entries_make_room_at_the_cap() {
        let mut l = Learned::new(2);
        l.admit(v4(1), "old.test", 50, 0, |_| true).unwrap();
        l.admit(v4(2), "gone.test", 500, 0, |_| true).unwrap();
        // At 60, the first has expired; the second's name is no longer allowed.
        let allowed = |names: &BTreeSet<String>| !names.contains("gone.test");
        assert_eq!(l.admit(v4(3), "new.test", 500, 60, allowed), Ok(()));
        assert_eq!(l.admit(v4(4), "new.test", 500, 60, allowed), Ok(()));
        assert_eq!(l.len(), 2);
        assert!(l.names_of(v4(1)).is_empty());
    }

    #[test]
    fn withdrawn_and_pruned_addresses_free_their_slot() {
        let mut l = Learned::new(1);
        l.admit(v4(1), "a.test", 10, 0, |_| true).unwrap();
        l.withdraw(v4(1));
        l.admit(v4(2), "b.test", 10, 0, |_| true).unwrap();
        l.prune(10);
        assert!(l.is_empty());
    }

    #[test]
    fn limits_must_fit_the_kernel_map() {
        assert!(Limits::checked(1, 1).is_ok());
        let err = Limits::checked(64, u64::from(MAX_LEARNED) + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the learned addresses per sandbox must be between 1 and {MAX_LEARNED}, not {}",
                u64::from(MAX_LEARNED) + 1
            )
        );
        assert!(Limits::checked(0, 10).is_err());
    }
}
