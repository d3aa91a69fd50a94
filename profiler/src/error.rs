//! Errors a user can cause or meet, each with its own exit code, so scripts can tell them
//! apart. Anything else is exit code 1.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no such process: {pid}")]
    NoSuchProcess { pid: u32 },
    #[error(
        "pid {pid} exited while gomemtrace was analysing it or attaching to it: nothing was \
         traced ({error})"
    )]
    TargetVanished { pid: u32, error: String },
    #[error("{path}: {reason}")]
    NotSupported { path: String, reason: String },
    #[error("{what} needs root, or the capabilities CAP_BPF and CAP_PERFMON (run with sudo)")]
    NotPermitted { what: String },
    /// Root without CAP_SYS_PTRACE (a container's default) may not look into a process
    /// that holds capabilities it lacks, pid 1 for one: this is not about being root.
    #[error(
        "pid {pid}: cannot read its executable ({error}): tracing a process needs ptrace \
         access to it: CAP_SYS_PTRACE (containers often drop it), or the same user as a \
         dumpable process that holds no capability this one lacks"
    )]
    NoPtraceAccess { pid: u32, error: String },
    /// Root with CAP_BPF and CAP_PERFMON whom the kernel still refuses: a seccomp filter,
    /// a Linux security module or the container's profile stands between.
    #[error(
        "{what}: the kernel refused it ({error}) although this process has CAP_BPF and \
         CAP_PERFMON: a seccomp filter, a Linux security module (lockdown, SELinux, AppArmor) \
         or the container's security profile forbids it"
    )]
    KernelForbids { what: String, error: String },
    /// BPF maps and programs are charged to the memory cgroup of the process creating them.
    #[error(
        "{what}: the kernel had no memory for it ({error}): BPF maps and programs are charged \
         to gomemtrace's memory cgroup; raise its memory limit"
    )]
    KernelOutOfMemory { what: String, error: String },
    #[error("kernel lacks {what}: {why}")]
    KernelUnsupported { what: String, why: String },
    #[error("cannot launch {command}: {reason}")]
    Launch { command: String, reason: String },
    #[error("{what}: {reason}")]
    BadArgument { what: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// `gomemtrace numa` on a machine where no access can be measured as remote.
    #[error("NUMA: not available ({why})")]
    NumaUnavailable { why: String },
}

impl UserError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            UserError::NoSuchProcess { .. } | UserError::TargetVanished { .. } => 3,
            UserError::NotSupported { .. } => 4,
            UserError::NotPermitted { .. }
            | UserError::NoPtraceAccess { .. }
            | UserError::KernelForbids { .. } => 5,
            UserError::KernelOutOfMemory { .. } => 9,
            UserError::KernelUnsupported { .. } => 6,
            UserError::Launch { .. } => 1,
            // As clap's own usage errors.
            UserError::BadArgument { .. } => 2,
            UserError::Listen { .. } => 8,
            UserError::NumaUnavailable { .. } => 7,
        })
    }
}
