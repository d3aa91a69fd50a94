//! What `gomemtrace inspect` reports: the serde form is the json output
//! (`gomemtrace.inspect/v1`, docs/JSON.md), the text renderer reads the same values.

use gomemtrace_report::model::Mode;
use serde::Serialize;

pub const SCHEMA: &str = "gomemtrace.inspect/v1";

/// One executable as gomemtrace sees it, and what it would do with it.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub schema: &'static str,
    /// The path read (`-p`: the process's executable as `/proc/PID/exe` names it).
    pub file: String,
    /// `-p`: the process inspected.
    pub pid: Option<u32>,
    /// The file's size in bytes.
    pub size: u64,
    /// `amd64`, `arm64`, or `elf-machine-N`.
    pub arch: String,
    /// As Go prints it (`go1.25.5`).
    pub go_version: String,
    pub version_source: VersionSource,
    /// Whether the binary has Go build information (`.go.buildinfo` with a version).
    pub buildinfo: bool,
    /// No `.symtab`: function names come from `.gopclntab`.
    pub stripped: bool,
    /// Position-independent (`ET_DYN`).
    pub pie: bool,
    /// The `CGO_ENABLED` build setting; absent where there are no build settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgo: Option<bool>,
    /// The main module's path, from the build information.
    pub main_module: Option<String>,
    /// The build settings in the binary's order; `null`: unknown (no build information).
    pub build_settings: Option<Vec<BuildSetting>>,
    /// Functions known (from `.symtab`, else `.gopclntab`).
    pub functions: usize,
    /// `null`: gomemtrace traces this binary; else why it refuses every view.
    pub refused: Option<String>,
    pub allocation: Allocation,
    pub gc: GcPlan,
    pub offsets: Offsets,
}

/// Where `go_version` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VersionSource {
    /// The build information.
    #[serde(rename = "buildinfo")]
    Buildinfo,
    /// No build information: the runtime's own `runtime.buildVersion` string.
    #[serde(rename = "runtime.buildVersion")]
    RuntimeBuildVersion,
}

impl VersionSource {
    pub fn name(self) -> &'static str {
        match self {
            VersionSource::Buildinfo => "buildinfo",
            VersionSource::RuntimeBuildVersion => "runtime.buildVersion",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildSetting {
    pub key: String,
    pub value: String,
}

/// The allocation profile's plans: the one `--mode auto` (the default) makes, and exact
/// mode's.
#[derive(Clone, Debug, Serialize)]
pub struct Allocation {
    pub auto: AllocPlan,
    pub exact: AllocPlan,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocPlan {
    /// The mode this plan collects in; `null` where it is refused.
    pub mode: Option<Mode>,
    /// Why this mode (auto only).
    pub why: Option<String>,
    /// Every probe, in attach order; empty where refused.
    pub probes: Vec<Probe>,
    /// Why no plan can be made; `null` where there is one.
    pub refused: Option<String>,
}

/// The GC view's (`gomemtrace gctrace`) plan.
#[derive(Clone, Debug, Serialize)]
pub struct GcPlan {
    pub probes: Vec<Probe>,
    pub refused: Option<String>,
}

/// One uprobe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The eBPF program attached.
    pub program: String,
    /// The function probed.
    pub function: String,
    /// The probed instruction's virtual address as in the file (PIE: before relocation).
    pub vaddr: u64,
    /// Its offset in the file: where the uprobe goes.
    pub file_offset: u64,
}

/// The runtime struct offsets the probes read.
#[derive(Clone, Debug, Serialize)]
pub struct Offsets {
    pub fields: Vec<Offset>,
    /// Why some or all are missing; `null` where all were found.
    pub missing: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Offset {
    /// `g.goid`, `g.sched.sp`, ...
    pub field: &'static str,
    /// Bytes from the start of the struct (`g` or `m`).
    pub offset: u32,
    /// `dwarf`: the binary's own DWARF; `table`: gomemtrace's verified table of the release.
    pub source: &'static str,
}
