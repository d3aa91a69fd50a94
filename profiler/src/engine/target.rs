//! The process to trace: an existing PID, or a command launched stopped at its first
//! instruction (ptrace stop after exec) so that probes are in place before it runs.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        ptrace,
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::error::UserError;

pub struct Target {
    pub pid: u32,
    /// `/proc/PID/exe`: opens the exact file the process runs, even in another mount
    /// namespace or after it was replaced on disk.
    pub exe_link: PathBuf,
    /// The executable's path as the process sees it, for reports.
    pub exe_path: String,
    /// Set in launch mode: the child, still stopped until [`Target::release`].
    pub child: Option<Child>,
    stopped: bool,
}

impl Target {
    pub fn existing(pid: u32) -> Result<Self, UserError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(UserError::NoSuchProcess { pid });
        }
        let exe_link = proc_dir.join("exe");
        let exe_path = match std::fs::read_link(&exe_link) {
            Ok(path) => path.to_string_lossy().into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A kernel thread or a zombie has no executable.
                return Err(UserError::NotSupported {
                    path: format!("pid {pid}"),
                    reason: "process has no executable (kernel thread or exited)".into(),
                });
            }
            Err(e) => {
                return Err(UserError::NoPtraceAccess {
                    pid,
                    error: e.to_string(),
                });
            }
        };
        Ok(Self {
            pid,
            exe_link,
            exe_path,
            child: None,
            stopped: false,
        })
    }

    /// Starts `command` under ptrace so it stops right after `execve`, before its first
    /// instruction. Call [`Target::release`] once probes are attached.
    pub fn launch(command: &[String]) -> Result<Self, UserError> {
        let (program, args) = command.split_first().ok_or_else(|| UserError::Launch {
            command: String::new(),
            reason: "empty command".into(),
        })?;
        // A truncated or non-ELF file is refused before it runs: the kernel would exec a
        // truncated one and kill it with SIGSEGV at its first fault past the end. A file
        // that cannot be found or read is left to the spawn below to report.
        if let Some(path) = resolve_program(program) {
            match gomemtrace_gobin::check_complete(&path) {
                Ok(()) | Err(gomemtrace_gobin::Error::Io { .. }) => {}
                Err(gomemtrace_gobin::Error::Truncated { needed, size, .. }) => {
                    return Err(UserError::NotSupported {
                        path: path.display().to_string(),
                        reason: format!(
                            "truncated or corrupt ELF file: its headers need {needed} bytes, \
                             it has {size}; not launched"
                        ),
                    });
                }
                Err(gomemtrace_gobin::Error::NotElf { reason, .. }) => {
                    return Err(UserError::NotSupported {
                        path: path.display().to_string(),
                        reason: format!(
                            "not an ELF executable ({reason}; a script? launch the Go program \
                             itself); not launched"
                        ),
                    });
                }
                Err(e) => {
                    return Err(UserError::NotSupported {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // ptrace(PTRACE_TRACEME), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().map_err(|e| UserError::Launch {
            command: program.clone(),
            reason: e.to_string(),
        })?;
        let pid = child.id();
        let failed = |reason: String| UserError::Launch {
            command: program.clone(),
            reason,
        };
        match waitpid(Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => {}
            Ok(WaitStatus::Stopped(_, signal)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "it was killed by {signal} while the kernel loaded it (a corrupt executable?)"
                )));
            }
            Ok(WaitStatus::Exited(_, code)) => {
                return Err(failed(format!(
                    "it exited with status {code} before its first instruction"
                )));
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Err(failed(format!(
                    "it was killed by {signal} before its first instruction"
                )));
            }
            Ok(other) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "it did not stop after exec (wait status {other:?})"
                )));
            }
            Err(e) => return Err(failed(format!("waiting for it after exec: {e}"))),
        }
        let mut target = Self::existing(pid)?;
        target.child = Some(child);
        target.stopped = true;
        Ok(target)
    }

    /// Launch mode: lets the stopped target run until it stops itself with SIGSTOP (the
    /// `stop_at_main` probe), passing any other signal on. The target stays under ptrace,
    /// stopped, for [`Target::release`], which suppresses the SIGSTOP. A target that does
    /// not get there within `timeout` is killed (on drop), one that exits is an error.
    pub fn run_until_self_stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(self.stopped, "the target is not stopped under ptrace");
        let pid = Pid::from_raw(self.pid as i32);
        ptrace::cont(pid, None)?;
        let deadline = Instant::now() + timeout;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
                WaitStatus::StillAlive if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                WaitStatus::StillAlive => {
                    anyhow::bail!("the target did not reach runtime.main within {timeout:?}")
                }
                WaitStatus::Stopped(_, Signal::SIGSTOP) => return Ok(()),
                WaitStatus::Stopped(_, signal) => ptrace::cont(pid, Some(signal))?,
                WaitStatus::Exited(_, code) => {
                    self.stopped = false;
                    anyhow::bail!("the target exited (status {code}) before runtime.main")
                }
                WaitStatus::Signaled(_, signal, _) => {
                    self.stopped = false;
                    anyhow::bail!("the target was killed by {signal} before runtime.main")
                }
                _ => ptrace::cont(pid, None)?,
            }
        }
    }

    /// Lets a launched target run.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.stopped) {
            ptrace::detach(Pid::from_raw(self.pid as i32), None)?;
        }
        Ok(())
    }

    pub fn is_alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process_alive(self.pid),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // A launched target we could not trace must not stay stopped forever.
        if self.stopped
            && let Some(child) = &mut self.child
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` exists and has not exited (a zombie still has /proc/PID; its
/// state letter says it is gone).
pub fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// The file `execvp` would run for `program`: a path as given, else the first executable
/// of that name on `PATH`.
fn resolve_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
