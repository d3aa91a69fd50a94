//! The static (musl) gomemtrace binary that the agent image ships `FROM scratch`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{cargo, run, target_dir};

/// The target whose binaries link nothing at run time (musl's libc is linked in).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds `gomemtrace` for [`STATIC_TARGET`] in release mode (incremental in the cargo target
/// directory), checks that it is static and runs (`--version`), and returns its path.
pub fn static_gomemtrace() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "-p",
        "gomemtrace",
        "--release",
        "--target",
        STATIC_TARGET,
    ]))?;
    let binary = target_dir().join(STATIC_TARGET).join("release/gomemtrace");
    ensure_static(&binary)?;
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("run {}", binary.display()))?;
    ensure!(
        version.status.success() && version.stdout.starts_with(b"gomemtrace "),
        "{} --version failed: {}",
        binary.display(),
        String::from_utf8_lossy(&version.stderr)
    );
    Ok(binary)
}

/// Fails unless `binary` is an x86-64 ELF without a program interpreter (PT_INTERP): a
/// dynamically linked one would not start in an image that has no loader and no libc.
fn ensure_static(binary: &Path) -> anyhow::Result<()> {
    let elf = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    if let Some(interpreter) = program_interpreter(&elf)
        .with_context(|| format!("{} is not a 64-bit ELF", binary.display()))?
    {
        bail!(
            "{} is dynamically linked (interpreter {interpreter})",
            binary.display()
        );
    }
    Ok(())
}

/// The PT_INTERP path of a little-endian ELF64 image, `None` when it has none.
fn program_interpreter(elf: &[u8]) -> anyhow::Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    ensure!(elf.get(..4) == Some(b"\x7fELF".as_slice()), "no ELF magic");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not ELF64 little-endian"
    );
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        let bytes = elf.get(at..at + 2).context("truncated ELF header")?;
        Ok(u16::from_le_bytes(bytes.try_into()?))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        let bytes = elf.get(at..at + 4).context("truncated program header")?;
        Ok(u32::from_le_bytes(bytes.try_into()?))
    };
    let u64_at = |at: usize| -> anyhow::Result<u64> {
        let bytes = elf.get(at..at + 8).context("truncated ELF")?;
        Ok(u64::from_le_bytes(bytes.try_into()?))
    };
    let phoff = usize::try_from(u64_at(0x20)?)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for header in (0..phnum).map(|i| phoff + i * phentsize) {
        if u32_at(header)? == PT_INTERP {
            let offset = usize::try_from(u64_at(header + 8)?)?;
            let size = usize::try_from(u64_at(header + 32)?)?;
            let path = elf
                .get(offset..offset + size)
                .context("PT_INTERP outside the file")?;
            return Ok(Some(
                String::from_utf8_lossy(path)
                    .trim_end_matches('\0')
                    .to_string(),
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oracle is the host's own dynamically linked cargo and a musl build: the check
    /// must tell them apart.
    #[test]
    fn a_dynamically_linked_executable_has_an_interpreter() {
        let elf = std::fs::read(env!("CARGO")).unwrap();
        let interpreter = program_interpreter(&elf).unwrap();
        assert!(
            interpreter
                .as_deref()
                .is_some_and(|p| p.contains("ld-linux")),
            "{interpreter:?}"
        );
    }

    #[test]
    fn non_elf_input_is_an_error() {
        assert!(program_interpreter(b"#!/bin/sh\n").is_err());
    }
}
