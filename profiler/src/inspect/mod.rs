//! `gomemtrace inspect (BINARY | -p PID)`: what gomemtrace sees in a Go executable and
//! would do with it — version and build, the mode `--mode auto` picks and why, every probe
//! point of the allocation and GC plans, the runtime offsets and their source — without
//! loading BPF or needing root for a file.
//!
//! [`read`] gets the bytes, [`gather`] runs the views' own analysis on them into the
//! [`model`], [`render`] writes it as text or json.

mod gather;
pub mod model;
mod read;
mod render;

use std::{panic::AssertUnwindSafe, process::ExitCode};

use crate::{engine, error::UserError};
use model::Inspection;

/// What to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An executable file (no root needed).
    File(std::path::PathBuf),
    /// The executable of a running process.
    Pid(u32),
}

/// The report's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable.
    Text,
    /// One json object (docs/JSON.md, `gomemtrace.inspect/v1`).
    Json,
}

/// `gomemtrace inspect`'s settings, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub format: Format,
}

pub fn run(args: &Config) -> anyhow::Result<ExitCode> {
    let exe = read::executable(args)?;
    let inspection = gather_guarded(&exe.data, &exe.path, exe.pid)?;
    let report = match args.format {
        Format::Text => render::text(&inspection),
        Format::Json => render::json(&inspection),
    };
    engine::write_report(None, report.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// [`gather::gather`], where a file that trips the binary reader into a panic (a bug on
/// some hostile input) is refused in one line like any malformed file, without the
/// panic's report on stderr.
fn gather_guarded(data: &[u8], file: &str, pid: Option<u32>) -> anyhow::Result<Inspection> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| gather::gather(data, file, pid)));
    std::panic::set_hook(previous);
    match result {
        Ok(inspection) => Ok(inspection?),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(UserError::NotSupported {
                path: file.to_string(),
                reason: format!(
                    "malformed Go binary: gomemtrace could not read it ({})",
                    what.replace('\n', " ")
                ),
            }
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a fixed sequence, so a failure is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn find(data: &[u8], needle: &[u8]) -> Option<usize> {
        data.windows(needle.len()).position(|w| w == needle)
    }

    /// A Go binary gomemtrace does not trace is still described, with why every plan is
    /// refused.
    #[test]
    fn an_untraceable_go_binary_is_described_with_the_refusal() {
        let Some(arm64) = crate::analysis::tests::build("arm64") else {
            eprintln!("SKIP: no Go toolchain (scripts/setup.sh installs it)");
            return;
        };
        let i = gather::gather(&arm64, "prog-arm64", None).unwrap();
        assert_eq!(i.arch, "arm64");
        assert!(i.go_version.starts_with("go1.25"), "{}", i.go_version);
        let why = i.refused.clone().expect("refused");
        assert!(why.contains("unsupported architecture"), "{why}");
        for plan in [&i.allocation.auto, &i.allocation.exact] {
            assert_eq!(plan.refused.as_deref(), Some(why.as_str()));
            assert!(plan.mode.is_none() && plan.probes.is_empty());
        }
        assert_eq!(i.gc.refused.as_deref(), Some(why.as_str()));
        assert!(i.offsets.fields.is_empty());
        let text = render::text(&i);
        assert!(
            text.contains("not traced: unsupported architecture"),
            "{text}"
        );
    }

    /// Damaged copies of a real binary (its ELF headers, section table, pclntab and build
    /// information overwritten at random) are reported or refused, never a panic or a hang.
    #[test]
    fn damaged_binaries_are_refused_or_reported_without_panicking() {
        let Some(good) = crate::analysis::tests::build("amd64") else {
            eprintln!("SKIP: no Go toolchain (scripts/setup.sh installs it)");
            return;
        };
        gather::gather(&good, "good", None).expect("the intact binary is inspected");
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        // Where a reader's arithmetic lives: headers, section table, pclntab, buildinfo.
        let regions: Vec<(usize, usize)> = [
            Some((0, 0x1000)),
            Some((shoff, good.len() - shoff)),
            find(&good, &[0xf1, 0xff, 0xff, 0xff, 0, 0]).map(|at| (at, 0x2000)),
            find(&good, b"\xff Go buildinf:").map(|at| (at, 0x200)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let iterations: usize = std::env::var("GOMEMTRACE_INSPECT_FUZZ")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(40);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut panics = Vec::new();
        for i in 0..iterations {
            let mut data = good.clone();
            for _ in 0..1 + rng.below(8) {
                let (start, len) = regions[rng.below(regions.len())];
                let at = (start + rng.below(len)).min(data.len() - 1);
                data[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
            }
            if rng.below(8) == 0 {
                data.truncate(rng.below(data.len()));
            }
            let started = std::time::Instant::now();
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| gather::gather(&data, "x", None)));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "iteration {i} took {:?}",
                started.elapsed()
            );
            if result.is_err() {
                panics.push(i);
            }
        }
        assert!(panics.is_empty(), "panics at iterations {panics:?}");
    }
}
