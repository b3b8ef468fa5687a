//! Connect tokens and traffic tokens: random, kept only as SHA-256 hashes (in memory and in
//! the sandbox's `tokens.json`, so that they survive a daemon restart), scoped to one
//! sandbox, revocable, and gone when the sandbox ends.
use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use http::HeaderValue;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};

use crate::api::TokenView;

/// Largest user metadata, serialized (the header must stay small and cheap to forward).
pub const MAX_USER_METADATA_BYTES: usize = 511;
const FILE: &str = "tokens.json";

type Hash = [u8; 32];

#[derive(Clone)]
struct Entry {
    id: String,
    sandbox: String,
    user_metadata: Option<serde_json::Value>,
    /// The metadata as the header the workload receives.
    user_data: Option<HeaderValue>,
    created_at: String,
}

/// What one sandbox's `tokens.json` holds.
#[derive(Default, Deserialize, Serialize)]
struct Stored {
    traffic_token_sha256: Option<String>,
    tokens: Vec<StoredToken>,
}

#[derive(Deserialize, Serialize)]
struct StoredToken {
    id: String,
    sha256: String,
    user_metadata: Option<serde_json::Value>,
    created_at: String,
}

/// What a presented token opens.
pub struct Grant {
    pub sandbox: String,
    pub user_data: Option<HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("user_metadata is {0} bytes serialized; at most {MAX_USER_METADATA_BYTES}")]
    MetadataTooLarge(usize),
    #[error("user_metadata holds characters a header cannot carry (such as DEL)")]
    MetadataNotAHeader,
    #[error("no token {0} in this sandbox")]
    Unknown(String),
    #[error("cannot save tokens: {0}")]
    Save(std::io::Error),
}

#[derive(Default)]
pub struct Tokens {
    by_hash: Mutex<HashMap<Hash, Entry>>,
    /// Sandbox id → hash of its traffic token (`private_ports`).
    traffic: Mutex<HashMap<String, Hash>>,
    /// Held across a change and its save, so that files are written in the order of the
    /// changes and a failed save can be undone before anyone sees it.
    changing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn hash(secret: &str) -> Hash {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut h = [0; 32];
    h.copy_from_slice(d.as_ref());
    h
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Hash> {
    let mut h = [0; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in h.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(h)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the kernel's random source");
    hex(&buf)
}

impl Tokens {
    /// A new connect token for `sandbox`; the answer is the only place its secret appears.
    pub fn issue(
        &self,
        sandbox: &str,
        dir: &Path,
        user_metadata: Option<serde_json::Value>,
    ) -> Result<TokenView, TokenError> {
        let user_data = match &user_metadata {
            Some(v) => {
                let text = serde_json::to_string(v).unwrap_or_default();
                if text.len() > MAX_USER_METADATA_BYTES {
                    return Err(TokenError::MetadataTooLarge(text.len()));
                }
                // JSON escapes control characters but not DEL, which no header may carry.
                Some(
                    HeaderValue::from_bytes(text.as_bytes())
                        .map_err(|_| TokenError::MetadataNotAHeader)?,
                )
            }
            None => None,
        };
        let secret = format!("sat_{}", random_hex(32));
        let entry = Entry {
            id: random_hex(8),
            sandbox: sandbox.to_owned(),
            user_metadata,
            user_data,
            created_at: crate::api::now_rfc3339(),
        };
        let mut view = view(&entry);
        view.token = Some(secret.clone());
        let _changing = lock(&self.changing);
        let key = hash(&secret);
        lock(&self.by_hash).insert(key, entry);
        if let Err(e) = self.save(sandbox, dir) {
            lock(&self.by_hash).remove(&key);
            return Err(e);
        }
        Ok(view)
    }

    /// The sandbox a token opens, if it is a live one.
    pub fn check(&self, secret: &str) -> Option<Grant> {
        lock(&self.by_hash).get(&hash(secret)).map(|e| Grant {
            sandbox: e.sandbox.clone(),
            user_data: e.user_data.clone(),
        })
    }

    pub fn list(&self, sandbox: &str) -> Vec<TokenView> {
        let mut all: Vec<TokenView> = lock(&self.by_hash)
            .values()
            .filter(|e| e.sandbox == sandbox)
            .map(view)
            .collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    pub fn revoke(&self, sandbox: &str, dir: &Path, id: &str) -> Result<(), TokenError> {
        let _changing = lock(&self.changing);
        let removed: Vec<(Hash, Entry)> = {
            let mut all = lock(&self.by_hash);
            let keys: Vec<Hash> = all
                .iter()
                .filter(|(_, e)| e.sandbox == sandbox && e.id == id)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| all.remove(&k).map(|e| (k, e)))
                .collect()
        };
        if removed.is_empty() {
            return Err(TokenError::Unknown(id.to_owned()));
        }
        // A revocation that is not on disk would be undone by a restart: refuse it whole.
        if let Err(e) = self.save(sandbox, dir) {
            lock(&self.by_hash).extend(removed);
            return Err(e);
        }
        Ok(())
    }

    /// A new traffic token for a `private_ports` sandbox (returned once).
    pub fn issue_traffic(&self, sandbox: &str, dir: &Path) -> Result<String, TokenError> {
        let secret = format!("stt_{}", random_hex(32));
        let _changing = lock(&self.changing);
        lock(&self.traffic).insert(sandbox.to_owned(), hash(&secret));
        if let Err(e) = self.save(sandbox, dir) {
            lock(&self.traffic).remove(sandbox);
            return Err(e);
        }
        Ok(secret)
    }

    /// Whether a request may reach a sandbox as far as traffic tokens go: always when it
    /// has no private ports; else only with its traffic token (and never when that is lost).
    pub fn traffic_allows(&self, sandbox: &str, private: bool, presented: Option<&str>) -> bool {
        if !private {
            return true;
        }
        lock(&self.traffic)
            .get(sandbox)
            .is_some_and(|h| presented.is_some_and(|p| ring_eq(&hash(p), h)))
    }

    /// Every token of an ended sandbox stops working.
    pub fn forget(&self, sandbox: &str, dir: &Path) {
        let _changing = lock(&self.changing);
        lock(&self.by_hash).retain(|_, e| e.sandbox != sandbox);
        lock(&self.traffic).remove(sandbox);
        let _ = fs::remove_file(dir.join(FILE));
    }

    /// Loads a re-adopted sandbox's tokens. A file that cannot be read leaves the sandbox
    /// without tokens (its ports refuse everyone), said in the log.
    pub fn load(&self, sandbox: &str, dir: &Path) {
        let path = dir.join(FILE);
        let stored = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(sandbox, "{}: {e}; its tokens are lost", path.display());
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(sandbox, "{}: {e}; its tokens are lost", path.display());
                return;
            }
        };
        if let Some(h) = stored.traffic_token_sha256.as_deref().and_then(unhex) {
            lock(&self.traffic).insert(sandbox.to_owned(), h);
        }
        let mut all = lock(&self.by_hash);
        for t in stored.tokens {
            let Some(h) = unhex(&t.sha256) else { continue };
            let user_data = t
                .user_metadata
                .as_ref()
                .and_then(|v| serde_json::to_string(v).ok())
                .and_then(|s| HeaderValue::from_bytes(s.as_bytes()).ok());
            all.insert(
                h,
                Entry {
                    id: t.id,
                    sandbox: sandbox.to_owned(),
                    user_metadata: t.user_metadata,
                    user_data,
                    created_at: t.created_at,
                },
            );
        }
    }

    fn save(&self, sandbox: &str, dir: &Path) -> Result<(), TokenError> {
        let stored = Stored {
            traffic_token_sha256: lock(&self.traffic).get(sandbox).map(|h| hex(h)),
            tokens: lock(&self.by_hash)
                .iter()
                .filter(|(_, e)| e.sandbox == sandbox)
                .map(|(h, e)| StoredToken {
                    id: e.id.clone(),
                    sha256: hex(h),
                    user_metadata: e.user_metadata.clone(),
                    created_at: e.created_at.clone(),
                })
                .collect(),
        };
        // Root-only (user metadata is in it), written whole and synced before it replaces
        // the old file.
        let tmp = dir.join(format!("{FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        let written = (|| {
            use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(FILE))
        })();
        written.map_err(TokenError::Save)
    }
}

