//! `gomemtrace inspect`'s text and json.

use std::fmt::Write as _;

use super::model::{AllocPlan, Inspection, Probe};

/// The json report: one pretty-printed object and a newline.
pub fn json(inspection: &Inspection) -> String {
    let mut out = serde_json::to_string_pretty(inspection).expect("the model serializes");
    out.push('\n');
    out
}

/// The text report.
pub fn text(i: &Inspection) -> String {
    let mut out = String::new();
    let yes_no = |b: bool, yes: &str, no: &str| if b { yes } else { no }.to_string();
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "{:<16}{value}", format!("{name}:"));
    };
    row(
        "file",
        match i.pid {
            Some(pid) => format!("{} (pid {pid})", i.file),
            None => i.file.clone(),
        },
    );
    row(
        "go version",
        format!("{} (from {})", i.go_version, i.version_source.name()),
    );
    let mut binary = vec![
        i.arch.clone(),
        yes_no(i.stripped, "stripped", "not stripped"),
        yes_no(i.pie, "PIE", "not PIE"),
    ];
    if let Some(cgo) = i.cgo {
        binary.push(yes_no(cgo, "cgo enabled", "cgo disabled"));
    }
    binary.push(format!("{} functions", i.functions));
    binary.push(format!("{} bytes", i.size));
    row("binary", binary.join(", "));
    row("buildinfo", yes_no(i.buildinfo, "present", "absent"));
    if let Some(module) = &i.main_module {
        row("main module", module.clone());
    }
    match &i.build_settings {
        None => row("build settings", "unknown".into()),
        Some(settings) if settings.is_empty() => row("build settings", "none".into()),
        Some(settings) => {
            let _ = writeln!(out, "build settings:");
            for s in settings {
                let _ = writeln!(out, "  {}={}", s.key, s.value);
            }
        }
    }
    if let Some(why) = &i.refused {
        let _ = writeln!(out, "\nnot traced: {why}");
    }

    let auto = &i.allocation.auto;
    let _ = writeln!(out);
    match (auto.mode, &auto.refused) {
        (Some(mode), _) => {
            let _ = writeln!(
                out,
                "mode auto:      {}{}",
                mode_name(mode),
                auto.why
                    .as_deref()
                    .map(|why| format!(", because {why}"))
                    .unwrap_or_default()
            );
        }
        (None, why) => {
            let _ = writeln!(
                out,
                "mode auto:      refused: {}",
                why.as_deref().unwrap_or("?")
            );
        }
    }
    plan_section(&mut out, "auto", auto);
    plan_section(&mut out, "exact", &i.allocation.exact);
    let _ = writeln!(out, "\nGC probes (gctrace):");
    probes_table(&mut out, &i.gc.probes, i.gc.refused.as_deref());

    let _ = writeln!(out, "\nruntime offsets:");
    for o in &i.offsets.fields {
        let _ = writeln!(out, "  {:<14}{:>#8x}  {}", o.field, o.offset, o.source);
    }
    if let Some(why) = &i.offsets.missing {
        let _ = writeln!(out, "  missing: {why}");
    }
    out
}

fn mode_name(mode: gomemtrace_report::model::Mode) -> &'static str {
    match mode {
        gomemtrace_report::model::Mode::Exact => "exact",
        gomemtrace_report::model::Mode::Runtime => "runtime",
        gomemtrace_report::model::Mode::Duty => "duty",
    }
}

/// The probes of `--mode {asked}`.
fn plan_section(out: &mut String, asked: &str, plan: &AllocPlan) {
    let _ = match plan.mode {
        Some(mode) if mode_name(mode) != asked => writeln!(
            out,
            "\nallocation probes, --mode {asked} ({}):",
            mode_name(mode)
        ),
        _ => writeln!(out, "\nallocation probes, --mode {asked}:"),
    };
    probes_table(out, &plan.probes, plan.refused.as_deref());
}

fn probes_table(out: &mut String, probes: &[Probe], refused: Option<&str>) {
    if let Some(why) = refused {
        let _ = writeln!(out, "  refused: {why}");
        return;
    }
    if probes.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    let program_width = probes.iter().map(|p| p.program.len()).max().unwrap_or(0);
    let function_width = probes.iter().map(|p| p.function.len()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "  {:<program_width$}  {:<function_width$}  {:>12}  {:>12}",
        "program", "function", "vaddr", "file offset"
    );
    for p in probes {
        let _ = writeln!(
            out,
            "  {:<program_width$}  {:<function_width$}  {:>#12x}  {:>#12x}",
            p.program, p.function, p.vaddr, p.file_offset
        );
    }
}
