//! Checks, before loading anything, that this process and kernel can trace: privileges
//! (root, or CAP_BPF + CAP_PERFMON), BTF and the uprobe PMU. Each failure is one clear
//! line with its own exit code instead of an opaque EPERM from the loader.

use std::path::Path;

use crate::error::UserError;

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check() -> Result<(), UserError> {
    check_privileges()?;
    check_kernel(Path::new("/"))
}

fn check_privileges() -> Result<(), UserError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = effective_capabilities(&status).unwrap_or(0);
    if has_capability(effective, CAP_BPF) && has_capability(effective, CAP_PERFMON) {
        return Ok(());
    }
    Err(UserError::NotPermitted {
        what: "attaching eBPF uprobes".into(),
    })
}

fn effective_capabilities(proc_status: &str) -> Option<u64> {
    let hex = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn has_capability(set: u64, cap: u32) -> bool {
    set & (1 << cap) != 0
}

fn check_kernel(root: &Path) -> Result<(), UserError> {
    if !root
        .join("sys/bus/event_source/devices/uprobe/type")
        .exists()
    {
        return Err(UserError::KernelUnsupported {
            what: "uprobes".into(),
            why: "no uprobe PMU in /sys/bus/event_source/devices (CONFIG_UPROBE_EVENTS)".into(),
        });
    }
    if !root.join("sys/kernel/btf/vmlinux").exists() {
        return Err(UserError::KernelUnsupported {
            what: "BTF".into(),
            why: "/sys/kernel/btf/vmlinux is missing (CONFIG_DEBUG_INFO_BTF)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let eff = effective_capabilities(status).unwrap();
        assert!(has_capability(eff, CAP_BPF));
        assert!(has_capability(eff, CAP_PERFMON));
        let eff = effective_capabilities("CapEff:\t0000004000000000\n").unwrap();
        assert!(has_capability(eff, CAP_PERFMON) && !has_capability(eff, CAP_BPF));
    }

    #[test]
    fn missing_kernel_features_are_named() {
        let empty =
            std::env::temp_dir().join(format!("gomemtrace-preflight-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&empty);
        std::fs::create_dir_all(&empty).unwrap();
        let err = check_kernel(&empty).unwrap_err();
        assert!(err.to_string().contains("uprobes"), "{err}");
        std::fs::create_dir_all(empty.join("sys/bus/event_source/devices/uprobe")).unwrap();
        std::fs::write(empty.join("sys/bus/event_source/devices/uprobe/type"), "9").unwrap();
        let err = check_kernel(&empty).unwrap_err();
        assert!(err.to_string().contains("BTF"), "{err}");
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
