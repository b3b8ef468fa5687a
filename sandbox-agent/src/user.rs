//! The unprivileged user a workload runs as.
//!
//! `/etc/passwd` and `/etc/group` are read directly first: going through NSS costs a
//! `dlopen` of its modules (`libnss_systemd` pulls in more) on every sandbox start, about a
//! millisecond here. Names those files do not know are looked up through NSS after all.
use std::{ffi::CString, fs, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("invalid --user \"{spec}\": no such user")]
    NoSuchUser { spec: String },
    #[error("invalid --user \"{spec}\": the group must be a number")]
    BadGroup { spec: String },
    #[error(
        "invalid --user \"{spec}\": refusing to run a workload as root (uid 0); sandboxes run \
         as an unprivileged user"
    )]
    Root { spec: String },
}

/// The default user of a workload.
pub const DEFAULT_USER: &str = "nobody";

pub(crate) struct PasswdEntry {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
}

/// Parses `name:x:uid:gid:gecos:home:shell` lines; finds a user by name or uid.
pub(crate) fn find_in_passwd(
    text: &str,
    by_name: Option<&str>,
    by_uid: Option<u32>,
) -> Option<PasswdEntry> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let matches = by_name.is_some_and(|n| n == f[0]) || by_uid == Some(uid);
        matches.then(|| PasswdEntry {
            name: f[0].to_owned(),
            uid,
            gid: f[3].parse().unwrap_or(uid),
            home: PathBuf::from(f[5]),
        })
    })
}

/// The gid of the group `name` in `group:x:gid:member,member` lines.
pub(crate) fn gid_in_group_file(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// Supplementary groups of `name` from `group:x:gid:member,member` lines, plus `gid`.
fn groups_in_group_file(text: &str, name: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4
            && f[3].split(',').any(|m| m == name)
            && let Ok(g) = f[2].parse()
            && !groups.contains(&g)
        {
            groups.push(g);
        }
    }
    groups
}

fn nss_lookup(by_name: Option<&str>, by_uid: Option<u32>) -> Option<PasswdEntry> {
    use nix::unistd::{Uid, User as PwUser};
    let user = match (by_name, by_uid) {
        (Some(n), _) => PwUser::from_name(n).ok().flatten(),
        (None, Some(u)) => PwUser::from_uid(Uid::from_raw(u)).ok().flatten(),
        (None, None) => None,
    }?;
    Some(PasswdEntry {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    })
}

fn nss_groups(name: &str, gid: u32) -> Vec<u32> {
    use nix::unistd::Gid;
    let Ok(cname) = CString::new(name) else {
        return vec![gid];
    };
    nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
        .map_or_else(|_| vec![gid], |g| g.into_iter().map(Gid::as_raw).collect())
}

/// Resolves `NAME`, `UID` or `UID:GID` (default [`DEFAULT_USER`]). Root is refused.
pub fn resolve(spec: Option<&str>) -> Result<User, UserError> {
    let spec = spec.unwrap_or(DEFAULT_USER);
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let numeric = user_part.parse::<u32>().ok();
    let by_name = if numeric.is_some() {
        None
    } else {
        Some(user_part)
    };
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let from_files = find_in_passwd(&passwd, by_name, numeric);
    let in_files = from_files.is_some();
    let entry = from_files.or_else(|| nss_lookup(by_name, numeric));
    let uid = match (numeric, &entry) {
        (Some(uid), _) => uid,
        (None, Some(e)) => e.uid,
        (None, None) => return Err(UserError::NoSuchUser { spec: spec.into() }),
    };
    if uid == 0 {
        return Err(UserError::Root { spec: spec.into() });
    }
    let gid = match group_part {
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| UserError::BadGroup { spec: spec.into() })?,
        None => entry.as_ref().map_or(uid, |e| e.gid),
    };
    let groups = match (&entry, group_part) {
        (Some(e), None) => {
            if in_files {
                let group_file = fs::read_to_string("/etc/group").unwrap_or_default();
                groups_in_group_file(&group_file, &e.name, gid)
            } else {
                nss_groups(&e.name, gid)
            }
        }
        _ => vec![gid],
    };
    let name = entry
        .as_ref()
        .map_or_else(|| uid.to_string(), |e| e.name.clone());
    let home = entry.map_or_else(|| PathBuf::from("/"), |e| e.home);
    Ok(User {
        name,
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          alice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:alice,bob\ndocker:x:999:alice\nnogroup:x:65534:\n";

    #[test]
    fn finds_users_by_name_and_uid() {
        let e = find_in_passwd(PASSWD, Some("alice"), None).expect("alice");
        assert_eq!(
            (e.uid, e.gid, e.home),
            (1000, 1000, PathBuf::from("/home/alice"))
        );
        assert_eq!(
            find_in_passwd(PASSWD, None, Some(65534))
                .expect("nobody")
                .name,
            "nobody"
        );
        assert!(find_in_passwd(PASSWD, Some("mallory"), None).is_none());
    }

    #[test]
    fn collects_supplementary_groups() {
        assert_eq!(
            groups_in_group_file(GROUP, "alice", 1000),
            vec![1000, 100, 999]
        );
        assert_eq!(groups_in_group_file(GROUP, "nobody", 65534), vec![65534]);
    }

    #[test]
    fn refuses_root_and_unknown_users() {
        assert_eq!(
            resolve(Some("root")),
            Err(UserError::Root {
                spec: "root".into()
            })
        );
        assert_eq!(
            resolve(Some("0:0")),
            Err(UserError::Root { spec: "0:0".into() })
        );
        assert_eq!(
            resolve(Some("no-such-user-x")),
            Err(UserError::NoSuchUser {
                spec: "no-such-user-x".into()
            })
        );
        assert_eq!(
            resolve(Some("1234:x")),
            Err(UserError::BadGroup {
                spec: "1234:x".into()
            })
        );
        let numeric = resolve(Some("1234:1234")).expect("numeric ids need no entry");
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.groups),
            (1234, 1234, vec![1234])
        );
    }
}
