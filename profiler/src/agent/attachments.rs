//! The processes traced now: one loaded probe object serves them all (its maps are keyed
//! by pid), each process has its own uprobe links and map entries, removed when it exits.

use std::{collections::HashMap, sync::Arc, time::Instant};

use gomemtrace_common::{PROCESS_FLAG_NO_GOID, RT_FLAG_TOTALS_ONLY, RtConfig};
use gomemtrace_gobin::{FileBytes, GoBinary, allocstats::AllocStatsLayout, offsets};
use gomemtrace_report::model::Mode;

use crate::{
    agent::{
        discovery::{Exe, ExeId},
        goroutines::GoroutineLayout,
        metadata::Labels,
    },
    alloc::plan::ModeRequest,
    alloc::plan::{self, Analysed},
    analysis::{GoTarget, Unsupported},
    bpf::{AllocProbes, Bpf},
    engine::{ExeMappings, MappingNotFound},
};

/// A traced process.
pub struct Process {
    pub pid: u32,
    pub exe: Exe,
    pub labels: Labels,
    pub analysis: Arc<Analysed>,
    pub runtime: Arc<RuntimeLayout>,
    /// Runtime address − file address of the executable (PIE), where its mapping was
    /// found.
    pub bias: Option<u64>,
    pub attached_at: Instant,
}

/// What the GC, goroutine, stack and NUMA metrics need of an executable, worked out from
/// the same read of it as the allocation probes; each part `None` where the binary does
/// not give it.
pub struct RuntimeLayout {
    /// The stack-copy probe: its settings and the file offset of `runtime.copystack`.
    pub copystack: Option<(RtConfig, u64)>,
    pub goroutines: Option<GoroutineLayout>,
    /// `g`/`m` field offsets (DWARF, else the verified table).
    pub offsets: offsets::RuntimeOffsets,
    /// The GC probes' plan, `None` where they cannot be placed.
    pub gc: Option<Arc<crate::gc::Plan>>,
    /// Where the runtime keeps its allocation counters.
    pub alloc_stats: Option<gomemtrace_gobin::allocstats::AllocStatsLayout>,
}

impl Process {
    pub fn binary(&self) -> &GoBinary {
        &self.analysis.binary
    }

    pub fn mode(&self) -> Mode {
        self.analysis.mode
    }
}

/// Analyses kept for executables no traced process runs (a restart reuses them).
const KEPT_UNUSED: usize = 8;

/// Puts `id` last in `unused` (oldest first) and returns what falls off beyond `keep`.
fn release(unused: &mut std::collections::VecDeque<ExeId>, id: ExeId, keep: usize) -> Vec<ExeId> {
    unused.retain(|&u| u != id);
    unused.push_back(id);
    let excess = unused.len().saturating_sub(keep);
    unused.drain(..excess).collect()
}

/// What an executable's analysis gives every process of it.
type Verdict = (Arc<Analysed>, Arc<RuntimeLayout>);

/// Why a process is not traced.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Skip {
    /// Not a Go program, or its executable could not be read (it exited): not counted,
    /// most processes.
    #[error("not a Go program")]
    NotGo,
    /// A Go program this agent cannot trace in the asked mode.
    #[error("{0}")]
    Unsupported(Unsupported),
    /// --max-processes reached.
    #[error("--max-processes ({0}) reached")]
    Cap(usize),
    /// The uprobes could not be attached (it may have exited meanwhile).
    #[error("{0}")]
    AttachFailed(AttachError),
}

/// Why the probes of a process that can be traced were not attached.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    NoMapping(#[from] MappingNotFound),
    #[error("attaching the probes: {0:#}")]
    Probes(Arc<anyhow::Error>),
}

impl Skip {
    /// The `reason` label of the count of processes not traced: a fixed snake_case name
    /// per cause.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::NotGo => "not_go",
            Skip::Unsupported(why) => why.label(),
            Skip::Cap(_) => "max_processes",
            Skip::AttachFailed(_) => "attach_failed",
        }
    }
}

pub struct Attachments {
    pub probes: AllocProbes,
    pub processes: HashMap<u32, Arc<Process>>,
    /// Per executable: its analysis, or why it is skipped. Bounded by the executables
    /// seen on the host.
    verdicts: HashMap<ExeId, Result<Verdict, Skip>>,
    /// Analysed executables no traced process runs now, oldest first: their analyses
    /// (a copy of the executable each) are kept for [`KEPT_UNUSED`] of them, so that a
    /// node running ever new binaries does not grow the agent.
    unused: std::collections::VecDeque<ExeId>,
    mode: ModeRequest,
    max_processes: usize,
}

impl Attachments {
    pub fn new(bpf: &Bpf, mode: ModeRequest, max_processes: usize) -> anyhow::Result<Self> {
        Ok(Self {
            probes: AllocProbes::new(bpf),
            processes: HashMap::new(),
            verdicts: HashMap::new(),
            unused: std::collections::VecDeque::new(),
            mode,
            max_processes,
        })
    }

