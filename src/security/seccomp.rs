//! The seccomp filter of the processes the agent runs for the user.
//!
//! The default policy is a deny list modelled on the default profile of
//! Docker (moby/profiles/seccomp/default.json) and on SECURITY.md P4–P9:
//! every syscall that reaches beyond the sandbox or widens its kernel attack
//! surface fails with EPERM, everything else is allowed. It is compiled with
//! seccompiler (firecracker's) **once**, in the agent, before any fork; the
//! pre-exec hook of each child only hands the ready programs to the kernel,
//! after no_new_privs and as the very last step before exec. The agent
//! itself is never filtered: it must mount on reset.
//!
//! A policy may hold several programs; the kernel runs all of them and the
//! strictest verdict wins. The default has three on x86_64:
//! 1. the deny list (EPERM);
//! 2. clone3 → ENOSYS: its flags live in memory where a filter cannot read
//!    them, so libc falls back to clone, whose flags we do check (Docker
//!    does the same);
//! 3. a guard that refuses x32-ABI syscall numbers (bit 30 set), which would
//!    otherwise reach the same kernel code under numbers no deny list names.
//!
//! Where it differs from Docker's profile (an allow list whose default is
//! EPERM): ptrace, process_vm_* and kcmp are refused on every kernel (Docker
//! allows ptrace from 4.8 on) because the shell's nonce and pipes must stay
//! out of a command's reach (SECURITY.md P8); unshare and clone are refused
//! only with a namespace flag (harmless flags such as CLONE_FILES pass); the
//! NUMA calls (mbind, set_mempolicy, move_pages…) stay allowed; and a
//! syscall the list does not name is allowed, so new kernel calls are open
//! until they are added here.
//!
//! A seccompiler filter also kills the process on a foreign architecture
//! (i386 `int 0x80` syscalls on x86_64): 32-bit binaries do not run under a
//! filter. Other architectures than x86_64 run without a filter, and say so
//! in the agent's log.
//!
//! A policy file (`--seccomp FILE`) is in seccompiler's JSON format
//! (rust-vmm/seccompiler docs/json_format.md): an object of named filters,
//! each with `mismatch_action`, `match_action` and `filter` rules. Every
//! filter in the file is installed, in name order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use crate::config::Seccomp;

pub type Result<T> = std::result::Result<T, SeccompError>;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("reading the seccomp policy file {path} failed")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seccomp policy file {path} is not a valid seccompiler JSON policy")]
    BadFile {
        path: PathBuf,
        #[source]
        source: seccompiler::Error,
    },
    #[error("the seccomp policy file {path} holds no filter")]
    EmptyFile { path: PathBuf },
    #[error("seccomp policy files are supported on x86_64 only, not on {arch}")]
    UnsupportedArch { arch: &'static str },
    #[error("compiling the {what} seccomp filter failed")]
    Compile {
        what: &'static str,
        #[source]
        source: BackendError,
    },
}

/// The policy as the agent receives it: the file's text travels in the
/// agent's config (the file itself is on the host, out of the agent's reach).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompPolicy {
    Off,
    #[default]
    Default,
    /// A seccompiler JSON policy, already validated on the host.
    Json(String),
}

/// Resolves the sandbox config's setting into what the agent gets; a bad
/// policy file is refused here, on the host, before anything is started.
pub fn load(setting: &Seccomp) -> Result<SeccompPolicy> {
    match setting {
        Seccomp::Off => Ok(SeccompPolicy::Off),
        Seccomp::Default => Ok(SeccompPolicy::Default),
        Seccomp::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SeccompError::ReadFile { path: path.clone(), source })?;
            let programs = compile_json(&text, path)?;
            if programs.is_empty() {
                return Err(SeccompError::EmptyFile { path: path.clone() });
            }
            Ok(SeccompPolicy::Json(text))
        }
    }
}

/// The BPF programs of `policy` for this machine, to be installed in this
/// order. Empty: no filter.
pub fn compile(policy: &SeccompPolicy) -> Result<Vec<BpfProgram>> {
    match policy {
        SeccompPolicy::Off => Ok(Vec::new()),
        SeccompPolicy::Default => default_programs(),
        SeccompPolicy::Json(text) => compile_json(text, Path::new("(policy)")),
    }
}

