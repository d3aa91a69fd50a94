//! From an executable's bytes to an [`Inspection`]: the same analysis the views run
//! (`analysis::GoTarget`, `alloc::plan::choose`, `gc::Plan::of_target`, `rt::config_of`),
//! with nothing attached.

use std::sync::Arc;

use gomemtrace_gobin::{Arch, GoBinary};

use super::model::{
    AllocPlan, Allocation, BuildSetting, GcPlan, Inspection, Offset, Offsets, Probe, SCHEMA,
    VersionSource,
};
use crate::{
    alloc::plan,
    alloc::plan::ModeRequest,
    analysis::{AttachPoint, GoTarget, Refused, Unsupported},
    error::UserError,
};

/// What gomemtrace sees in `data`, the bytes of `file` (`pid`: the process running it).
/// A file that is not a complete Go ELF binary is refused (exit 4); a Go binary that
/// gomemtrace would not trace is reported, with why.
pub fn gather(data: &[u8], file: &str, pid: Option<u32>) -> Result<Inspection, Refused> {
    check_elf(data, file)?;
    let binary = GoTarget::read_binary(data, file)?;
    let mut inspection = facts(&binary, data, file, pid);
    match GoTarget::runtime_offsets(&binary, data) {
        Err(reason) => {
            let why = reason.to_string();
            inspection.refused = Some(why.clone());
            inspection.allocation = Allocation {
                auto: refused_plan(&why),
                exact: refused_plan(&why),
            };
            inspection.gc.refused = Some(why.clone());
            inspection.offsets.missing = Some(why);
        }
        Ok(found) => {
            let go = GoTarget::new(binary, found, file);
            inspection.allocation = Allocation {
                auto: alloc_plan(&go, ModeRequest::Auto),
                exact: alloc_plan(&go, ModeRequest::Exact),
            };
            inspection.gc = match crate::gc::Plan::of_target(&go, data) {
                Ok(plan) => GcPlan {
                    probes: plan.attach.iter().map(probe).collect(),
                    refused: None,
                },
                Err(e) => GcPlan {
                    probes: Vec::new(),
                    refused: Some(reason(&e)),
                },
            };
            inspection.offsets = offsets(&go, data);
        }
    }
    Ok(inspection)
}

/// A complete ELF file, else the refusal: "not a Go binary" for anything not ELF.
fn check_elf(data: &[u8], file: &str) -> Result<(), Refused> {
    match gomemtrace_gobin::check_complete_bytes(data, file) {
        Ok(()) => Ok(()),
        Err(gomemtrace_gobin::Error::NotElf { object, reason }) => Err(Refused {
            path: file.to_string(),
            reason: Unsupported::Binary {
                message: format!("not a Go binary (not an ELF file: {reason})"),
                error: Arc::new(gomemtrace_gobin::Error::NotElf { object, reason }),
            },
        }),
        Err(e) => Err(Refused::binary(file, e)),
    }
}

/// What the binary says of itself; the plans are filled in by [`gather`].
fn facts(binary: &GoBinary, data: &[u8], file: &str, pid: Option<u32>) -> Inspection {
    let buildinfo = binary.has_buildinfo_section();
    let settings = binary.build_settings();
    Inspection {
        schema: SCHEMA,
        file: file.to_string(),
        pid,
        size: data.len() as u64,
        arch: match binary.arch() {
            Arch::Amd64 => "amd64".into(),
            Arch::Arm64 => "arm64".into(),
            Arch::Other(machine) => format!("elf-machine-{machine}"),
        },
        go_version: binary.version_string().to_string(),
        version_source: if buildinfo {
            VersionSource::Buildinfo
        } else {
            VersionSource::RuntimeBuildVersion
        },
        buildinfo,
        stripped: binary.is_stripped(),
        pie: binary.is_pie(),
        cgo: settings
            .iter()
            .find(|(key, _)| key == "CGO_ENABLED")
            .map(|(_, value)| value == "1"),
        main_module: binary.main_module().map(str::to_string),
        build_settings: buildinfo.then(|| {
            settings
                .iter()
                .map(|(key, value)| BuildSetting {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect()
        }),
        functions: binary.functions().len(),
        refused: None,
        allocation: Allocation {
            auto: refused_plan("not analysed"),
            exact: refused_plan("not analysed"),
        },
        gc: GcPlan {
            probes: Vec::new(),
            refused: None,
        },
        offsets: Offsets {
            fields: Vec::new(),
            missing: None,
        },
    }
}

/// The allocation profile's plan in `mode`, as `gomemtrace --mode MODE` makes it (without
/// `--enable-runtime-sampling`).
fn alloc_plan(go: &GoTarget, mode: ModeRequest) -> AllocPlan {
    let mut config = go.process_config();
    match plan::choose(go, &mut config, go.sampler(), mode, false) {
        Ok(chosen) => AllocPlan {
            mode: Some(chosen.mode),
            why: (mode == ModeRequest::Auto).then(|| match &chosen.auto_duty_reason {
                Some(why) => format!("runtime-sampled mode is unavailable: {why}"),
                None => "the binary links the runtime's heap sampler, whose layout is \
                         verified for this release"
                    .to_string(),
            }),
            probes: chosen.probes.iter().map(probe).collect(),
            refused: None,
        },
        Err(refused) => refused_plan(&refused.reason.to_string()),
    }
}

fn refused_plan(why: &str) -> AllocPlan {
    AllocPlan {
        mode: None,
        why: None,
        probes: Vec::new(),
        refused: Some(why.to_string()),
    }
}

fn probe(point: &AttachPoint) -> Probe {
    Probe {
        program: point.program.to_string(),
        function: point.function.clone(),
        vaddr: point.vaddr,
        file_offset: point.file_offset,
    }
}

/// The `g`/`m` offsets every probe reads and the `g.sched` ones of the stack views.
fn offsets(go: &GoTarget, data: &[u8]) -> Offsets {
    let o = &go.offsets;
    let source = go.offsets_source;
    let mut fields: Vec<Offset> = [
        ("g.goid", o.g_goid),
        ("g.m", o.g_m),
        ("m.curg", o.m_curg),
        ("g.startpc", o.g_startpc),
        ("g.gopc", o.g_gopc),
        ("g.stack.lo", o.g_stack_lo),
        ("g.stack.hi", o.g_stack_hi),
    ]
    .into_iter()
    .map(|(field, offset)| Offset {
        field,
        offset,
        source,
    })
    .collect();
    let mut missing = None;
    match crate::rt::config_of(go, data, 0) {
        Ok((config, source)) => fields.extend(
            [
                ("g.sched.sp", config.g_sched_sp),
                ("g.sched.pc", config.g_sched_pc),
                ("g.sched.bp", config.g_sched_bp),
            ]
            .into_iter()
            .map(|(field, offset)| Offset {
                field,
                offset,
                source,
            }),
        ),
        Err(e) => missing = Some(user_reason(e)),
    }
    Offsets { fields, missing }
}

/// A view's refusal in its own words, without the file's name.
fn reason(e: &anyhow::Error) -> String {
    if let Some(refused) = e.downcast_ref::<Refused>() {
        refused.reason.to_string()
    } else if let Some(UserError::NotSupported { reason, .. }) = e.downcast_ref::<UserError>() {
        reason.clone()
    } else {
        format!("{e:#}")
    }
}

fn user_reason(e: UserError) -> String {
    match e {
        UserError::NotSupported { reason, .. } => reason,
        other => other.to_string(),
    }
}
