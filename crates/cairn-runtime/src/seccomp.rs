//! The seccomp filter every container gets: Docker's default profile, written out for cairn.
//!
//! A seccomp filter is a small program the kernel runs on every system call a process makes.
//! This one has the shape of Docker's default profile:
//!
//! - **Default: refuse.** A call that no rule names fails with `EPERM` (`defaultErrnoRet` 1)
//!   and never reaches the kernel proper.
//! - **One big allow rule** for the ~340 calls ordinary programs make: files, memory,
//!   signals, sockets, System V and POSIX IPC, timers, scheduling, the 32-bit and `_time64`
//!   variants, and the newer calls that modern libcs use (`clone3` aside, see below):
//!   `statx`, `openat2`, `close_range`, `faccessat2`, `epoll_pwait2`, `futex_waitv`, `rseq`,
//!   `pidfd_open`, `landlock_*`, `fchmodat2` and so on.
//! - **Calls allowed only with certain arguments**: `clone` only without namespace flags (a
//!   container makes no namespaces of its own: a new user namespace above all would open
//!   kernel code to it that it cannot otherwise reach); `personality` only for the personas
//!   programs actually ask for; `socket` for every family but `AF_VSOCK` (32-bit programs
//!   can still reach it through `socketcall`, whose arguments seccomp cannot see, as with
//!   Docker).
//! - **`clone3` fails with `ENOSYS`**: its flags live in a struct that seccomp cannot
//!   inspect, so it cannot get `clone`'s argument rule; `ENOSYS` makes glibc and others fall
//!   back to `clone` (with `EPERM` they would fail instead).
//!
//! What is left out is what Docker allows only with a capability cairn never grants
//! (`CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, `CAP_SYS_MODULE`, `CAP_SYS_TIME`, `CAP_SYS_BOOT`,
//! `CAP_SYSLOG`, `CAP_SYS_NICE` …): `mount` and the new mount API, `unshare`, `setns`,
//! `ptrace`, `process_vm_*`, `pidfd_getfd`, module loading, `kexec_*`, `bpf`,
//! `perf_event_open`, keyrings, clock setting, `reboot`, `swapon`, NUMA policy calls,
//! `userfaultfd`; and the `io_uring_*` calls, which Docker has refused since 25.0.
//!
//! Three facts about libcontainer 0.7 and libseccomp shaped the details:
//!
//! - libcontainer hands each name to libseccomp and skips (with a warning) names the
//!   installed libseccomp does not know — such a call then gets the default `EPERM`, even
//!   where a libc would fall back on `ENOSYS`. The list holds only names that Debian 12's
//!   libseccomp 2.5.4 resolves; a test loads the profile and fails on any such warning.
//! - For `SCMP_CMP_MASKED_EQ` the OCI spec (and runc, and Docker's profile) read `value` as
//!   the mask and `valueTwo` as the expected result; libcontainer 0.7 passes them to
//!   libseccomp the other way round (`valueTwo` is the mask). libseccomp masks both sides,
//!   so a rule in the other order compares `arg & 0 == 0` and lets *every* `clone` through:
//!   Docker's own profile, fed to libcontainer 0.7, does not restrict `clone` at all. No
//!   encoding is right in both readings, so the `clone` rule here is written for
//!   libcontainer 0.7 (`value` 0, `valueTwo` the flags), and a test loads it through
//!   libcontainer and checks that a `clone` with a namespace flag is refused: a libcontainer
//!   that changes its reading fails that test instead of silently opening `clone`.
//! - Several argument comparisons on the same argument are joined with OR by libcontainer
//!   and runc but with AND by the OCI spec; the `personality` values are therefore separate
//!   rules, which every reading joins with OR.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// The namespace flags of `clone(2)`: `CLONE_NEWNS`, `CLONE_NEWCGROUP`, `CLONE_NEWUTS`,
/// `CLONE_NEWIPC`, `CLONE_NEWUSER`, `CLONE_NEWPID` and `CLONE_NEWNET` (0x7E020000).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// The `personality(2)` arguments allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and `0xffffffff` (which only asks for the current persona).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Calls allowed without conditions, on every architecture. Names of calls that an
/// architecture lacks (the 32-bit ones on a 64-bit ABI, `open` on arm64) resolve to nothing
/// there, so one list serves all.
const ALLOWED: &[&str] = &[
    // Processes and threads: creation (`clone` has a rule of its own), exit, waiting, ids.
    "execve",
    "execveat",
    "fork",
    "vfork",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "waitpid",
    "getpid",
    "getppid",
    "gettid",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futex_wait",
    "futex_wake",
    "futex_requeue",
    "membarrier",
    "prctl",
    "capget",
    "capset",
    "seccomp",
    "restart_syscall",
    "pidfd_open",
    "pidfd_send_signal",
    "process_mrelease",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "chroot",
    "uname",
    "sysinfo",
    "getcpu",
    // Credentials; the kernel checks CAP_SETUID / CAP_SETGID itself.
    "getuid",
    "getuid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getegid",
    "getegid32",
    "getresuid",
    "getresuid32",
    "getresgid",
    "getresgid32",
    "getgroups",
    "getgroups32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    "setgroups",
    "setgroups32",
    // Sessions, scheduling, limits.
    "setsid",
    "getsid",
    "setpgid",
    "getpgid",
    "getpgrp",
    "getpriority",
    "setpriority",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getattr",
    "sched_setattr",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "ioprio_get",
    "ioprio_set",
    "getrlimit",
    "ugetrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "times",
    // Signals.
    "kill",
    "tkill",
    "tgkill",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaction",
    "sigprocmask",
    "sigreturn",
    "sigpending",
    "sigsuspend",
    "signal",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "pause",
    // Time and timers (reading clocks; setting them needs CAP_SYS_TIME, which `adjtimex`
    // checks itself).
    "clock_gettime",
    "clock_gettime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "nanosleep",
    "gettimeofday",
    "time",
    "adjtimex",
    "alarm",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    // Memory.
    "brk",
    "mmap",
    "mmap2",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "remap_file_pages",
    "memfd_create",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "map_shadow_stack",
    // File descriptors and I/O.
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "read",
    "readv",
    "pread64",
    "preadv",
    "preadv2",
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "lseek",
    "_llseek",
    "sendfile",
    "sendfile64",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "fcntl",
    "fcntl64",
    "flock",
    "ioctl",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "readahead",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "truncate",
    "truncate64",
    "ftruncate",
    "ftruncate64",
    "cachestat",
    // File metadata and the directory tree.
    "stat",
    "stat64",
    "lstat",
    "lstat64",
    "fstat",
    "fstat64",
    "newfstatat",
    "fstatat64",
    "statx",
    "statfs",
    "statfs64",
    "fstatfs",
    "fstatfs64",
    "access",
    "faccessat",
    "faccessat2",
    "getcwd",
    "chdir",
    "fchdir",
    "getdents",
    "getdents64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "unlink",
    "unlinkat",
    "readlink",
    "readlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "lchown",
    "lchown32",
    "fchownat",
    "umask",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "utimensat_time64",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "fanotify_mark",
    // Waiting for events; Linux AIO (not io_uring).
    "select",
    "_newselect",
    "pselect6",
    "pselect6_time64",
    "poll",
    "ppoll",
    "ppoll_time64",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_wait",
    "epoll_wait_old",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    // Sockets (`socket` itself has a rule of its own).
    "socketpair",
    "socketcall",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "shutdown",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "recvmmsg_time64",
    // System V and POSIX IPC (the container has its own IPC namespace).
    "ipc",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_notify",
    "mq_getsetattr",
];

