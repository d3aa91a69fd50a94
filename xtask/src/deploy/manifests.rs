//! The plain manifests (deploy/kubernetes/), and the agent contract that every render of
//! the chart must keep too: privileges, probes, the one host mount, RBAC and Service.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use super::{deploy_dir, quantity, tools::Tools};

/// Capabilities the agent needs, per the agent contract (docs/DEPLOY.md says what for).
pub const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// Footprint goal of one agent: 64 MiB RSS and 1% of a core.
const FOOTPRINT_MEMORY_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
const FOOTPRINT_MILLICORES: f64 = 10.0;

/// How the agent's container is privileged.
pub enum Privileges<'a> {
    /// Root with all capabilities dropped but [`CAPABILITIES`] and `extra`.
    Least { extra: &'a [&'a str] },
    /// A privileged container (kernels without CAP_BPF/CAP_PERFMON).
    Privileged,
}

/// Lints and validates deploy/kubernetes/ and checks its objects; returns them.
pub fn check(tools: &Tools) -> anyhow::Result<Vec<Value>> {
    let dir = deploy_dir().join("kubernetes");
    let resources = kustomization_resources(tools)?;
    tools.yamllint(&[
        deploy_dir().join(".yamllint"),
        dir.clone(),
        deploy_dir().join("helm/gomemtrace/Chart.yaml"),
        deploy_dir().join("helm/gomemtrace/values.yaml"),
        deploy_dir().join("helm/ci"),
    ])?;
    tools.kubernetes_validate(&resources)?;
    let mut objects = Vec::new();
    for file in &resources {
        objects.extend(tools.yaml_documents(file)?);
    }
    for object in &objects {
        ensure!(
            object.pointer("/metadata/namespace").is_none(),
            "{} names a namespace: the plain manifests are applied with -n or -k",
            describe(object)
        );
    }
    check_agent(&objects, &Privileges::Least { extra: &[] })?;
    check_node_defaults(&objects)?;
    Ok(objects)
}

/// The files kustomization.yaml lists, which must be every other manifest of the directory.
fn kustomization_resources(tools: &Tools) -> anyhow::Result<Vec<PathBuf>> {
    let dir = deploy_dir().join("kubernetes");
    let kustomization = tools.yaml_document(&dir.join("kustomization.yaml"))?;
    let listed: BTreeSet<String> = at(&kustomization, "/resources")?
        .as_array()
        .context("kustomization resources")?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    ensure!(
        listed == present,
        "kustomization.yaml lists {listed:?} but the directory holds {present:?}"
    );
    Ok(listed.iter().map(|name| dir.join(name)).collect())
}

