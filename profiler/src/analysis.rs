//! What the target's executable tells us before anything is attached: that it is a Go
//! binary gomemtrace can trace (amd64, Go ≥ 1.18), the runtime's struct
//! offsets, and where each probe goes. Refusals are [`Refused`] (exit 4, as
//! [`UserError::NotSupported`]), each with its [`Unsupported`] reason.

use std::sync::Arc;

use gomemtrace_gobin::{
    Arch, FileBytes, Function, GoBinary, GoVersion, offsets, offsets::RuntimeOffsets,
};

use crate::error::UserError;

/// Why an executable cannot be traced (in the mode asked for): one variant per cause, each
/// with a fixed [`label`](Self::label) for the agent's metrics.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unsupported {
    /// gobin cannot read it as a Go binary gomemtrace traces; `message` is gobin's,
    /// without the file's name.
    #[error("{message}")]
    Binary {
        message: String,
        error: Arc<gomemtrace_gobin::Error>,
    },
    #[error("unsupported architecture {0:?} (gomemtrace traces amd64)")]
    Architecture(Arch),
    #[error("unsupported Go version {0} (gomemtrace needs Go 1.18 or newer)")]
    GoVersion(GoVersion),
    #[error("unsupported Go version {0} without DWARF: no verified runtime layout")]
    NoRuntimeLayout(GoVersion),
    #[error("no code for {0}")]
    NoCode(String),
    #[error("{0} is outside any loadable segment")]
    OutsideSegments(String),
    #[error("runtime-sampled mode unavailable: {0}")]
    NoSampler(SamplerError),
    #[error("no allocation entry point (runtime.mallocgc) found")]
    NoAllocationEntryPoint,
}

impl Unsupported {
    /// The reason's name: one fixed snake_case name per cause (a metric label value).
    pub fn label(&self) -> &'static str {
        match self {
            Unsupported::Binary { error, .. } => match **error {
                gomemtrace_gobin::Error::Io { .. } => "executable_unreadable",
                gomemtrace_gobin::Error::NotElf { .. }
                | gomemtrace_gobin::Error::Truncated { .. }
                | gomemtrace_gobin::Error::NotGo { .. } => "not_go",
                gomemtrace_gobin::Error::UnsupportedVersion { .. } => "unsupported_go_version",
                gomemtrace_gobin::Error::Malformed { .. } => "malformed_binary",
            },
            Unsupported::Architecture(_) => "unsupported_architecture",
            Unsupported::GoVersion(_) => "unsupported_go_version",
            Unsupported::NoRuntimeLayout(_) => "no_runtime_layout",
            Unsupported::NoCode(_) => "no_function_code",
            Unsupported::OutsideSegments(_) => "function_outside_segments",
            Unsupported::NoSampler(_) => "no_sampler",
            Unsupported::NoAllocationEntryPoint => "no_allocation_entry_point",
        }
    }

    /// Whether the file is no Go program at all (rather than one gomemtrace cannot trace).
    pub fn is_not_go(&self) -> bool {
        self.label() == "not_go"
    }
}

/// An executable gomemtrace will not trace: its name and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Refused {
    pub path: String,
    pub reason: Unsupported,
}

impl Refused {
    /// gobin's refusal of the file at `exe_path`.
    pub fn binary(exe_path: &str, e: gomemtrace_gobin::Error) -> Self {
        // The error names the file; the refusal names it once, in front.
        let message = e.to_string();
        refused(
            exe_path,
            Unsupported::Binary {
                message: message
                    .strip_prefix(&format!("{exe_path}: "))
                    .unwrap_or(&message)
                    .to_string(),
                error: Arc::new(e),
            },
        )
    }
}

