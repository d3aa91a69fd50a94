//! Whether this machine can measure remote NUMA accesses at all, decided before anything
//! is attached or launched: at least two online nodes, NUMA balancing on (its hint faults
//! are the samples). Each failed condition is one reason in `NUMA: not available (...)`.

use std::path::Path;

/// Online NUMA nodes, from a kernel node list such as `0`, `0-1` or `0,2-3`.
pub fn parse_node_list(list: &str) -> Vec<u32> {
    let mut nodes = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(lo), Ok(hi)) = (lo.parse::<u32>(), hi.parse::<u32>()) {
            nodes.extend(lo..=hi);
        }
    }
    nodes
}

/// What `root` (`/` outside tests) says about NUMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaHost {
    pub nodes: Vec<u32>,
    /// `/proc/sys/kernel/numa_balancing`; `None` when the kernel lacks NUMA balancing.
    pub balancing: Option<u32>,
}

impl NumaHost {
    pub fn read(root: &Path) -> Self {
        let nodes = std::fs::read_to_string(root.join("sys/devices/system/node/online"))
            .map(|s| parse_node_list(&s))
            .unwrap_or_else(|_| vec![0]);
        let balancing = std::fs::read_to_string(root.join("proc/sys/kernel/numa_balancing"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self { nodes, balancing }
    }

    /// Why hint faults cannot show remote accesses here; empty when they can.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.nodes.len() < 2 {
            reasons.push(format!(
                "{} NUMA node online: no access can be remote",
                self.nodes.len()
            ));
        }
        match self.balancing {
            None => reasons.push("the kernel has no NUMA balancing (CONFIG_NUMA_BALANCING)".into()),
            // Bit 0 is NUMA_BALANCING_NORMAL; 2 alone (memory tiering) takes no hint
            // faults between DRAM nodes.
            Some(mode) if mode & 1 == 0 => reasons.push(format!(
                "NUMA balancing is off (kernel.numa_balancing = {mode})"
            )),
            Some(_) => {}
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse_like_the_kernel_prints_them() {
        assert_eq!(parse_node_list("0\n"), vec![0]);
        assert_eq!(parse_node_list("0-1\n"), vec![0, 1]);
        assert_eq!(parse_node_list("0,2-3"), vec![0, 2, 3]);
        assert!(parse_node_list("").is_empty());
    }

    #[test]
    fn each_missing_condition_is_a_reason() {
        let one = NumaHost {
            nodes: vec![0],
            balancing: Some(0),
        };
        let reasons = one.reasons();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("1 NUMA node online"));
        assert!(reasons[1].contains("numa_balancing = 0"), "{reasons:?}");
        let two = NumaHost {
            nodes: vec![0, 1],
            balancing: Some(1),
        };
        assert!(two.reasons().is_empty());
        let tiering_only = NumaHost {
            nodes: vec![0, 1],
            balancing: Some(2),
        };
        assert_eq!(tiering_only.reasons().len(), 1);
        let no_balancing = NumaHost {
            nodes: vec![0, 1],
            balancing: None,
        };
        assert!(no_balancing.reasons()[0].contains("CONFIG_NUMA_BALANCING"));
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let root =
            std::env::temp_dir().join(format!("gomemtrace-numa-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sys/devices/system/node")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(root.join("sys/devices/system/node/online"), "0-1\n").unwrap();
        std::fs::write(root.join("proc/sys/kernel/numa_balancing"), "1\n").unwrap();
        assert_eq!(
            NumaHost::read(&root),
            NumaHost {
                nodes: vec![0, 1],
                balancing: Some(1)
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
