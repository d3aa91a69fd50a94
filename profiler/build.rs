//! Builds the eBPF probes (profiler-ebpf) for bpfel-unknown-none with aya-build.

use anyhow::{Context as _, anyhow};

/// Must be >= 1.98 (aya) and ship LLVM <= 22 (bpf-linker 0.10.x); see rust-toolchain.toml.
const EBPF_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "gomemtrace-ebpf")
        .ok_or_else(|| anyhow!("gomemtrace-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // A stable toolchain builds `core` for the BPF target only with -Z build-std, which
    // aya-build passes when RUSTC_BOOTSTRAP=1; the probes also use the atomic intrinsics.
    // SAFETY: the build script is single-threaded; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