/// Why the runtime's heap sampler cannot be probed (runtime-sampled mode).
#[derive(Clone, Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("sampler layout not verified for {0}")]
    Unverified(GoVersion),
    #[error(
        "the runtime's heap sampler is compiled out ({0} is not linked: the program imports neither runtime/pprof nor net/http/pprof)"
    )]
    CompiledOut(&'static str),
    #[error("no {0} in the binary")]
    Missing(&'static str),
    #[error("runtime.MemProfileRate not found")]
    NoRate,
}

/// Oldest Go traced: 1.17 brought the register ABI (arguments in RAX, RBX, ...; g in
/// R14), 1.18 the `.gopclntab` layout that gobin reads.
const OLDEST_GO: GoVersion = GoVersion::new(1, 18, 0);

/// A Go executable that gomemtrace can trace.
pub struct GoTarget {
    pub binary: GoBinary,
    /// `g`/`m` field offsets: from DWARF, else the verified table of the Go release.
    pub offsets: RuntimeOffsets,
    /// Where `offsets` came from: `dwarf` or the per-release `table`.
    pub offsets_source: &'static str,
    exe_path: String,
}

/// One uprobe of a plan: the program, where it goes (a file offset of the executable,
/// and the same place as a link-time virtual address) and the function there (for
/// reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    pub program: &'static str,
    pub file_offset: u64,
    /// The probed instruction's ELF virtual address as in the file (for PIE: before
    /// relocation).
    pub vaddr: u64,
    pub function: String,
}

impl GoTarget {
    /// Checks `data`, the executable's bytes; `exe_path` names it in errors.
    #[cfg(test)]
    pub fn from_file_bytes(data: &[u8], exe_path: &str) -> Result<Self, Refused> {
        Self::from_file(FileBytes::from(data.to_vec()), exe_path)
    }

    /// Checks the executable `data` (read or mapped; kept by the binary); `exe_path`
    /// names it in errors.
    pub fn from_file(data: FileBytes, exe_path: &str) -> Result<Self, Refused> {
        let binary =
            GoBinary::from_file_bytes(data, exe_path).map_err(|e| Refused::binary(exe_path, e))?;
        let offsets = Self::runtime_offsets(&binary, binary.file_data())
            .map_err(|reason| refused(exe_path, reason))?;
        Ok(Self::new(binary, offsets, exe_path))
    }

    /// The first step of [`Self::from_file`]: `data` read as a Go binary, of any
    /// architecture and release.
    pub fn read_binary(data: &[u8], exe_path: &str) -> Result<GoBinary, Refused> {
        GoBinary::from_bytes_named(data.to_vec(), exe_path)
            .map_err(|e| Refused::binary(exe_path, e))
    }

    /// The second step: whether gomemtrace traces `binary` (whose bytes are `data`), and
    /// then its runtime offsets and where they came from (`dwarf` or `table`).
    pub fn runtime_offsets(
        binary: &GoBinary,
        data: &[u8],
    ) -> Result<(RuntimeOffsets, &'static str), Unsupported> {
        if binary.arch() != Arch::Amd64 {
            return Err(Unsupported::Architecture(binary.arch()));
        }
        let version = binary.version();
        if version < OLDEST_GO {
            return Err(Unsupported::GoVersion(version));
        }
        match offsets::from_dwarf(data).ok().flatten() {
            Some(dwarf) => Ok((dwarf, "dwarf")),
            None => offsets::for_version(version)
                .map(|table| (table, "table"))
                .ok_or(Unsupported::NoRuntimeLayout(version)),
        }
    }

