//! The allocation probes' plan for one executable: the collection mode and the attach
//! points, from what the binary gives (the heap sampler, the allocation entry points);
//! shared by the CLI's allocation profile, `gomemtrace numa` and the agent.

use gomemtrace_common::{
    ALLOC_PROGRAM, EMPTY_PROGRAM, FREE_SPECIAL_PROGRAM, ProcessConfig, SET_PROFILE_BUCKET_PROGRAM,
};
use gomemtrace_gobin::{GoBinary, allocstats::AllocStatsLayout};
use gomemtrace_report::model::Mode;

use super::{counters::CountersError, points};
use crate::analysis::{AttachPoint, GoTarget, Refused, SamplerError, Unsupported};

/// How allocations are to be collected, as asked for (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeRequest {
    /// `Runtime` where the binary links the heap sampler, else `Duty`.
    Auto,
    /// Probe the runtime's own heap sampler.
    Runtime,
    /// Exact probes attached in short windows under the overhead budget.
    Duty,
    /// Every allocation.
    Exact,
}

/// What the binary tells us before anything is attached.
pub(crate) struct Analysed {
    pub binary: GoBinary,
    pub config: ProcessConfig,
    pub mode: Mode,
    /// (program, file offset, probed function) per probe.
    pub probes: Vec<AttachPoint>,
    /// Runtime-sampled mode: file address of `runtime.MemProfileRate`.
    pub rate_vaddr: Option<u64>,
    /// Mode auto fell back to duty-cycled: why the runtime's sampler cannot be used.
    pub auto_duty_reason: Option<SamplerError>,
    /// `--enable-runtime-sampling` at launch: file offset of the probe on `runtime.main`.
    pub stop_at_main: Option<u64>,
    /// Where `runtime.MemProfileRate` is (file address) in a binary whose heap sampler is
    /// compiled out: the runtime keeps it at 0 there, so another value was written from
    /// outside.
    pub compiled_out_rate_vaddr: Option<u64>,
    /// Where the runtime's allocation counters are, or why they cannot be found.
    pub alloc_stats: Result<AllocStatsLayout, CountersError>,
}

/// The mode and the probes for `go`, given the sampler's availability and the mode asked
/// for: shared by the one-shot CLI and the agent.
pub(crate) fn plan(
    go: GoTarget,
    mut config: ProcessConfig,
    sampler: Result<crate::analysis::Sampler, SamplerError>,
    mode_arg: ModeRequest,
    empty_probe: bool,
) -> Result<Analysed, Refused> {
    let chosen = choose(&go, &mut config, sampler, mode_arg, empty_probe)?;
    Ok(Analysed {
        binary: go.binary,
        config,
        mode: chosen.mode,
        probes: chosen.probes,
        rate_vaddr: chosen.rate_vaddr,
        auto_duty_reason: chosen.auto_duty_reason,
        stop_at_main: None,
        compiled_out_rate_vaddr: None,
        alloc_stats: Err(CountersError::NotLookedFor),
    })
}

/// What [`choose`] decided: the mode and its probes.
pub(crate) struct Chosen {
    pub mode: Mode,
    pub probes: Vec<AttachPoint>,
    /// Runtime-sampled mode: file address of `runtime.MemProfileRate`.
    pub rate_vaddr: Option<u64>,
    /// Mode auto fell back to duty-cycled: why the runtime's sampler cannot be used.
    pub auto_duty_reason: Option<SamplerError>,
}

/// [`plan`]'s decision without taking `go`: the mode and the probes, and the sampler's
/// fields of `config` in runtime-sampled mode (`gomemtrace inspect` asks it for two modes
/// of one binary).
pub(crate) fn choose(
    go: &GoTarget,
    config: &mut ProcessConfig,
    sampler: Result<crate::analysis::Sampler, SamplerError>,
    mode_arg: ModeRequest,
    empty_probe: bool,
) -> Result<Chosen, Refused> {
    let mut auto_duty_reason = None;
    let mode = match (mode_arg, &sampler) {
        // The benchmark's floor replaces the exact probe.
        _ if empty_probe => Mode::Exact,
        (ModeRequest::Exact, _) => Mode::Exact,
        (ModeRequest::Duty, _) => Mode::Duty,
        (ModeRequest::Runtime | ModeRequest::Auto, Ok(_)) => Mode::Runtime,
        (ModeRequest::Runtime, Err(why)) => {
            return Err(go.refused(Unsupported::NoSampler(why.clone())));
        }
        (ModeRequest::Auto, Err(why)) => {
            auto_duty_reason = Some(why.clone());
            Mode::Duty
        }
    };
    let mut probes = Vec::new();
    let mut rate_vaddr = None;
    match (mode, sampler) {
        (Mode::Runtime, Ok(sampler)) => {
            rate_vaddr = Some(sampler.rate_vaddr);
            probes = sampler_probes(go, config, &sampler)?;
        }
        _ => {
            let program = if empty_probe {
                EMPTY_PROGRAM
            } else {
                ALLOC_PROGRAM
            };
            let points = points::allocation_entry_points(&go.binary)
                .ok_or_else(|| go.refused(Unsupported::NoAllocationEntryPoint))?;
            for f in &points {
                probes.push(go.entry_point(program, f)?);
            }
        }
    }
    Ok(Chosen {
        mode,
        probes,
        rate_vaddr,
        auto_duty_reason,
    })
}

/// Runtime-sampled mode's probes on the heap sampler,
/// and the sampler's fields of `config`: shared by [`plan`] and `gomemtrace numa`.
pub(crate) fn sampler_probes(
    go: &GoTarget,
    config: &mut ProcessConfig,
    sampler: &crate::analysis::Sampler,
) -> Result<Vec<AttachPoint>, Refused> {
    config.bucket_size_offset = sampler.bucket_size_offset;
    config.special_kind_offset = sampler.special_kind_offset;
    config.special_kind_profile = sampler.special_kind_profile;
    [
        (SET_PROFILE_BUCKET_PROGRAM, &sampler.set_profile_bucket),
        (FREE_SPECIAL_PROGRAM, &sampler.free_special),
    ]
    .into_iter()
    .map(|(program, f)| go.entry_point(program, f))
    .collect()
}
