//! `gomemtrace stackgrowth` and `gomemtrace goroutines`: stack copies and the goroutine
//! lifecycle of a Go process, from uprobes on `runtime.copystack` (entry and RETs),
//! `runtime.newproc1` (RET) and `runtime.gdestroy`/`goexit0` (entry)
//! (profiler-ebpf/src/rt.rs, docs/STACKS-GOROUTINES.md).

pub mod goroutines;

pub mod stackgrowth;

use gomemtrace_common::RtConfig;
use gomemtrace_gobin::offsets;
use serde::Serialize;

use crate::{
    analysis::GoTarget,
    bpf::RtProbes,
    engine::{self, End, Target},
    symbolizer::Symbolizer,
};

/// The report's format (stackgrowth, goroutines, numa).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Human-readable report.
    Text,
    /// The full report as one json object.
    Json,
    /// gzipped pprof profile.proto.
    Pprof,
}

/// The settings of the stackgrowth, goroutines and numa views, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub run: engine::TargetConfig,
    pub format: ReportFormat,
    /// Rows per table in the text report.
    pub top: usize,
}

/// A target checked and analysed for these probes.
pub struct Analysed {
    pub go: GoTarget,
    pub config: RtConfig,
    /// Where the offsets came from, for the report.
    pub offsets_source: &'static str,
}

pub fn analyse(target: &Target, flags: u32) -> anyhow::Result<Analysed> {
    let go = engine::read_go_target(target)?;
    let (config, offsets_source) = config_of(&go, go.binary.file_data(), flags)?;
    Ok(Analysed {
        go,
        config,
        offsets_source,
    })
}

/// The probes' settings for `go` (whose file bytes are `data`) and where the `g.sched`
/// offsets came from: `dwarf` or the per-release `table`.
pub fn config_of(
    go: &GoTarget,
    data: &[u8],
    flags: u32,
) -> Result<(RtConfig, &'static str), crate::error::UserError> {
    let (sched, offsets_source) = match offsets::gobuf_from_dwarf(data) {
        Some(s) => (s, "dwarf"),
        None => (
            offsets::gobuf_for_version(go.binary.version()).ok_or_else(|| {
                go.refuse(format!(
                    "no DWARF and no verified g.sched layout for Go {}",
                    go.binary.version()
                ))
            })?,
            "table",
        ),
    };
    let o = go.offsets;
    let config = RtConfig {
        g_goid: o.g_goid,
        g_m: o.g_m,
        m_curg: o.m_curg,
        g_startpc: o.g_startpc,
        g_gopc: o.g_gopc,
        g_stack_lo: o.g_stack_lo,
        g_stack_hi: o.g_stack_hi,
        g_sched_sp: sched.sp,
        g_sched_pc: sched.pc,
        g_sched_bp: sched.bp,
        flags,
        _pad: 0,
    };
    Ok((config, offsets_source))
}

impl Analysed {
    /// Attaches `program` at the entry (after the stack check) of `function`.
    pub fn attach_entry(
        &self,
        probes: &mut RtProbes,
        target: &Target,
        function: &str,
        program: &str,
    ) -> anyhow::Result<()> {
        let f = self
            .go
            .binary
            .function(function)
            .ok_or_else(|| self.go.refuse(format!("no {function} in the binary")))?;
        let offset = self.go.probe_file_offset(f)?;
        probes.attach(program, &target.exe_link, offset, target.pid)
    }

    /// Attaches `program` at every RET of `function`; returns how many.
    pub fn attach_rets(
        &self,
        probes: &mut RtProbes,
        target: &Target,
        function: &str,
        program: &str,
    ) -> anyhow::Result<usize> {
        let binary = &self.go.binary;
        let f = binary
            .function(function)
            .ok_or_else(|| self.go.refuse(format!("no {function} in the binary")))?;
        let code = binary
            .function_code(f)
            .ok_or_else(|| self.go.refuse(format!("no code for {function}")))?;
        let rets = gomemtrace_gobin::disasm::ret_offsets(code, f.entry);
        if rets.is_empty() {
            return Err(self.go.refuse(format!("no RET in {function}")).into());
        }
        for vaddr in &rets {
            let offset = binary.vaddr_to_file_offset(*vaddr).ok_or_else(|| {
                self.go
                    .refuse(format!("{function} is outside any loadable segment"))
            })?;
            probes.attach(program, &target.exe_link, offset, target.pid)?;
        }
        Ok(rets.len())
    }
}

/// What the reports say about the target.
#[derive(Debug, Serialize)]
pub struct TargetJson {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub stripped: bool,
    pub pie: bool,
    /// `launch` (traced from its first instruction) or `pid` (attached while running).
    pub mode: &'static str,
    /// Where `g`'s field offsets came from: `dwarf` or the per-release `table`.
    pub offsets: &'static str,
}

impl TargetJson {
    /// `offsets`: where the `g` offsets the view relies on came from.
    pub fn new(target: &Target, go: &GoTarget, offsets: &'static str) -> Self {
        let b = &go.binary;
        Self {
            pid: target.pid,
            exe: target.exe_path.clone(),
            go_version: b.version_string().to_string(),
            stripped: b.is_stripped(),
            pie: b.is_pie(),
            mode: if target.child.is_some() {
                "launch"
            } else {
                "pid"
            },
            offsets,
        }
    }
}

/// One symbolized frame in the json reports.
#[derive(Clone, Debug, Serialize)]
pub struct FrameJson {
    pub function: String,
    pub file: Option<String>,
    pub line: u32,
}

/// Frames of a stack of PCs (leaf first; `leaf_is_return` says whether `pcs[0]` is a
/// return address too), innermost inlined frame first.
pub fn frames(sym: &mut Symbolizer<'_>, pcs: &[u64], leaf_is_return: bool) -> Vec<FrameJson> {
    let mut out = Vec::new();
    for (i, &pc) in pcs.iter().enumerate() {
        let loc = sym.location(pc, i > 0 || leaf_is_return);
        out.extend(loc.frames.into_iter().map(|f| FrameJson {
            function: f.function,
            file: f.file,
            line: f.line,
        }));
    }
    out
}

/// Human-readable size: `2 KiB`, `1 MiB`, `1536 B`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while unit < UNITS.len() - 1 && value >= 1024 && value.is_multiple_of(1024) {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

/// Human-readable duration from ns.
pub fn duration(ns: u64) -> String {
    match ns {
        n if n < 10_000 => format!("{n} ns"),
        n if n < 10_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 10_000_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n => format!("{:.1} s", n as f64 / 1e9),
    }
}

pub fn end_reason(end: End) -> &'static str {
    match end {
        End::Duration => "duration elapsed",
        End::Interrupted => "interrupted",
        End::TargetExited => "target exited",
    }
}