/// Calls allowed on the architecture family of this build only.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const ARCH_ALLOWED: &[&str] = &[
    "arch_prctl",
    "modify_ldt",
    "get_thread_area",
    "set_thread_area",
];

/// Calls allowed on the architecture family of this build only.
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// Calls allowed on the architecture family of this build only.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
)))]
const ARCH_ALLOWED: &[&str] = &[];

/// The ABIs the filter covers: the native one and the compatibility ABIs the kernel of this
/// architecture can run (a 32-bit binary inside the image must not get past the filter).
/// Calls made through an ABI the filter does not list are killed by libseccomp.
#[cfg(target_arch = "x86_64")]
const ARCHITECTURES: &[Arch] = &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32];

/// The ABIs the filter covers (see the x86_64 version).
#[cfg(target_arch = "aarch64")]
const ARCHITECTURES: &[Arch] = &[Arch::ScmpArchAarch64, Arch::ScmpArchArm];

/// The ABIs the filter covers: only the native one on other architectures.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHITECTURES: &[Arch] = &[];

/// Docker's default seccomp profile (see the module documentation), for this build's
/// architecture.
pub(crate) fn default_profile() -> LinuxSeccomp {
    let mut syscalls = vec![allow(ALLOWED.iter().chain(ARCH_ALLOWED), Vec::new())];

    // clone: only when `flags & CLONE_NAMESPACE_FLAGS == 0`, with the mask in `valueTwo`
    // where libcontainer 0.7 looks for it (see the module documentation).
    syscalls.push(allow(
        ["clone"],
        vec![arg(
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            0,
            Some(CLONE_NAMESPACE_FLAGS),
        )],
    ));

    let mut clone3 = LinuxSyscall::default();
    clone3.set_names(vec!["clone3".to_owned()]);
    clone3.set_action(LinuxSeccompAction::ScmpActErrno);
    clone3.set_errno_ret(Some(libc::ENOSYS as u32));
    syscalls.push(clone3);

    for persona in PERSONALITIES {
        syscalls.push(allow(
            ["personality"],
            vec![arg(LinuxSeccompOperator::ScmpCmpEq, persona, None)],
        ));
    }

    syscalls.push(allow(
        ["socket"],
        vec![arg(
            LinuxSeccompOperator::ScmpCmpNe,
            libc::AF_VSOCK as u64,
            None,
        )],
    ));

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures((!ARCHITECTURES.is_empty()).then(|| ARCHITECTURES.to_vec()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// An `SCMP_ACT_ALLOW` rule for `names`, with argument conditions (all must hold).
fn allow<I>(names: I, args: Vec<LinuxSeccompArg>) -> LinuxSyscall
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.into_iter().map(|n| n.as_ref().to_owned()).collect());
    rule.set_action(LinuxSeccompAction::ScmpActAllow);
    rule.set_args((!args.is_empty()).then_some(args));
    rule
}

/// A condition on the first argument of a call.
fn arg(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let mut builder = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .op(op)
        .value(value);
    if let Some(value_two) = value_two {
        builder = builder.value_two(value_two);
    }
    // Every field has a default and the builder validates nothing, so it cannot fail.
    builder
        .build()
        .expect("seccomp argument builder cannot fail")
}

/// How libseccomp lays out the syscall checks of a compiled filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLayout {
    /// A binary search over syscall numbers (libseccomp's `SCMP_FLTATR_CTL_OPTIMIZE` 2),
    /// what cairn's containers get. A few more instructions, but any one call walks about
    /// log2(n) of them instead of a linear list. That matters most at load: since Linux
    /// 5.11 the kernel runs the new filter once for every syscall number of every
    /// architecture it names, to learn which calls it may allow without running it again.
    /// Docker's profile (three architectures, ~370 rules) took 1.3 ms to load here as a
    /// list and 0.3–0.45 ms as a tree, in every container's start. runc uses the tree for
    /// profiles of more than 32 rules (since 1.2).
    BinaryTree,
    /// libseccomp's default: the rules as a list, the most frequent first (what crun and
    /// libcontainer load).
    Linear,
}