    /// Whether `exe` is a Go program (analysed once per executable).
    pub fn is_go(&mut self, exe: &Exe) -> bool {
        !matches!(self.verdict(exe), Err(Skip::NotGo))
    }

    fn verdict(&mut self, exe: &Exe) -> Result<Verdict, Skip> {
        match self.verdicts.get(&exe.id) {
            Some(verdict) => verdict.clone(),
            None => {
                let verdict = analyse(exe, self.mode).map(|(a, r)| (Arc::new(a), Arc::new(r)));
                self.verdicts.insert(exe.id, verdict.clone());
                if verdict.is_ok() {
                    // Unused until a process of it is attached (it may be filtered out).
                    self.release(exe.id);
                }
                verdict
            }
        }
    }

    /// Attaches to `pid` (its executable `exe`, filtered already) unless skipped.
    pub fn attach(&mut self, pid: u32, exe: Exe, labels: Labels) -> Result<Arc<Process>, Skip> {
        if let Some(process) = self.processes.get(&pid) {
            return Ok(process.clone());
        }
        if self.processes.len() >= self.max_processes {
            return Err(Skip::Cap(self.max_processes));
        }
        let (analysis, runtime) = self.verdict(&exe)?;
        self.unused.retain(|&u| u != exe.id);
        let mut config = analysis.config;
        config.flags |= PROCESS_FLAG_NO_GOID;
        let bias = ExeMappings::with_inode(pid, exe.id.ino)
            .bias(&analysis.binary)
            .ok();
        if let Some(vaddr) = analysis.rate_vaddr {
            // PIE: the probe reads the rate at its relocated address in this process.
            config.mem_profile_rate_addr = vaddr.wrapping_add(
                bias.ok_or(Skip::AttachFailed(AttachError::NoMapping(MappingNotFound)))?,
            );
        }
        // Duty-cycled processes get their probes window by window (agent::duty).
        let attached = self.probes.configure(pid, config).and_then(|()| {
            if analysis.mode != Mode::Duty {
                for point in &analysis.probes {
                    self.probes
                        .attach(point.program, &exe.link, &[point.file_offset], pid)?;
                }
            }
            Ok(())
        });
        if let Err(e) = attached {
            self.forget(pid);
            return Err(Skip::AttachFailed(AttachError::Probes(Arc::new(e))));
        }
        let process = Arc::new(Process {
            pid,
            exe,
            labels,
            analysis,
            runtime,
            bias,
            attached_at: Instant::now(),
        });
        self.processes.insert(pid, process.clone());
        Ok(process)
    }

    /// Detaches from `pid` and deletes its map entries; returns it if it was traced.
    pub fn detach(&mut self, pid: u32) -> Option<Arc<Process>> {
        let process = self.processes.remove(&pid)?;
        self.forget(pid);
        let id = process.exe.id;
        if !self.processes.values().any(|p| p.exe.id == id) {
            self.release(id);
        }
        Some(process)
    }

    /// `id`'s analysis is no longer used by a traced process: it joins the kept ones,
    /// and the oldest beyond [`KEPT_UNUSED`] go.
    fn release(&mut self, id: ExeId) {
        for evicted in release(&mut self.unused, id, KEPT_UNUSED) {
            self.verdicts.remove(&evicted);
        }
    }

    fn forget(&mut self, pid: u32) {
        let _ = self.probes.detach_pid(pid);
        let _ = self.probes.forget_pid(pid);
    }
}

/// What gomemtrace would attach to `exe` in `mode`, or why it will not.
fn analyse(exe: &Exe, mode: ModeRequest) -> Result<(Analysed, RuntimeLayout), Skip> {
    // Mapped, not read: a node's Go binaries are 50-150 MB each; only what the analysis
    // touches becomes resident, and it is given back once the analysis is done.
    let file = std::fs::File::open(&exe.link).map_err(|_| Skip::NotGo)?;
    let data = FileBytes::map(&file).map_err(|_| Skip::NotGo)?;
    // Cheap refusal first: most executables on a node are not Go programs.
    if !GoBinary::looks_like_go(&data) {
        return Err(Skip::NotGo);
    }
    let go = GoTarget::from_file(data, &exe.path).map_err(|refused| skip(refused.reason))?;
    let runtime = runtime_layout(&go, go.binary.file_data(), &exe.path);
    let config = go.process_config();
    let sampler = go.sampler();
    let analysed =
        plan::plan(go, config, sampler, mode, false).map_err(|refused| skip(refused.reason))?;
    analysed.binary.release_resident();
    Ok((analysed, runtime))
}

