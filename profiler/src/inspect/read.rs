//! The executable's bytes, read directly (no preflight, no privileges for a file), with
//! bounds: a regular file only (a FIFO or device never blocks or streams forever) and at
//! most [`MAX_SIZE`] bytes.

use std::{fs::OpenOptions, io::Read as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::anyhow;

use super::{Config, Source};
use crate::{engine::Target, error::UserError};

/// The largest executable read: 1 GiB (the biggest Go binaries, with DWARF, are a few
/// hundred MiB).
pub const MAX_SIZE: u64 = 1 << 30;

/// The executable to inspect.
pub struct Executable {
    pub data: Vec<u8>,
    /// Its path as the user gave it, or as `/proc/PID/exe` names it.
    pub path: String,
    pub pid: Option<u32>,
}

/// Reads the file of `args`: `BINARY`, or `-p PID`'s `/proc/PID/exe`.
pub fn executable(args: &Config) -> anyhow::Result<Executable> {
    match &args.source {
        &Source::Pid(pid) => {
            // No such process: exit 3; a kernel thread: 4; a link we may not read: 5.
            let target = Target::existing(pid)?;
            let data = read(&target.exe_link, &target.exe_path).map_err(|e| match e {
                Failed::Io(err) => match err.kind() {
                    // It exited since.
                    std::io::ErrorKind::NotFound => UserError::NoSuchProcess { pid }.into(),
                    std::io::ErrorKind::PermissionDenied => UserError::NoPtraceAccess {
                        pid,
                        error: err.to_string(),
                    }
                    .into(),
                    _ => anyhow!(
                        "pid {pid}: cannot read its executable {}: {err}",
                        target.exe_path
                    ),
                },
                Failed::Refused(user) => user.into(),
            })?;
            Ok(Executable {
                data,
                path: target.exe_path.clone(),
                pid: Some(pid),
            })
        }
        Source::File(path) => {
            let shown = path.display().to_string();
            let data = read(path, &shown).map_err(|e| match e {
                // Exit 1, as a command `gomemtrace -- CMD` cannot find.
                Failed::Io(err) => anyhow!("{shown}: cannot read: {err}"),
                Failed::Refused(user) => user.into(),
            })?;
            Ok(Executable {
                data,
                path: shown,
                pid: None,
            })
        }
    }
}

enum Failed {
    Io(std::io::Error),
    Refused(UserError),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Io(e)
    }
}

fn read(path: &Path, shown: &str) -> Result<Vec<u8>, Failed> {
    let refuse = |reason: String| {
        Failed::Refused(UserError::NotSupported {
            path: shown.to_string(),
            reason,
        })
    };
    // O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused below).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(format!(
            "not a Go binary (not a regular file: {})",
            kind(&meta)
        )));
    }
    let too_large = |size: u64| {
        refuse(format!(
            "{size} bytes: larger than the {} MiB gomemtrace inspect reads",
            MAX_SIZE >> 20
        ))
    };
    if meta.len() > MAX_SIZE {
        return Err(too_large(meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // The size may change while it is read: the bound holds whatever it becomes.
    file.take(MAX_SIZE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_SIZE {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}
