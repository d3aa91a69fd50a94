//! The pods of this node from the Kubernetes API (`--kubernetes`): a watch limited by the
//! field selector `spec.nodeName`, kept as container id → pod in a [`PodIndex`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event, watcher},
    },
};

use crate::agent::metadata::{PodIndex, PodInfo};

pub type SharedIndex = Arc<Mutex<PodIndex>>;

/// What the agent keeps of a pod: namespace, name, labels, and each container's id (from
/// its status: `containerd://<id>`; init and ephemeral containers too).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let containers = pod
        .status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .map(|c| (c.name.clone(), c.container_id.clone().unwrap_or_default()))
        .collect();
    Some(PodInfo {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        labels: meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        containers,
    })
}

/// Watches the pods of `node` into `index` for as long as the agent runs, reconnecting
/// after errors.
pub async fn watch(node: String, index: SharedIndex) {
    loop {
        if let Err(e) = watch_once(&node, &index).await {
            eprintln!("gomemtrace: agent: pod watch: {e}; retrying in 5 s");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn watch_once(node: &str, index: &SharedIndex) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    // A (re)list builds a fresh index, swapped in whole when the list is complete.
    let mut fresh: Option<PodIndex> = None;
    let lock = || index.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(event) = events.try_next().await? {
        match event {
            Event::Init => fresh = Some(PodIndex::default()),
            Event::InitApply(pod) => {
                if let (Some(fresh), Some(info)) = (fresh.as_mut(), pod_info(&pod)) {
                    fresh.insert(info);
                }
            }
            Event::InitDone => {
                if let Some(mut fresh) = fresh.take() {
                    fresh.synced = true;
                    *lock() = fresh;
                }
            }
            Event::Apply(pod) => {
                if let Some(info) = pod_info(&pod) {
                    lock().insert(info);
                }
            }
            Event::Delete(pod) => {
                if let Some(info) = pod_info(&pod) {
                    lock().remove(&info.namespace, &info.name);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The API server is reached over TLS: building the client sets up rustls, which
    /// panics where no crypto provider was compiled in.
    #[tokio::test]
    async fn a_tls_client_to_the_api_server_can_be_built() {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap();
    }

    use k8s_openapi::{
        api::core::v1::{ContainerStatus, PodStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    #[test]
    fn pod_status_containers_map_to_the_pod() {
        let id = "9f".repeat(32);
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "server".into(),
                    container_id: Some(format!("containerd://{id}")),
                    ..ContainerStatus::default()
                }]),
                init_container_statuses: Some(vec![ContainerStatus {
                    name: "migrate".into(),
                    container_id: Some("cri-o://init1".into()),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let mut index = PodIndex::default();
        index.insert(pod_info(&pod).unwrap());
        let (found, container) = index.lookup(&id).unwrap();
        assert_eq!(
            (found.namespace.as_str(), found.name.as_str()),
            ("shop", "web-0")
        );
        assert_eq!(found.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(container, "server");
        assert_eq!(index.lookup("init1").unwrap().1, "migrate");
        // No namespace (not a real pod object): nothing to index.
        assert!(pod_info(&Pod::default()).is_none());
    }
}