fn compile_json(text: &str, path: &Path) -> Result<Vec<BpfProgram>> {
    let Some(arch) = target_arch() else { return Err(SeccompError::UnsupportedArch { arch: std::env::consts::ARCH }) };
    let map = seccompiler::compile_from_json(text.as_bytes(), arch)
        .map_err(|source| SeccompError::BadFile { path: path.to_path_buf(), source })?;
    // A HashMap: install in name order so that the result is reproducible.
    let sorted: BTreeMap<String, BpfProgram> = map.into_iter().collect();
    Ok(sorted.into_values().filter(|p| !p.is_empty()).collect())
}

fn target_arch() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else {
        None
    }
}

/// Syscalls the default policy refuses outright (EPERM), whatever their
/// arguments. Grouped as in Docker's profile.
#[cfg(target_arch = "x86_64")]
const DENIED: &[(&str, libc::c_long)] = &[
    // Mounts and root changes: the agent mounts, its children never do.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    // Namespaces of other processes.
    ("setns", libc::SYS_setns),
    // The kernel itself: modules, kexec, BPF, perf, keyrings, the log.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("syslog", libc::SYS_syslog),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    // Other processes' memory and files (P8): the shell's nonce stays put.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    // Files by handle ("shocker", P4).
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // Host-wide state: accounting, swap, reboot, clocks, quotas, I/O ports.
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("vhangup", libc::SYS_vhangup),
    ("nfsservctl", libc::SYS_nfsservctl),
    // Obsolete calls Docker refuses too.
    ("uselib", libc::SYS_uselib),
    ("_sysctl", libc::SYS__sysctl),
    ("sysfs", libc::SYS_sysfs),
    ("ustat", libc::SYS_ustat),
];

/// Namespace flags that unshare and clone may not carry. CLONE_NEWTIME
/// (0x80) overlaps clone's exit-signal byte, so it is checked for unshare only.
#[cfg(target_arch = "x86_64")]
const NS_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// personality(2) values that stay allowed (Docker's list): PER_LINUX,
/// PER_LINUX32, UNAME26, PER_LINUX32|UNAME26 and the query 0xffffffff.
#[cfg(target_arch = "x86_64")]
const SAFE_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Terminal ioctls that inject input or talk to the console (P6).
#[cfg(target_arch = "x86_64")]
const DENIED_IOCTLS: &[u64] = &[0x5412 /* TIOCSTI */, 0x541C /* TIOCLINUX */];

#[cfg(target_arch = "x86_64")]
fn default_programs() -> Result<Vec<BpfProgram>> {
    let compile =
        |what: &'static str, r: std::result::Result<BpfProgram, BackendError>| r.map_err(|source| SeccompError::Compile { what, source });
    let deny_list = compile("default", deny_list_filter().and_then(BpfProgram::try_from))?;
    let clone3 = compile(
        "clone3",
        SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from),
    )?;
    Ok(vec![deny_list, clone3, x32_guard()])
}

#[cfg(not(target_arch = "x86_64"))]
fn default_programs() -> Result<Vec<BpfProgram>> {
    eprintln!("envbox: no default seccomp filter for {}: commands run without one", std::env::consts::ARCH);
    Ok(Vec::new())
}

#[cfg(target_arch = "x86_64")]
fn deny_list_filter() -> std::result::Result<SeccompFilter, BackendError> {
    let cond = |arg: u8, op: SeccompCmpOp, val: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, val);
    // One rule per flag: (flags & F) == F. The flags are ints (unshare) or
    // have their meaningful bits in the low word (clone), hence Dword.
    let any_flag = |flags: &[libc::c_int]| -> std::result::Result<Vec<SeccompRule>, BackendError> {
        flags
            .iter()
            .map(|&f| {
                let f = u64::from(f.unsigned_abs());
                SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(f), f)?])
            })
            .collect()
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let mut unshare_flags = NS_FLAGS.to_vec();
    unshare_flags.push(libc::CLONE_NEWTIME);
    rules.insert(libc::SYS_unshare, any_flag(&unshare_flags)?);
    rules.insert(libc::SYS_clone, any_flag(NS_FLAGS)?);
    // ioctl's request is an unsigned int in the kernel: compare the low word
    // only, or high garbage bits would slip past an exact 64-bit match.
    rules.insert(
        libc::SYS_ioctl,
        DENIED_IOCTLS
            .iter()
            .map(|&req| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, req)?]))
            .collect::<std::result::Result<_, BackendError>>()?,
    );
    // personality: refused unless the value is one of the safe ones (all
    // conditions of one rule must hold: "not this one and not that one").
    let not_safe = SAFE_PERSONALITIES.iter().map(|&p| cond(0, SeccompCmpOp::Ne, p)).collect::<std::result::Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![SeccompRule::new(not_safe)?]);
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), TargetArch::x86_64)
}

