//! The user the sandbox's processes run as: a `USER[:GROUP]` spec (the
//! caller's `--user`, else the image's `User`) looked up in the sandbox's
//! own /etc/passwd and /etc/group, the way runc resolves an OCI process
//! user (opencontainers/runc `libcontainer/user` `GetExecUser`):
//!
//! - a name: its uid, primary gid and home from /etc/passwd; a name that
//!   is not listed there is an error;
//! - a number: the /etc/passwd entry with that uid when there is one (its
//!   gid, home and name), else that uid with gid = uid and home `/`;
//! - `:GROUP`, a name from /etc/group or a number, replaces the primary gid;
//! - supplementary groups: without `:GROUP`, every group of /etc/group that
//!   lists the user's name (with an explicit group, none, as in runc); the
//!   primary gid is always among them (see `security::switch_user`).
//!
//! The agent resolves the spec once, right after it pivoted into the
//! sandbox's root and before it starts anything, so an unknown name fails
//! `create`; a reset brings the same files back, so the answer holds for
//! the sandbox's life. The pre-exec hooks get plain ids only.

use std::path::Path;

use nix::unistd::{Gid, Uid};

use crate::config::{self, ConfigError, MAX_ID};
use crate::sandbox::files::{FilesError, RootFs};
use crate::security::UserIds;

/// Cap on what is read of /etc/passwd and /etc/group.
const MAX_DB_BYTES: u64 = 4 << 20;

/// Why a user spec could not be turned into ids.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Spec(#[from] ConfigError),
    #[error("user {user:?} is not in the image's /etc/passwd (a numeric uid[:gid] needs no entry)")]
    UnknownUser { user: String },
    #[error("group {group:?} is not in the image's /etc/group (a numeric gid needs no entry)")]
    UnknownGroup { group: String },
    #[error("the image's {file} gives {what} {id} for user {spec:?}, outside 0 to 2147483647")]
    OutOfRange { file: &'static str, what: &'static str, id: u32, spec: String },
    #[error("opening the sandbox's root to read its user database failed")]
    OpenRoot(#[source] std::io::Error),
    #[error("reading the sandbox's {path} failed")]
    Read {
        path: &'static str,
        #[source]
        source: FilesError,
    },
}

pub type Result<T> = std::result::Result<T, UserError>;

/// A resolved user: the ids, and what its processes' environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub ids: UserIds,
    /// HOME: the passwd entry's home, `/` without one.
    pub home: String,
    /// USER and LOGNAME: the passwd entry's name, if it has one.
    pub name: Option<String>,
}

impl User {
    /// The variables a process of this user starts with, before the
    /// image's and the caller's (which win).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("HOME", self.home.clone())];
        if let Some(name) = &self.name {
            env.push(("USER", name.clone()));
            env.push(("LOGNAME", name.clone()));
        }
        env
    }
}