/// Compiles a profile to a classic BPF program (the bytes of `struct sock_filter`s), as
/// libseccomp would load it, for tools that hand a runtime a precompiled filter (cairn's
/// benchmarks give one to crun) and for cairn's own runtime helper.
pub fn compile_filter(
    profile: &LinuxSeccomp,
    layout: FilterLayout,
) -> Result<Vec<u8>, crate::RuntimeError> {
    compile(profile, layout).map_err(|reason| crate::RuntimeError::Seccomp { reason })
}

/// [`compile_filter`] with the helper's plain-string errors.
///
/// libcontainer compiles the spec's profile inside every container's init; with three
/// architectures and ~370 rules that costs ~14 ms per container here. The helper compiles it
/// once instead, and each container's init installs the same program
/// ([`crate::sys::install_seccomp_filter`]).
pub(crate) fn compile(profile: &LinuxSeccomp, layout: FilterLayout) -> Result<Vec<u8>, String> {
    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    };
    use oci_spec::runtime::{Arch, LinuxSeccompAction as A, LinuxSeccompOperator as Op};
    let action = |a: A, errno: Option<u32>| -> Result<ScmpAction, String> {
        Ok(match a {
            A::ScmpActKill | A::ScmpActKillThread => ScmpAction::KillThread,
            A::ScmpActKillProcess => ScmpAction::KillProcess,
            A::ScmpActTrap => ScmpAction::Trap,
            A::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
            A::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
            A::ScmpActAllow => ScmpAction::Allow,
            A::ScmpActLog => ScmpAction::Log,
            other => return Err(format!("seccomp action {other:?} is not supported")),
        })
    };
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("seccomp {what}: {e}");
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("new filter", e))?;
    // no_new_privs is the spec's business (it is set), not libseccomp's.
    ctx.set_ctl_nnp(false).map_err(|e| err("nnp", e))?;
    // libseccomp up to 2.5.4 builds a broken tree for a filter without rules.
    let rules = profile.syscalls().as_ref().map_or(0, Vec::len);
    if layout == FilterLayout::BinaryTree && rules > 0 {
        ctx.set_ctl_optimize(2)
            .map_err(|e| err("binary tree layout (needs libseccomp 2.5)", e))?;
    }
    for arch in profile.architectures().iter().flatten() {
        let arch = match arch {
            Arch::ScmpArchX86 => ScmpArch::X86,
            Arch::ScmpArchX86_64 => ScmpArch::X8664,
            Arch::ScmpArchX32 => ScmpArch::X32,
            Arch::ScmpArchArm => ScmpArch::Arm,
            Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
            other => return Err(format!("seccomp architecture {other:?} is not supported")),
        };
        ctx.add_arch(arch).map_err(|e| err("architecture", e))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let rule_action = action(rule.action(), rule.errno_ret())?;
        if rule_action == default {
            continue;
        }
        let comparators: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    Op::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    Op::ScmpCmpLt => ScmpCompareOp::Less,
                    Op::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    Op::ScmpCmpEq => ScmpCompareOp::Equal,
                    Op::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    Op::ScmpCmpGt => ScmpCompareOp::Greater,
                    // The same reading as libcontainer's (see the clone rule above):
                    // `valueTwo` is the mask, `value` the datum.
                    Op::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value_two().unwrap_or(0)),
                };
                ScmpArgCompare::new(a.index() as u32, op, a.value())
            })
            .collect();
        // One comparison per argument index and rule (libseccomp's limit): a rule that
        // compares one argument several times (personality's values) becomes one rule each.
        let mut indexes: Vec<u32> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| a.index() as u32)
            .collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let syscall = ScmpSyscall::from_name(name)
                .map_err(|e| format!("seccomp syscall {name:?}: {e}"))?;
            if comparators.is_empty() {
                ctx.add_rule(rule_action, syscall)
                    .map_err(|e| err(name, e))?;
            } else if repeated {
                for c in &comparators {
                    ctx.add_rule_conditional(rule_action, syscall, std::slice::from_ref(c))
                        .map_err(|e| err(name, e))?;
                }
            } else {
                ctx.add_rule_conditional(rule_action, syscall, &comparators)
                    .map_err(|e| err(name, e))?;
            }
        }
    }
    let (read, write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // The program (8 bytes per instruction, ~1000 instructions) fits a pipe's buffer.
    let exported = ctx.export_bpf(&write).map_err(|e| err("export", e));
    drop(write);
    exported?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut bytes)
        .map_err(|e| format!("read compiled seccomp filter: {e}"))?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(format!("compiled seccomp filter has {} bytes", bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What Docker refuses to a container without extra capabilities, plus `io_uring`
    /// (refused since Docker 25.0) and `memfd_secret`.
    const DOCKER_BLOCKS: &[&str] = &[
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_adjtime64",
        "clock_settime",
        "clock_settime64",
        "create_module",
        "delete_module",
        "fanotify_init",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "get_kernel_syms",
        "get_mempolicy",
        "init_module",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mbind",
        "memfd_secret",
        "migrate_pages",
        "mount",
        "mount_setattr",
        "move_mount",
        "move_pages",
        "name_to_handle_at",
        "nfsservctl",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "pidfd_getfd",
        "pivot_root",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        "query_module",
        "quotactl",
        "quotactl_fd",
        "reboot",
        "request_key",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "setdomainname",
        "sethostname",
        "setns",
        "settimeofday",
        "stime",
        "swapoff",
        "swapon",
        "syslog",
        "_sysctl",
        "umount",
        "umount2",
        "unshare",
        "uselib",
        "userfaultfd",
        "ustat",
        "vhangup",
        "vm86",
        "vm86old",
    ];

    fn rules_for<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_refuses_with_eperm_on_every_abi_of_the_host() {
        let profile = default_profile();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(1));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            profile.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            profile.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
    }

    #[test]
    fn blocked_calls_are_in_no_rule_and_allowed_names_are_unique() {
        let profile = default_profile();
        for name in DOCKER_BLOCKS {
            assert!(
                rules_for(&profile, name).is_empty(),
                "{name} must fall to the default action"
            );
        }
        let mut seen = HashSet::new();
        for name in ALLOWED.iter().chain(ARCH_ALLOWED) {
            assert!(seen.insert(name), "{name} listed twice");
        }
    }

    #[test]
    fn what_programs_need_is_allowed_unconditionally() {
        let profile = default_profile();
        for name in [
            "execve",
            "execveat",
            "wait4",
            "rt_sigaction",
            "rt_sigreturn",
            "prctl",
            "pidfd_open",
            "pidfd_send_signal",
            "statx",
            "openat2",
            "close_range",
            "faccessat2",
            "epoll_pwait2",
            "futex_waitv",
            "landlock_create_ruleset",
            "rseq",
            "set_robust_list",
            "get_robust_list",
            "membarrier",
            "fchmodat2",
            "chroot",
        ] {
            let rules = rules_for(&profile, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(
                rules[0].action(),
                LinuxSeccompAction::ScmpActAllow,
                "{name}"
            );
            assert!(rules[0].args().is_none(), "{name}");
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7E02_0000);
        let profile = default_profile();
        let rules = rules_for(&profile, "clone");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].names(), &["clone".to_owned()]);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
        let args = rules[0]
            .args()
            .as_deref()
            .expect("clone has an argument rule");
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].index(), 0);
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        // libcontainer 0.7's order: the mask in valueTwo, the expected result in value.
        assert_eq!(
            (args[0].value(), args[0].value_two()),
            (0, Some(CLONE_NAMESPACE_FLAGS))
        );
    }

    #[test]
    fn clone3_fails_with_enosys() {
        let profile = default_profile();
        let rules = rules_for(&profile, "clone3");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rules[0].errno_ret(), Some(38));
        assert!(rules[0].args().is_none());
    }

    #[test]
    fn personality_and_socket_have_argument_rules() {
        let profile = default_profile();
        let personas: Vec<u64> = rules_for(&profile, "personality")
            .iter()
            .map(|rule| {
                let args = rule.args().as_deref().expect("argument rule");
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpEq);
                args[0].value()
            })
            .collect();
        assert_eq!(personas, [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]);

        let socket = rules_for(&profile, "socket");
        assert_eq!(socket.len(), 1);
        let args = socket[0].args().as_deref().expect("argument rule");
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpNe);
        assert_eq!(args[0].value(), 40);
    }

    #[test]
    fn profile_round_trips_through_json() {
        let profile = default_profile();
        let json = serde_json::to_string(&profile).expect("serialize");
        assert!(
            json.contains(r#""defaultAction":"SCMP_ACT_ERRNO""#),
            "{json}"
        );
        assert!(json.contains(r#""op":"SCMP_CMP_MASKED_EQ""#), "{json}");
        let back: LinuxSeccomp = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, profile);
    }

    /// Environment variable that turns [`probe`] on in the child process.
    const PROBE_ENV: &str = "CAIRN_SECCOMP_PROBE";
    /// Printed by the probe when every check passed.
    const PROBE_OK: &str = "cairn seccomp probe: all checks passed";
    /// The default errno the probe loads the profile with, so that a refusal by the filter
    /// cannot be mistaken for one by the kernel (which says EPERM too).
    const SENTINEL: i32 = libc::EHWPOISON;

    /// Loads the profile through libcontainer in a child process (a seccomp filter cannot
    /// be removed again) and checks what it lets through.
    #[test]
    fn filter_loads_through_libcontainer_and_behaves() {
        run_probe("libcontainer");
    }

    /// The same checks with the filter cairn's containers get: compiled here as a binary
    /// tree and installed as the reaper installs it.
    #[test]
    fn compiled_binary_tree_filter_behaves() {
        run_probe("binary-tree");
    }

    /// The same checks with the list layout that crun and libcontainer load.
    #[test]
    fn compiled_linear_filter_behaves() {
        run_probe("linear");
    }

    #[test]
    fn the_layouts_differ() {
        let profile = default_profile();
        let tree = compile(&profile, FilterLayout::BinaryTree).expect("tree");
        let linear = compile(&profile, FilterLayout::Linear).expect("linear");
        assert_ne!(tree, linear, "libseccomp ignored the binary tree layout");
    }

    /// Runs [`probe`] in a child process with the filter loaded the way `how` says.
    fn run_probe(how: &str) {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "seccomp::tests::probe",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROBE_ENV, how)
            .output()
            .expect("run probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(PROBE_OK),
            "probe failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }

    /// The child half of [`run_probe`].
    #[test]
    #[ignore = "run in a child process by run_probe"]
    fn probe() {
        let Some(how) = std::env::var_os(PROBE_ENV) else {
            return;
        };
        use nix::errno::Errno;

        let mut profile = default_profile();
        profile.set_default_errno_ret(Some(SENTINEL as u32));
        let refused = Errno::from_raw(SENTINEL);

        nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
        let layout = match how.to_str() {
            Some("libcontainer") => None,
            Some("binary-tree") => Some(FilterLayout::BinaryTree),
            Some("linear") => Some(FilterLayout::Linear),
            other => panic!("unknown probe {other:?}"),
        };
        if let Some(layout) = layout {
            let program = compile(&profile, layout).expect("compile the profile");
            crate::sys::install_seccomp_filter(&program).expect("install the filter");
        } else {
            let warnings = Arc::new(Mutex::new(Vec::new()));
            let loaded = tracing::subscriber::with_default(Warnings(warnings.clone()), || {
                libcontainer::seccomp::initialize_seccomp(&profile)
            });
            loaded.expect("libcontainer loads the profile");
            let warnings = warnings.lock().expect("lock").clone();
            assert!(
                warnings.is_empty(),
                "libcontainer warned (unknown syscall names?): {warnings:#?}"
            );
        }

        let mut failures = Vec::new();
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{what}: {detail}"));
            }
        };

        let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS);
        check("unshare refused", r == Err(refused), format!("{r:?}"));
        // Arguments the kernel would reject anyway, should a broken filter let them pass in
        // a test run as root: a name longer than 64 bytes, a mount point that does not exist.
        let r = nix::unistd::sethostname("x".repeat(100));
        check("sethostname refused", r == Err(refused), format!("{r:?}"));
        let r = nix::mount::mount(
            Some("none"),
            "/nonexistent/cairn-seccomp-probe",
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT,
            None::<&str>,
        );
        check("mount refused", r == Err(refused), format!("{r:?}"));
        let socket = |family| {
            nix::sys::socket::socket(
                family,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map(drop)
        };
        let r = socket(nix::sys::socket::AddressFamily::Vsock);
        check(
            "AF_VSOCK socket refused",
            r == Err(refused),
            format!("{r:?}"),
        );
        let r = socket(nix::sys::socket::AddressFamily::Unix);
        check("AF_UNIX socket allowed", r.is_ok(), format!("{r:?}"));

        // Spawning uses clone3 (ENOSYS here) and then clone without namespace flags.
        let r = std::process::Command::new("/bin/true").status();
        check(
            "spawning a process works",
            matches!(&r, Ok(s) if s.success()),
            format!("{r:?}"),
        );

        perl_checks(&mut check);

        assert!(failures.is_empty(), "{failures:#?}");
        println!("{PROBE_OK}");
    }

    /// Raw system calls with chosen arguments, made by perl (Essential on Debian) because
    /// this crate makes no raw calls outside its `sys` module.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn perl_checks(check: &mut impl FnMut(&str, bool, String)) {
        #[cfg(target_arch = "x86_64")]
        let (clone, personality) = (56, 135);
        #[cfg(target_arch = "aarch64")]
        let (clone, personality) = (220, 92);
        let clone3 = 435;
        let sigchld = libc::SIGCHLD as u64;
        let script = format!(
            r#"$| = 1;
sub try {{ my ($name, $nr, @args) = @_; my $r = syscall($nr, @args);
  if ($r == 0 && $name =~ /^clone/) {{ exit 0 }}
  print "$name=", ($r == -1 ? $! + 0 : "ok"), "\n"; }}
try("clone_plain", {clone}, {sigchld}, 0, 0, 0, 0);
try("clone_newuts", {clone}, {newuts} | {sigchld}, 0, 0, 0, 0);
try("clone_newuser", {clone}, {newuser} | {sigchld}, 0, 0, 0, 0);
try("clone3", {clone3}, 0, 0);
try("personality_query", {personality}, 0xffffffff);
try("personality_addr_no_randomize", {personality}, 0x0040000);
"#,
            newuts = libc::CLONE_NEWUTS,
            newuser = libc::CLONE_NEWUSER,
        );
        let out = match std::process::Command::new("perl")
            .args(["-e", &script])
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("perl not found: raw clone/clone3/personality checks skipped");
                return;
            }
            Err(e) => panic!("run perl: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let expect = |name: &str, want: String| {
            let line = format!("{name}={want}");
            (stdout.lines().any(|l| l == line), line)
        };
        for (name, want) in [
            ("clone_plain", "ok".to_owned()),
            ("clone_newuts", SENTINEL.to_string()),
            ("clone_newuser", SENTINEL.to_string()),
            ("clone3", libc::ENOSYS.to_string()),
            ("personality_query", "ok".to_owned()),
            ("personality_addr_no_randomize", SENTINEL.to_string()),
        ] {
            let (ok, line) = expect(name, want);
            check(
                &line,
                ok,
                format!(
                    "perl said {stdout:?}, {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn perl_checks(_check: &mut impl FnMut(&str, bool, String)) {}

    /// A tracing subscriber that keeps the text of every warning and error.
    struct Warnings(Arc<Mutex<Vec<String>>>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() <= tracing::Level::WARN {
                let mut text = String::new();
                event.record(
                    &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                        text.push_str(&format!("{}={value:?} ", field.name()));
                    },
                );
                self.0.lock().expect("lock").push(text);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}