/// Refuses (ENOSYS) every syscall number with the x32 bit (1 << 30) set.
/// Kernels built with CONFIG_X86_X32_ABI would otherwise run e.g. mount as
/// `0x40000000 | 165`, a number the deny list does not name. seccompiler
/// matches exact numbers only, so this six-instruction program is written
/// out: load arch, allow if not x86_64 (the other programs handle that),
/// load nr, return ENOSYS if nr ≥ 0x40000000, else allow.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const OFFSET_NR: u32 = 0;
    const OFFSET_ARCH: u32 = 4;
    let errno = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32);
    vec![
        sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: OFFSET_ARCH },
        sock_filter { code: JEQ_K, jt: 0, jf: 2, k: AUDIT_ARCH_X86_64 },
        sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: OFFSET_NR },
        sock_filter { code: JGE_K, jt: 1, jf: 0, k: 0x4000_0000 },
        sock_filter { code: RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
        sock_filter { code: RET_K, jt: 0, jf: 0, k: errno },
    ]
}

/// The programs the agent's children install, compiled before any fork.
static PROGRAMS: std::sync::OnceLock<Vec<BpfProgram>> = std::sync::OnceLock::new();

/// The default policy, compiled by the zygote before it forks agents, so
/// that each of them starts with it (~0.1 ms of a create). Set only when
/// the compile succeeded: a missing entry means "compile it", never "no
/// filter".
static DEFAULT_PROGRAMS: std::sync::OnceLock<Vec<BpfProgram>> = std::sync::OnceLock::new();

/// Compiles the default policy ahead (see [`DEFAULT_PROGRAMS`]).
pub fn compile_default_ahead() {
    if let Ok(programs) = compile(&SeccompPolicy::Default) {
        let _ = DEFAULT_PROGRAMS.set(programs);
    }
}

/// Compiles `policy` and keeps the result for [`apply`]. Called once, by
/// the agent, before it starts any user process. Returns how many programs
/// will be installed.
pub fn prepare(policy: &SeccompPolicy) -> Result<usize> {
    let programs = match (policy, DEFAULT_PROGRAMS.get()) {
        (SeccompPolicy::Default, Some(ahead)) => ahead.clone(),
        _ => compile(policy)?,
    };
    let n = programs.len();
    let _ = PROGRAMS.set(programs);
    Ok(n)
}

/// Installs the prepared programs on the calling process. Runs in the
/// pre-exec hook of a forked child: it allocates nothing on success.
pub fn apply() -> std::io::Result<()> {
    for program in PROGRAMS.get().map(Vec::as_slice).unwrap_or_default() {
        seccompiler::apply_filter(program).map_err(std::io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_compiles() {
        let programs = compile(&SeccompPolicy::Default).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(programs.len(), 3);
            assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
        assert!(compile(&SeccompPolicy::Off).unwrap().is_empty());
    }

    #[test]
    fn the_default_compiled_ahead_is_the_default_compiled_now() {
        compile_default_ahead();
        let ahead = DEFAULT_PROGRAMS.get().expect("the default policy compiles");
        let now = compile(&SeccompPolicy::Default).unwrap();
        let words = |ps: &[BpfProgram]| -> Vec<Vec<(u16, u8, u8, u32)>> {
            ps.iter().map(|p| p.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect()).collect()
        };
        assert_eq!(words(ahead), words(&now));
        assert!(!ahead.is_empty());
    }

    #[test]
    fn a_policy_file_is_validated_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"main": {"mismatch_action": "allow", "match_action": "allow", "filter": []}}"#).unwrap();
        let e = load(&Seccomp::File(bad.clone())).unwrap_err();
        assert!(matches!(e, SeccompError::BadFile { .. }), "{e}");
        let e = load(&Seccomp::File(dir.path().join("missing.json"))).unwrap_err();
        assert!(matches!(e, SeccompError::ReadFile { .. }), "{e}");
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"main": {"mismatch_action": "allow", "match_action": {"errno": 1},
                "filter": [{"syscall": "mkdir"}, {"syscall": "mkdirat"}]}}"#,
        )
        .unwrap();
        let SeccompPolicy::Json(text) = load(&Seccomp::File(good)).unwrap() else { panic!("expected a JSON policy") };
        assert_eq!(compile(&SeccompPolicy::Json(text)).unwrap().len(), 1);
    }
}
