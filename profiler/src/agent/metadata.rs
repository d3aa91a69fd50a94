//! Who a process is, in labels: its executable and command name, and where Kubernetes
//! metadata exists its namespace, pod and container (by the container id in its cgroup).

use std::collections::HashMap;

/// The label values of one process's series. Bounded: never a pid, stack or function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub exe: String,
    pub comm: String,
}

impl Labels {
    pub const NAMES: [&'static str; 5] = ["namespace", "pod", "container", "exe", "comm"];

    pub fn values(&self) -> [&str; 5] {
        [
            &self.namespace,
            &self.pod,
            &self.container,
            &self.exe,
            &self.comm,
        ]
    }
}

/// The container id in a `/proc/PID/cgroup` file (cgroup v1 or v2; docker, containerd,
/// cri-o, systemd or cgroupfs drivers), or `None` for a process outside any container.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // hierarchy-ID:controller-list:cgroup-path
        let path = line.splitn(3, ':').nth(2)?;
        let last = path.rsplit('/').next()?;
        let last = last.strip_suffix(".scope").unwrap_or(last);
        // cri-o's conmon runs beside the container, not in it.
        if last.starts_with("crio-conmon-") {
            return None;
        }
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "containerd-",
            "libpod-",
        ]
        .iter()
        .find_map(|prefix| last.strip_prefix(prefix))
        .unwrap_or(last);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// A pod as the node's pod watch sees it.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// (container name, `containerID` of its status: `containerd://<id>`, `docker://...`,
    /// `cri-o://...`).
    pub containers: Vec<(String, String)>,
}

/// Container id → (pod, container name), rebuilt from the pods of this node.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_container: HashMap<String, (std::sync::Arc<PodInfo>, String)>,
    /// The watch listed every pod once: a container missing now is not a pod's.
    pub synced: bool,
}

impl PodIndex {
    /// Adds `pod`, replacing what was known of it (its containers may have restarted).
    pub fn insert(&mut self, pod: PodInfo) {
        self.remove(&pod.namespace, &pod.name);
        let pod = std::sync::Arc::new(pod);
        for (name, uri) in &pod.containers {
            if let Some((_, id)) = uri.split_once("://")
                && !id.is_empty()
            {
                self.by_container
                    .insert(id.to_string(), (pod.clone(), name.clone()));
            }
        }
    }

    pub fn remove(&mut self, namespace: &str, name: &str) {
        self.by_container
            .retain(|_, (pod, _)| !(pod.namespace == namespace && pod.name == name));
    }

    pub fn lookup(&self, container_id: &str) -> Option<(&PodInfo, &str)> {
        self.by_container
            .get(container_id)
            .map(|(pod, container)| (pod.as_ref(), container.as_str()))
    }
}

/// The container id of `pid`, if it runs in a container.
pub fn container_of(pid: u32) -> Option<String> {
    container_id(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The labels of `pid`: exe and comm always; namespace, pod and container from `pods`.
pub fn labels(pid: u32, exe: &str, pods: Option<&PodIndex>) -> (Labels, Option<PodInfo>) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let mut labels = Labels {
        exe: exe.to_string(),
        comm,
        ..Labels::default()
    };
    let pod = pods.and_then(|pods| {
        let (pod, container) = pods.lookup(&container_of(pid)?)?;
        labels.namespace = pod.namespace.clone();
        labels.pod = pod.name.clone();
        labels.container = container.to_string();
        Some(pod.clone())
    });
    (labels, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3c5e7c9a1f2b4d6e8a0c1e3f5a7b9d1c3e5f7a9b1d3f5a7c9e1b3d5f7a9c1e3f";

    #[test]
    fn docker_cgroup_v1_and_v2() {
        let v1 =
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&v2).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_under_kubernetes_systemd_and_cgroupfs_drivers() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&systemd).as_deref(), Some(ID));
        let cgroupfs =
            format!("0::/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}\n");
        assert_eq!(container_id(&cgroupfs).as_deref(), Some(ID));
        let v1 = format!(
            "10:cpu,cpuacct:/kubepods/burstable/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}\n"
        );
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
    }

    #[test]
    fn crio_but_not_its_conmon() {
        let crio = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/crio-{ID}.scope\n"
        );
        assert_eq!(container_id(&crio).as_deref(), Some(ID));
        let conmon = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(container_id(&conmon), None);
    }

    #[test]
    fn host_processes_have_no_container() {
        assert_eq!(
            container_id("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(container_id("0::/\n"), None);
        assert_eq!(container_id("12:memory:/\n"), None);
        // A 64-character name that is not hex is no container id.
        let not_hex = "z".repeat(64);
        assert_eq!(container_id(&format!("0::/system.slice/{not_hex}\n")), None);
    }

    #[test]
    fn pod_index_maps_runtime_uris_to_pod_and_container() {
        let mut index = PodIndex::default();
        index.insert(PodInfo {
            namespace: "shop".into(),
            name: "web-7d9f".into(),
            labels: HashMap::from([("app".into(), "web".into())]),
            containers: vec![
                ("server".into(), format!("containerd://{ID}")),
                ("sidecar".into(), "cri-o://abc".into()),
                ("waiting".into(), String::new()),
            ],
        });
        let (pod, container) = index.lookup(ID).unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "web-7d9f")
        );
        assert_eq!(container, "server");
        assert_eq!(index.lookup("abc").unwrap().1, "sidecar");
        assert!(index.lookup("").is_none());
        // The pod again, its server restarted under a new container id.
        index.insert(PodInfo {
            namespace: "shop".into(),
            name: "web-7d9f".into(),
            labels: HashMap::new(),
            containers: vec![("server".into(), "containerd://def".into())],
        });
        assert!(index.lookup(ID).is_none());
        assert_eq!(index.lookup("def").unwrap().1, "server");
        index.remove("shop", "web-7d9f");
        assert!(index.lookup(ID).is_none());
    }
}