    /// A target of `binary` whose [`Self::runtime_offsets`] are `offsets`.
    pub fn new(
        binary: GoBinary,
        (offsets, offsets_source): (RuntimeOffsets, &'static str),
        exe_path: &str,
    ) -> Self {
        Self {
            binary,
            offsets,
            offsets_source,
            exe_path: exe_path.to_string(),
        }
    }

    /// An entry uprobe of `program` on `f`, at [`GoTarget::probe_file_offset`].
    pub fn entry_point(&self, program: &'static str, f: &Function) -> Result<AttachPoint, Refused> {
        let (vaddr, file_offset) = self.probe_location(f)?;
        Ok(AttachPoint {
            program,
            file_offset,
            vaddr,
            function: f.name.clone(),
        })
    }

    /// File offset for an entry uprobe on `f`: just after its stack check, where the
    /// arguments are still in registers and a stack growth does not fire it twice.
    pub fn probe_file_offset(&self, f: &Function) -> Result<u64, Refused> {
        Ok(self.probe_location(f)?.1)
    }

    /// [`Self::probe_file_offset`]'s place as (virtual address, file offset).
    fn probe_location(&self, f: &Function) -> Result<(u64, u64), Refused> {
        let code = self
            .binary
            .function_code(f)
            .ok_or_else(|| self.refused(Unsupported::NoCode(f.name.clone())))?;
        let vaddr = gomemtrace_gobin::disasm::attach_offset(code, f.entry);
        let file_offset = self
            .binary
            .vaddr_to_file_offset(vaddr)
            .ok_or_else(|| self.refused(Unsupported::OutsideSegments(f.name.clone())))?;
        Ok((vaddr, file_offset))
    }

    /// The allocation probes' settings common to every mode: the goroutine offsets (its id,
    /// start function and stack bounds).
    pub fn process_config(&self) -> gomemtrace_common::ProcessConfig {
        gomemtrace_common::ProcessConfig {
            g_goid: self.offsets.g_goid,
            g_m: self.offsets.g_m,
            m_curg: self.offsets.m_curg,
            g_startpc: self.offsets.g_startpc,
            g_stack_lo: self.offsets.g_stack_lo,
            g_stack_hi: self.offsets.g_stack_hi,
            ..Default::default()
        }
    }

    /// A refusal of this executable worded by the caller (the CLI's options, the GC and
    /// stack probes).
    pub fn refuse(&self, reason: String) -> UserError {
        UserError::NotSupported {
            path: self.exe_path.clone(),
            reason,
        }
    }

    /// A refusal of this executable for `reason`.
    pub fn refused(&self, reason: Unsupported) -> Refused {
        refused(&self.exe_path, reason)
    }
}

/// The runtime's own heap sampler, where the binary links it: probed in runtime-sampled
/// mode.
pub struct Sampler {
    /// `runtime.setprofilebucket`: attaches each recorded sample to its object.
    pub set_profile_bucket: Function,
    /// `runtime.freeSpecial`: frees the profile record of a sampled object that died.
    pub free_special: Function,
    /// File address of `runtime.MemProfileRate`.
    pub rate_vaddr: u64,
    /// `ProcessConfig` fields of this Go release.
    pub bucket_size_offset: u32,
    pub special_kind_offset: u32,
    pub special_kind_profile: u32,
}

/// `runtime.MemProfileRate`'s static value in the file: `512 * 1024`, or 0 where Go
/// computes it at init (1.19: `defaultMemProfileRate(512 * 1024)`). It identifies the
/// variable among the globals `profilealloc` reads in a stripped binary; the other one
/// there, `mcache0`, lives in .bss and has no file contents.
const STATIC_MEM_PROFILE_RATES: [u64; 2] = [512 * 1024, 0];

impl GoTarget {
    /// The heap sampler, or why runtime-sampled mode cannot be used.
    pub fn sampler(&self) -> Result<Sampler, SamplerError> {
        self.sampler_with(false)
    }

    /// As [`Self::sampler`]; `compiled_out_ok` accepts a binary whose profile reader is not
    /// linked (`--enable-runtime-sampling` turns its sampler on).
    pub fn sampler_with(&self, compiled_out_ok: bool) -> Result<Sampler, SamplerError> {
        let b = &self.binary;
        let (major, minor) = b.version().release();
        if major != 1 || minor > 27 {
            return Err(SamplerError::Unverified(b.version()));
        }
        // The linker compiles the sampler out unless the profile reader is reachable.
        let reader = if minor >= 23 {
            "runtime.memProfileInternal"
        } else {
            "runtime.MemProfile"
        };
        if !compiled_out_ok && b.function(reader).is_none() {
            return Err(SamplerError::CompiledOut(reader));
        }
        let function =
            |name: &'static str| b.function(name).cloned().ok_or(SamplerError::Missing(name));
        let set_profile_bucket = function("runtime.setprofilebucket")?;
        let free_special = function("runtime.freeSpecial")?;
        let rate_vaddr = self.mem_profile_rate_vaddr().ok_or(SamplerError::NoRate)?;
        Ok(Sampler {
            set_profile_bucket,
            free_special,
            rate_vaddr,
            // runtime.bucket: next, allnext, typ, hash, then size (1.19–1.27, mprof.go).
            bucket_size_offset: 0x20,
            // runtime.special.kind moved when the struct grew (1.24); the profile kind's
            // value moved as kinds were added before it (mheap.go).
            special_kind_offset: if minor >= 24 { 0x10 } else { 0xa },
            special_kind_profile: match minor {
                ..=22 => 2,
                23 | 24 => 3,
                _ => 4,
            },
        })
    }