/// Constant-time equality of two hashes.
fn ring_eq(a: &Hash, b: &Hash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn view(e: &Entry) -> TokenView {
    TokenView {
        id: e.id.clone(),
        sandbox: e.sandbox.clone(),
        token: None,
        user_metadata: e.user_metadata.clone(),
        created_at: e.created_at.clone(),
        urls: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_revocable_and_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("sa-tokens-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let tokens = Tokens::default();
        let meta = serde_json::json!({"user": "ann"});
        let t = tokens.issue("sb1", &dir, Some(meta.clone())).unwrap();
        let secret = t.token.clone().unwrap();
        assert!(secret.starts_with("sat_") && secret.len() == 68);
        let grant = tokens.check(&secret).unwrap();
        assert_eq!(grant.sandbox, "sb1");
        assert_eq!(grant.user_data.unwrap(), "{\"user\":\"ann\"}");
        assert!(tokens.check("sat_wrong").is_none());
        // Only the hash is kept on disk.
        let file = fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(!file.contains(&secret), "{file}");
        let reloaded = Tokens::default();
        reloaded.load("sb1", &dir);
        assert_eq!(reloaded.check(&secret).unwrap().sandbox, "sb1");
        reloaded.revoke("sb1", &dir, &t.id).unwrap();
        assert!(reloaded.check(&secret).is_none());
        assert!(reloaded.revoke("sb1", &dir, &t.id).is_err());
        // Metadata over the limit is refused.
        let big = serde_json::json!({"x": "y".repeat(600)});
        assert!(matches!(
            tokens.issue("sb1", &dir, Some(big)),
            Err(TokenError::MetadataTooLarge(_))
        ));
        let traffic = tokens.issue_traffic("sb1", &dir).unwrap();
        assert!(tokens.traffic_allows("sb1", true, Some(&traffic)));
        assert!(!tokens.traffic_allows("sb1", true, Some("stt_no")));
        assert!(!tokens.traffic_allows("sb1", true, None));
        assert!(tokens.traffic_allows("sb2", false, None));
        // A private sandbox whose traffic token is lost refuses everyone.
        assert!(!tokens.traffic_allows("sb2", true, Some(&traffic)));
        // Metadata a header cannot carry is refused, not silently dropped.
        assert!(matches!(
            tokens.issue("sb1", &dir, Some(serde_json::json!({"x": "\u{7f}"}))),
            Err(TokenError::MetadataNotAHeader)
        ));
        tokens.forget("sb1", &dir);
        assert!(tokens.check(&secret).is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