/// HOME, USER and LOGNAME for a process run as `user`, or as root.
pub fn base_env(user: Option<&User>) -> Vec<(&'static str, String)> {
    match user {
        Some(u) => u.env(),
        None => vec![("HOME", "/root".to_string())],
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell` lines; malformed ones (and
/// NIS `+`/`-` lines, whose ids do not parse) are skipped.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.trim().split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let home = f.nth(1).unwrap_or("");
        Some(PasswdEntry { name, uid, gid, home })
    })
}

/// `name:password:gid:member,member` lines, as (name, gid, members).
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    text.lines().filter_map(|line| {
        let mut f = line.trim().split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        Some((name, gid, f.next().unwrap_or("")))
    })
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `spec` against the text of /etc/passwd and /etc/group.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User> {
    config::parse_user(spec)?;
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let range = |file, what, id: u32| {
        if id > MAX_ID {
            Err(UserError::OutOfRange { file, what, id, spec: spec.to_string() })
        } else {
            Ok(id)
        }
    };
    // A number is always a uid (runc); `parse_user` checked its range.
    let unknown = || UserError::UnknownUser { user: user_arg.to_string() };
    let (uid, entry) = if is_numeric(user_arg) {
        let uid: u32 = user_arg.parse().map_err(|_| unknown())?;
        (uid, passwd_entries(passwd).find(|e| e.uid == uid))
    } else {
        let e = passwd_entries(passwd).find(|e| e.name == user_arg).ok_or_else(unknown)?;
        (e.uid, Some(e))
    };
    let (uid, mut gid, home, name) = match entry {
        Some(e) => (range("/etc/passwd", "uid", e.uid)?, range("/etc/passwd", "gid", e.gid)?, e.home, Some(e.name.to_string())),
        None => (uid, uid, "", None),
    };
    let mut supplementary = Vec::new();
    match group_arg {
        Some(g) if is_numeric(g) => gid = g.parse().map_err(|_| UserError::UnknownGroup { group: g.to_string() })?,
        Some(g) => {
            let found = group_entries(group).find(|(n, _, _)| *n == g).ok_or_else(|| UserError::UnknownGroup { group: g.to_string() })?;
            gid = range("/etc/group", "gid", found.1)?;
        }
        None => {
            if let Some(name) = &name {
                for (_, g, members) in group_entries(group) {
                    if members.split(',').any(|m| m.trim() == name) {
                        supplementary.push(range("/etc/group", "gid", g)?);
                    }
                }
            }
        }
    }
    let mut groups = vec![Gid::from_raw(gid)];
    for g in supplementary {
        if !groups.contains(&Gid::from_raw(g)) {
            groups.push(Gid::from_raw(g));
        }
    }
    let home = if home.is_empty() { "/".to_string() } else { home.to_string() };
    Ok(User { ids: UserIds { uid: Uid::from_raw(uid), gid: Gid::from_raw(gid), groups }, home, name })
}

/// Reads one of the sandbox's user databases: confined to the root the
/// agent stands in, a regular file only (a FIFO cannot block the agent),
/// at most [`MAX_DB_BYTES`]. A missing file is an empty one.
fn read_db(root: &RootFs, path: &'static str) -> Result<String> {
    match root.read_file(path, MAX_DB_BYTES) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(FilesError::NotFound { .. }) => Ok(String::new()),
        Err(source) => Err(UserError::Read { path, source }),
    }
}

/// Resolves `spec` in the sandbox the agent has pivoted into.
pub fn resolve_in_sandbox(spec: &str) -> Result<User> {
    let root = RootFs::open_dir(Path::new("/")).map_err(UserError::OpenRoot)?;
    resolve(spec, &read_db(&root, "/etc/passwd")?, &read_db(&root, "/etc/group")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        +nis::::::\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n\
        broken:x:notanumber:1\n\
        huge:x:4294967295:1:::\n";
    const GROUP: &str = "root:x:0:\n\
        nogroup:x:65534:\n\
        app:x:1000:\n\
        staff:x:50:app, other\n\
        docker:x:999:other,app\n\
        others:x:7:other\n";

    fn ids(u: &User) -> (u32, u32, Vec<u32>) {
        (u.ids.uid.as_raw(), u.ids.gid.as_raw(), u.ids.groups.iter().map(|g| g.as_raw()).collect())
    }

    #[test]
    fn names_give_ids_home_and_supplementary_groups() {
        let u = resolve("nobody", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (65534, 65534, vec![65534]));
        assert_eq!((u.home.as_str(), u.name.as_deref()), ("/nonexistent", Some("nobody")));
        let u = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (1000, 1000, vec![1000, 50, 999]));
        assert_eq!(u.env(), [("HOME", "/home/app".to_string()), ("USER", "app".into()), ("LOGNAME", "app".into())]);
        assert_eq!(resolve("nohome", PASSWD, GROUP).unwrap().home, "/");
        let root = resolve("root", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&root), (0, 0, vec![0]));
    }

    #[test]
    fn numbers_need_no_entry() {
        let u = resolve("1234:5678", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (1234, 5678, vec![5678]));
        assert_eq!((u.home.as_str(), u.name.as_deref()), ("/", None));
        assert_eq!(u.env(), [("HOME", "/".to_string())]);
        // Not listed: gid = uid. Listed: the entry's gid, home and groups.
        assert_eq!(ids(&resolve("4321", PASSWD, GROUP).unwrap()), (4321, 4321, vec![4321]));
        let u = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (1000, 1000, vec![1000, 50, 999]));
        assert_eq!(u.name.as_deref(), Some("app"));
        assert_eq!(ids(&resolve("0", "", "").unwrap()), (0, 0, vec![0]));
    }

    #[test]
    fn explicit_groups_replace_the_primary_one() {
        assert_eq!(ids(&resolve("app:staff", PASSWD, GROUP).unwrap()), (1000, 50, vec![50]));
        assert_eq!(ids(&resolve("app:7", PASSWD, GROUP).unwrap()), (1000, 7, vec![7]));
        assert_eq!(ids(&resolve("nobody:0", PASSWD, GROUP).unwrap()), (65534, 0, vec![0]));
    }

    #[test]
    fn unknown_names_and_bad_specs_are_clear_errors() {
        let msg = resolve("ghost", PASSWD, GROUP).unwrap_err().to_string();
        assert!(msg.contains("\"ghost\"") && msg.contains("not in the image's /etc/passwd"), "{msg}");
        let msg = resolve("app:ghosts", PASSWD, GROUP).unwrap_err().to_string();
        assert!(msg.contains("\"ghosts\"") && msg.contains("/etc/group"), "{msg}");
        assert!(resolve("nobody", "", "").is_err(), "no passwd: names cannot resolve");
        assert!(resolve("broken", PASSWD, GROUP).is_err(), "a malformed line is no entry");
        // -1 would mean "unchanged" to setresuid: never an id.
        assert!(resolve("huge", PASSWD, GROUP).unwrap_err().to_string().contains("outside"));
        assert!(resolve("4294967295", PASSWD, GROUP).is_err());
        assert!(resolve("a:b:c", PASSWD, GROUP).unwrap_err().to_string().contains("invalid user"));
    }
}