/// A refusal of an executable that looks like Go: counted with its reason, unless it is
/// no Go program after all.
fn skip(why: Unsupported) -> Skip {
    if why.is_not_go() {
        Skip::NotGo
    } else {
        Skip::Unsupported(why)
    }
}

fn runtime_layout(go: &GoTarget, data: &[u8], exe_path: &str) -> RuntimeLayout {
    let copystack = crate::rt::config_of(go, data, RT_FLAG_TOTALS_ONLY)
        .ok()
        .and_then(|(config, _)| {
            let f = go.binary.function("runtime.copystack")?;
            Some((config, go.probe_file_offset(f).ok()?))
        });
    let sched =
        offsets::sched_from_dwarf(data).or_else(|| offsets::sched_for_version(go.binary.version()));
    let goroutines = sched.and_then(|o| GoroutineLayout::of(&go.binary, o, go.offsets.g_startpc));
    RuntimeLayout {
        copystack,
        goroutines,
        offsets: go.offsets,
        gc: crate::gc::Plan::of_target(go, data).ok().map(Arc::new),
        alloc_stats: match AllocStatsLayout::locate(&go.binary, data) {
            Ok(layout) => Some(layout),
            Err(why) => {
                eprintln!(
                    "gomemtrace: agent: {}: the runtime's allocation counters: {why}; counting allocations with the probes",
                    exe_path
                );
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> ExeId {
        ExeId {
            dev: 1,
            ino,
            mtime_ns: 0,
        }
    }

    #[test]
    fn each_reason_not_traced_has_its_own_documented_label() {
        use gomemtrace_gobin::{Arch, GoVersion};

        use crate::analysis::SamplerError;

        let go = GoVersion::new(1, 16, 0);
        let binary = |error: gomemtrace_gobin::Error| Unsupported::Binary {
            message: error.to_string(),
            error: Arc::new(error),
        };
        let cases = [
            (Skip::Cap(1), "max_processes"),
            (
                Skip::AttachFailed(AttachError::NoMapping(MappingNotFound)),
                "attach_failed",
            ),
            (
                Skip::AttachFailed(AttachError::Probes(Arc::new(anyhow::anyhow!("EBUSY")))),
                "attach_failed",
            ),
            (
                Skip::Unsupported(Unsupported::NoSampler(SamplerError::CompiledOut(
                    "runtime.MemProfile",
                ))),
                "no_sampler",
            ),
            (
                Skip::Unsupported(Unsupported::GoVersion(go)),
                "unsupported_go_version",
            ),
            (
                Skip::Unsupported(binary(gomemtrace_gobin::Error::UnsupportedVersion {
                    version: "go1.16.5".into(),
                })),
                "unsupported_go_version",
            ),
            (
                Skip::Unsupported(Unsupported::Architecture(Arch::Arm64)),
                "unsupported_architecture",
            ),
            (
                Skip::Unsupported(Unsupported::NoRuntimeLayout(go)),
                "no_runtime_layout",
            ),
            (
                Skip::Unsupported(binary(gomemtrace_gobin::Error::Malformed {
                    what: "pclntab".into(),
                })),
                "malformed_binary",
            ),
            (
                Skip::Unsupported(binary(gomemtrace_gobin::Error::Io {
                    path: "/x".into(),
                    source: std::io::Error::from_raw_os_error(libc::EACCES),
                })),
                "executable_unreadable",
            ),
            (
                Skip::Unsupported(Unsupported::NoCode("runtime.mallocgc".into())),
                "no_function_code",
            ),
            (
                Skip::Unsupported(Unsupported::OutsideSegments("runtime.mallocgc".into())),
                "function_outside_segments",
            ),
            (
                Skip::Unsupported(Unsupported::NoAllocationEntryPoint),
                "no_allocation_entry_point",
            ),
        ];
        for (skip, label) in cases {
            assert_eq!(skip.label(), label, "{skip}");
            assert!(
                crate::agent::metrics::SKIPPED_HELP
                    .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .any(|word| word == label),
                "{label} is not in the metric's help"
            );
        }
        // Not a Go program after all: not counted.
        let not_go = binary(gomemtrace_gobin::Error::NotGo {
            object: "/bin/true".into(),
        });
        assert!(matches!(skip(not_go), Skip::NotGo));
        assert!(matches!(
            skip(Unsupported::GoVersion(go)),
            Skip::Unsupported(_)
        ));
    }

    #[test]
    fn unused_analyses_are_kept_up_to_a_bound_oldest_out_first() {
        let mut unused = std::collections::VecDeque::new();
        for i in 0..3 {
            assert!(release(&mut unused, id(i), 3).is_empty());
        }
        // Released again: it becomes the newest, nothing falls off.
        assert!(release(&mut unused, id(0), 3).is_empty());
        assert_eq!(release(&mut unused, id(3), 3), vec![id(1)]);
        assert_eq!(unused, [id(2), id(0), id(3)]);
    }
}