/// What every rendering of the agent must satisfy, whatever its values.
pub fn check_agent(objects: &[Value], privileges: &Privileges) -> anyhow::Result<()> {
    let daemonset = one(objects, "DaemonSet")?;
    let pod = at(daemonset, "/spec/template/spec")?;
    ensure!(
        pod["hostPID"] == json!(true),
        "the agent needs hostPID: true"
    );
    ensure!(
        pod.pointer("/securityContext/runAsUser") == Some(&json!(0)),
        "the agent runs as uid 0"
    );
    let containers = at(pod, "/containers")?.as_array().context("containers")?;
    ensure!(containers.len() == 1, "one container, the agent");
    let agent = &containers[0];
    check_security_context(at(agent, "/securityContext")?, privileges)?;

    // The one host mount: BTF, read-only. /proc comes with hostPID; /sys/fs/bpf is unused.
    let volumes = at(pod, "/volumes")?;
    ensure!(
        volumes
            == &json!([{"name": "btf", "hostPath": {"path": "/sys/kernel/btf", "type": "Directory"}}]),
        "the only volume is the host's /sys/kernel/btf, found {volumes}"
    );
    let mounts = at(agent, "/volumeMounts")?;
    ensure!(
        mounts == &json!([{"name": "btf", "mountPath": "/sys/kernel/btf", "readOnly": true}]),
        "/sys/kernel/btf is mounted read-only and nothing else, found {mounts}"
    );

    let port = listen_port(agent)?;
    let ports = at(agent, "/ports")?;
    ensure!(
        ports == &json!([{"name": "http", "containerPort": port, "protocol": "TCP"}]),
        "the container port is the --listen port {port}, found {ports}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(agent, &format!("/{probe}/httpGet"))?;
        ensure!(
            get == &json!({"path": path, "port": "http"}),
            "{probe} is GET {path} on the http port, found {get}"
        );
    }
    let node_name = json!([{"name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]);
    ensure!(
        at(agent, "/env")? == &node_name,
        "NODE_NAME comes from the downward API and is the only variable"
    );
    if let Some(annotations) = daemonset.pointer("/spec/template/metadata/annotations")
        && annotations.get("prometheus.io/scrape").is_some()
    {
        let expected = json!({"prometheus.io/scrape": "true",
            "prometheus.io/port": port.to_string(), "prometheus.io/path": "/metrics"});
        for (key, value) in expected.as_object().expect("literal object") {
            ensure!(
                annotations.get(key) == Some(value),
                "annotation {key} must be {value}, found {annotations}"
            );
        }
    }

    let service_account = at(pod, "/serviceAccountName")?;
    let role = one(objects, "ClusterRole")?;
    let rules = at(role, "/rules")?;
    ensure!(
        rules
            == &json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        "the ClusterRole reads pods and nothing else, found {rules}"
    );
    let binding = one(objects, "ClusterRoleBinding")?;
    ensure!(
        at(binding, "/roleRef/name")? == at(role, "/metadata/name")?
            && at(binding, "/subjects/0/name")? == service_account,
        "the ClusterRoleBinding binds the ClusterRole to the DaemonSet's ServiceAccount"
    );
    if let Ok(account) = one(objects, "ServiceAccount") {
        ensure!(
            at(account, "/metadata/name")? == service_account,
            "the ServiceAccount is the one the DaemonSet uses"
        );
    }

    let service = one(objects, "Service")?;
    ensure!(
        service.pointer("/spec/clusterIP") == Some(&json!("None")),
        "the Service is headless"
    );
    ensure!(
        at(service, "/spec/ports")?
            == &json!([{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]),
        "the Service exposes the agent's port {port}"
    );
    let pod_labels = at(daemonset, "/spec/template/metadata/labels")?;
    for (key, value) in at(service, "/spec/selector")?
        .as_object()
        .context("selector")?
    {
        ensure!(
            pod_labels.get(key) == Some(value),
            "the Service selector {key}={value} does not select the agent pods"
        );
    }
    Ok(())
}

fn check_security_context(context: &Value, privileges: &Privileges) -> anyhow::Result<()> {
    ensure!(
        context["readOnlyRootFilesystem"] == json!(true),
        "the root filesystem is read-only"
    );
    match privileges {
        Privileges::Privileged => {
            ensure!(context["privileged"] == json!(true), "privileged: true");
            ensure!(
                context.get("allowPrivilegeEscalation").is_none(),
                "allowPrivilegeEscalation: false contradicts privileged: true"
            );
        }
        Privileges::Least { extra } => {
            ensure!(context["privileged"] == json!(false), "not privileged");
            ensure!(
                context["allowPrivilegeEscalation"] == json!(false),
                "allowPrivilegeEscalation: false"
            );
            ensure!(
                at(context, "/capabilities/drop")? == &json!(["ALL"]),
                "every capability is dropped"
            );
            let added: BTreeSet<&str> = at(context, "/capabilities/add")?
                .as_array()
                .context("capabilities.add")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let wanted: BTreeSet<&str> = CAPABILITIES.iter().chain(extra.iter()).copied().collect();
            ensure!(
                added == wanted,
                "capabilities added: {added:?}, the contract needs exactly {wanted:?}"
            );
        }
    }
    Ok(())
}

/// Defaults that make the agent a good citizen of every Linux node: tolerate every taint,
/// and request no more than the footprint goal.
pub fn check_node_defaults(objects: &[Value]) -> anyhow::Result<()> {
    let pod = at(one(objects, "DaemonSet")?, "/spec/template/spec")?;
    ensure!(
        at(pod, "/tolerations")? == &json!([{"operator": "Exists"}]),
        "the agent tolerates every taint"
    );
    ensure!(
        at(pod, "/nodeSelector")? == &json!({"kubernetes.io/os": "linux"}),
        "the agent runs on Linux nodes"
    );
    let requests = at(pod, "/containers/0/resources/requests")?;
    let cpu = quantity::millicores(str_at(requests, "/cpu")?)?;
    let memory = quantity::bytes(str_at(requests, "/memory")?)?;
    ensure!(
        cpu <= FOOTPRINT_MILLICORES && memory <= FOOTPRINT_MEMORY_BYTES,
        "requests {requests} exceed the footprint goal (10m, 64Mi)"
    );
    let limits = at(pod, "/containers/0/resources/limits")?;
    ensure!(
        quantity::bytes(str_at(limits, "/memory")?)? >= memory
            && quantity::millicores(str_at(limits, "/cpu")?)? >= cpu,
        "limits {limits} are below the requests"
    );
    Ok(())
}

/// The port of the agent's `--listen=ADDR:PORT` flag.
pub fn listen_port(agent: &Value) -> anyhow::Result<u16> {
    let args = at(agent, "/args")?.as_array().context("args")?;
    let listen = args
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--listen="))
        .context("the agent's args have no --listen=")?;
    let (_, port) = listen.rsplit_once(':').context("--listen is ADDR:PORT")?;
    port.parse().context("--listen port")
}

/// The one object of `kind`.
pub fn one<'a>(objects: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    let mut found = objects.iter().filter(|o| o["kind"] == json!(kind));
    match (found.next(), found.next()) {
        (Some(object), None) => Ok(object),
        (None, _) => bail!("no {kind}"),
        (Some(_), Some(_)) => bail!("more than one {kind}"),
    }
}

pub fn at<'a>(value: &'a Value, pointer: &str) -> anyhow::Result<&'a Value> {
    value
        .pointer(pointer)
        .with_context(|| format!("{} has no {pointer}", describe(value)))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    at(value, pointer)?
        .as_str()
        .with_context(|| format!("{pointer} is not a string"))
}

pub fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}