    /// `runtime.MemProfileRate`: from `.symtab`, else the global that `profilealloc` loads
    /// whose static value is the default rate.
    fn mem_profile_rate_vaddr(&self) -> Option<u64> {
        let b = &self.binary;
        if let Some(vaddr) = b.symbol("runtime.MemProfileRate") {
            return Some(vaddr);
        }
        let profilealloc = b.function("runtime.profilealloc")?;
        let code = b.function_code(profilealloc)?;
        let loads = gomemtrace_gobin::disasm::rip_relative_loads(code, profilealloc.entry);
        loads
            .iter()
            .copied()
            .find(|&target| {
                b.read_vaddr(target, 8)
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_le_bytes)
                    .is_some_and(|value| STATIC_MEM_PROFILE_RATES.contains(&value))
            })
            // Go 1.19 keeps both globals in .noptrbss: there the rate is the second global
            // read, after the inlined getMCache's mcache0 (as in every release checked by
            // tests/tests/sampled.rs).
            .or_else(|| loads.get(1).copied())
    }
}

fn refused(exe_path: &str, reason: Unsupported) -> Refused {
    Refused {
        path: exe_path.to_string(),
        reason,
    }
}

/// A refusal of an executable is the CLI's "not supported" (exit 4), in its words.
impl From<Refused> for UserError {
    fn from(refused: Refused) -> Self {
        UserError::NotSupported {
            path: refused.path,
            reason: refused.reason.to_string(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

    /// A Go toolchain installed by scripts/setup.sh, if any.
    fn go() -> Option<PathBuf> {
        let cache = std::env::var_os("GOMEMTRACE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/gomemtrace")
            });
        let go = cache.join("go/1.25/bin/go");
        go.exists().then_some(go)
    }

    /// A small Go program built for `goarch` with the cached Go 1.25, if installed.
    pub(crate) fn build(goarch: &str) -> Option<Vec<u8>> {
        let go = go()?;
        // Tests run in parallel threads of one process: each build gets its own directory.
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "gomemtrace-analysis-{goarch}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("main.go"),
            "package main\n\nfunc main() { println(len(make([]byte, 10))) }\n",
        )
        .unwrap();
        std::fs::write(dir.join("go.mod"), "module m\n\ngo 1.19\n").unwrap();
        let status = Command::new(go)
            .args(["build", "-o", "prog", "."])
            .current_dir(&dir)
            .env("GOARCH", goarch)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .status()
            .unwrap();
        assert!(status.success(), "go build for {goarch}");
        let data = std::fs::read(dir.join("prog")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Some(data)
    }

    #[test]
    fn refuses_non_amd64_and_accepts_amd64() {
        let (Some(arm64), Some(amd64)) = (build("arm64"), build("amd64")) else {
            eprintln!("SKIP: no Go toolchain (scripts/setup.sh installs it)");
            return;
        };
        let refused = GoTarget::from_file_bytes(&arm64, "prog-arm64")
            .err()
            .unwrap();
        assert_eq!(refused.reason.label(), "unsupported_architecture");
        let err = UserError::from(refused);
        assert!(matches!(err, UserError::NotSupported { .. }));
        assert!(
            err.to_string().contains("unsupported architecture"),
            "{err}"
        );
        let ok = GoTarget::from_file_bytes(&amd64, "prog").unwrap();
        assert_eq!(ok.binary.version().release(), (1, 25));
    }

    #[test]
    fn refuses_go_before_the_register_abi() {
        let Some(mut amd64) = build("amd64") else {
            eprintln!("SKIP: no Go toolchain (scripts/setup.sh installs it)");
            return;
        };
        // Rewrite every "go1.25." (buildinfo, runtime.buildVersion) as "go1.16.": same length.
        let mut rewritten = 0;
        for at in 0..amd64.len().saturating_sub(7) {
            if &amd64[at..at + 7] == b"go1.25." {
                amd64[at..at + 7].copy_from_slice(b"go1.16.");
                rewritten += 1;
            }
        }
        assert!(rewritten > 0, "no version string found");
        let refused = GoTarget::from_file_bytes(&amd64, "old").err().unwrap();
        // gobin refuses its pclntab before the register-ABI check: the same reason.
        assert_eq!(
            refused.reason.label(),
            "unsupported_go_version",
            "{refused}"
        );
        let err = UserError::from(refused);
        assert!(matches!(err, UserError::NotSupported { .. }), "{err}");
    }

    #[test]
    fn refuses_non_go_executables() {
        let data = std::fs::read("/bin/true").unwrap();
        let err = GoTarget::from_file_bytes(&data, "/bin/true").err().unwrap();
        assert!(err.to_string().contains("not a Go binary"), "{err}");
        assert!(err.reason.is_not_go(), "{err}");
    }
}
