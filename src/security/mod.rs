//! Privileges of the processes a sandbox runs: capabilities, no_new_privs,
//! seccomp (in `seccomp`).
//!
//! Applied to the shell (and so to every command) by the agent, in this
//! order (SECURITY.md invariant 3): bounding set, ambient, inheritable,
//! permitted/effective, then no_new_privs, then the user's groups and ids
//! ([`switch_user`], when the sandbox runs as a user), then the seccomp
//! filter. The agent itself keeps its
//! capabilities (it must mount on reset) but is not dumpable, so nothing in
//! the sandbox can ptrace it or read its /proc files.

pub mod seccomp;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};

pub type Result<T> = std::result::Result<T, SecurityError>;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("dropping capability {cap} from the {set} set failed")]
    DropCapability {
        cap: String,
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting the {set} capability set failed")]
    SetCapabilities {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs failed")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("setgroups to {count} groups failed")]
    SetGroups {
        count: usize,
        #[source]
        source: nix::Error,
    },
    #[error("setresgid({gid}, {gid}, {saved}) failed")]
    SetGid {
        gid: u32,
        saved: u32,
        #[source]
        source: nix::Error,
    },
    #[error("setresuid({uid}, {uid}, {uid}) failed")]
    SetUid {
        uid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("setfsgid({fsgid}) did not take effect")]
    SetFsGid { fsgid: u32 },
}

/// The ids a sandbox process runs as, resolved before the fork (a pre-exec
/// hook reads no file and allocates nothing for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: Uid,
    pub gid: Gid,
    /// The supplementary groups, the primary gid among them (as login's
    /// initgroups makes them; [`switch_user`] relies on it).
    pub groups: Vec<Gid>,
}

/// The capabilities a sandboxed command keeps: what a root-run program
/// needs to manage files and processes inside its own sandbox, and nothing
/// that reaches beyond it. Left out on purpose (SECURITY.md P1): SYS_ADMIN,
/// SYS_PTRACE, SYS_MODULE, SYS_RAWIO, SYS_BOOT, SYS_TIME, NET_ADMIN, NET_RAW,
/// DAC_READ_SEARCH, SYS_CHROOT, MKNOD, SETFCAP, BPF, PERFMON, SYSLOG, MAC_*.
pub const DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_AUDIT_WRITE,
];

/// The capability bitmask of [`DEFAULT_CAPS`], as /proc/<pid>/status shows it.
pub fn default_caps_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0, |m, c| m | c.bitmask())
}

/// Reduces the calling process to [`DEFAULT_CAPS`] and sets no_new_privs.
/// Runs in the freshly forked shell before exec.
pub fn drop_privileges() -> Result<()> {
    let keep: CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| SecurityError::DropCapability {
                cap: cap.to_string(),
                set: "bounding",
                source,
            })?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| SecurityError::SetCapabilities { set: "ambient", source })?;
    caps::clear(None, CapSet::Inheritable).map_err(|source| SecurityError::SetCapabilities { set: "inheritable", source })?;
    // Effective must shrink before permitted can.
    caps::set(None, CapSet::Effective, &keep).map_err(|source| SecurityError::SetCapabilities { set: "effective", source })?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|source| SecurityError::SetCapabilities { set: "permitted", source })?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| SecurityError::NoNewPrivs(std::io::Error::from_raw_os_error(e as i32)))?;
    Ok(())
}

/// A gid other than `gid`, parked in the saved set-group-ID by
/// [`switch_user`].
fn spare_gid(gid: Gid) -> Gid {
    const OVERFLOW_GID: u32 = 65534;
    if gid.as_raw() == OVERFLOW_GID {
        Gid::from_raw(OVERFLOW_GID - 1)
    } else {
        Gid::from_raw(OVERFLOW_GID)
    }
}

/// Switches the calling process to `ids`. Runs in the forked child before
/// exec, after [`drop_privileges`], and allocates nothing.
///
/// The groups go first and the uid last: setgroups and setresgid need
/// CAP_SETGID, which a non-zero uid loses. When no uid of the process is 0
/// any more, the kernel clears its permitted, effective and ambient
/// capabilities (capabilities(7), "Effect of user ID changes on
/// capabilities"; SECBIT_KEEP_CAPS is not set), so the user's program runs
/// with none, and exec gives none back (no_new_privs, no ambient set).
///
/// A non-zero uid also needs another way to an exec that is **not
/// dumpable** than `sys::make_next_exec_undumpable`, which needs
/// CAP_SETPCAP and CAP_SETUID: the saved gid is parked on a spare gid
/// while the capabilities last, and after the setresuid the fsgid moves to
/// it (allowed without capabilities: it is one of the process's gids).
/// exec resets the fsgid to the egid; `commit_creds` sees an fsgid change
/// and applies `fs.suid_dumpable`, and the saved gid becomes the egid
/// again. The exec's own permission checks use that fsgid, which is why
/// the primary gid is among `groups`: the user's group still grants what
/// it grants (and, being a member, the exec is not taken for a gid change
/// that would make it AT_SECURE). For uid 0 this returns after the gid;
/// the caller then runs `sys::make_next_exec_undumpable`.
pub fn switch_user(ids: &UserIds) -> Result<()> {
    nix::unistd::setgroups(&ids.groups).map_err(|source| SecurityError::SetGroups { count: ids.groups.len(), source })?;
    let saved = if ids.uid.is_root() { ids.gid } else { spare_gid(ids.gid) };
    nix::unistd::setresgid(ids.gid, ids.gid, saved).map_err(|source| SecurityError::SetGid {
        gid: ids.gid.as_raw(),
        saved: saved.as_raw(),
        source,
    })?;
    if ids.uid.is_root() {
        return Ok(());
    }
    nix::unistd::setresuid(ids.uid, ids.uid, ids.uid).map_err(|source| SecurityError::SetUid { uid: ids.uid.as_raw(), source })?;
    nix::unistd::setfsgid(saved);
    // An invalid id (-1) only reports the current fsgid.
    if nix::unistd::setfsgid(Gid::from_raw(u32::MAX)) != saved {
        return Err(SecurityError::SetFsGid { fsgid: saved.as_raw() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_excludes_the_dangerous_capabilities() {
        let mask = default_caps_mask();
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_CHROOT,
            Capability::CAP_MKNOD,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_NET_RAW,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SETFCAP,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_BPF,
        ] {
            assert_eq!(mask & cap.bitmask(), 0, "{cap} must not be in the default set");
        }
        assert_eq!(mask.count_ones() as usize, DEFAULT_CAPS.len());
    }

    #[test]
    fn the_spare_gid_is_never_the_gid() {
        for gid in [0, 1000, 65533, 65534, 65535] {
            assert_ne!(spare_gid(Gid::from_raw(gid)), Gid::from_raw(gid));
        }
    }
}
