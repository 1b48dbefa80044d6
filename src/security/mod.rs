//! Privileges of the processes a sandbox runs: capabilities, no_new_privs,
//! seccomp (in `seccomp`).
//!
//! Applied to the shell (and so to every command) by the agent, in this
//! order (SECURITY.md invariant 3): bounding set, ambient, inheritable,
//! permitted/effective, then no_new_privs, then the seccomp filter. The agent itself keeps its
//! capabilities (it must mount on reset) but is not dumpable, so nothing in
//! the sandbox can ptrace it or read its /proc files.

pub mod seccomp;

use caps::{CapSet, Capability, CapsHashSet};

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
}
