//! Where gomemtrace puts its breakpoints in a target, and whether the target's code there
//! is the file's again: the oracle that no probe was left behind.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::{gomemtrace_command, run};

/// The probe points gomemtrace attaches to `exe` in `mode` (`auto` or `exact`), as
/// `gomemtrace inspect` lists them: (vaddr, file offset).
pub fn probe_points(exe: &Path, mode: &str) -> Result<Vec<(u64, u64)>> {
    let mut cmd = gomemtrace_command()?;
    cmd.args(["inspect", "--format", "json"]).arg(exe);
    let out = run(cmd, Duration::from_secs(30))?;
    ensure!(out.code() == 0, "inspect: {}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let probes = json["allocation"][mode]["probes"]
        .as_array()
        .with_context(|| format!("no allocation.{mode}.probes in {}", out.stdout))?;
    probes
        .iter()
        .map(|p| {
            Ok((
                p["vaddr"].as_u64().context("vaddr")?,
                p["file_offset"].as_u64().context("file_offset")?,
            ))
        })
        .collect()
}

/// The probe points of both allocation plans (`auto` and `exact`), sorted, once each.
pub fn all_probe_points(exe: &Path) -> Result<Vec<(u64, u64)>> {
    let mut points = probe_points(exe, "auto")?;
    points.extend(probe_points(exe, "exact")?);
    points.sort_unstable();
    points.dedup();
    ensure!(!points.is_empty(), "no probe points listed");
    Ok(points)
}

/// The byte at each probe point, in the running process (non-PIE: the vaddr is the
/// address) and in the file.
pub fn code_bytes(pid: u32, exe: &Path, points: &[(u64, u64)]) -> Result<(Vec<u8>, Vec<u8>)> {
    let file = std::fs::read(exe)?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let (mut live, mut on_disk) = (Vec::new(), Vec::new());
    for &(vaddr, offset) in points {
        let mut byte = [0u8];
        mem.seek(SeekFrom::Start(vaddr))?;
        mem.read_exact(&mut byte)
            .with_context(|| format!("read /proc/{pid}/mem at {vaddr:#x}"))?;
        live.push(byte[0]);
        on_disk.push(file[offset as usize]);
    }
    Ok((live, on_disk))
}
