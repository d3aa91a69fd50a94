//! The kernel refusing gomemtrace, on demand: a seccomp filter installed in the child
//! before it execs makes chosen system calls fail with a chosen errno, as a container's
//! seccomp profile, a security module or a full memory cgroup would.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// `bpf(2)` commands (the first argument), from `include/uapi/linux/bpf.h`.
pub const BPF_MAP_CREATE: u32 = 0;
pub const BPF_PROG_LOAD: u32 = 5;
pub const BPF_LINK_CREATE: u32 = 28;

/// One system call to refuse: `syscall` (its x86-64 number), only when its first argument
/// is `first_arg` if given, failing with `errno`.
#[derive(Clone, Copy, Debug)]
pub struct Refusal {
    pub syscall: u32,
    pub first_arg: Option<u32>,
    pub errno: i32,
}

impl Refusal {
    /// `bpf(cmd, …)` fails with `errno`.
    pub fn bpf(cmd: u32, errno: i32) -> Self {
        Self {
            syscall: libc::SYS_bpf as u32,
            first_arg: Some(cmd),
            errno,
        }
    }

    /// `perf_event_open(…)` (how a uprobe is created) fails with `errno`.
    pub fn perf_event_open(errno: i32) -> Self {
        Self {
            syscall: libc::SYS_perf_event_open as u32,
            first_arg: None,
            errno,
        }
    }
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
// Offsets in struct seccomp_data: nr, arch, then args[0] (low half, little-endian) at 16.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0: u32 = 16;
const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The classic-BPF seccomp program for `refusals`: every other call is allowed.
fn program(refusals: &[Refusal]) -> Vec<libc::sock_filter> {
    let allow = op(RETURN, 0, 0, SECCOMP_RET_ALLOW);
    let mut prog = vec![
        op(LOAD_WORD, 0, 0, OFFSET_ARCH),
        op(JUMP_IF_EQUAL, 1, 0, AUDIT_ARCH_X86_64),
        allow,
    ];
    for refusal in refusals {
        let refuse = op(RETURN, 0, 0, SECCOMP_RET_ERRNO | refusal.errno as u32);
        prog.push(op(LOAD_WORD, 0, 0, OFFSET_NR));
        match refusal.first_arg {
            // No match skips to the next refusal's first instruction.
            Some(arg) => prog.extend([
                op(JUMP_IF_EQUAL, 0, 3, refusal.syscall),
                op(LOAD_WORD, 0, 0, OFFSET_ARG0),
                op(JUMP_IF_EQUAL, 0, 1, arg),
                refuse,
            ]),
            None => prog.extend([op(JUMP_IF_EQUAL, 0, 1, refusal.syscall), refuse]),
        }
    }
    prog.push(allow);
    prog
}

/// Makes `cmd`'s process meet `refusals` from its first instruction on.
pub fn refuse(cmd: &mut Command, refusals: &[Refusal]) {
    let mut prog = program(refusals);
    // SAFETY: the closure runs in the forked child before exec; it only makes two prctl
    // calls on memory the closure owns (no allocation, no lock), as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_mut_ptr(),
            };
            // A filter may be installed without CAP_SYS_ADMIN once no new privileges can
            // be gained; root keeps the capabilities it has.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter works: a child refused `getcwd` reports the errno instead of its
    /// directory, and a child refused something else gets its directory.
    #[test]
    fn a_refused_call_fails_with_the_errno_and_others_run() {
        let script = "import os, sys\ntry:\n print(os.getcwd())\nexcept OSError as e:\n print('errno', e.errno)";
        let refused = |refusals: &[Refusal]| {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", script]);
            refuse(&mut cmd, refusals);
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        let getcwd = Refusal {
            syscall: libc::SYS_getcwd as u32,
            first_arg: None,
            errno: libc::EACCES,
        };
        assert_eq!(refused(&[getcwd]).trim(), format!("errno {}", libc::EACCES));
        let other = Refusal::bpf(BPF_PROG_LOAD, libc::EPERM);
        let out = refused(&[other]);
        assert!(out.starts_with('/'), "{out}");
    }
}
