//! The Helm chart (deploy/helm/gomemtrace/): lint, renders validated like the plain
//! manifests, and its values schema, which must reject every deploy/helm/ci/invalid file.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use super::{
    deploy_dir,
    manifests::{Privileges, at, check_agent, check_node_defaults, describe, one},
    tools::{CUSTOM_KINDS, Tools, output},
};
use crate::run;

const RELEASE: &str = "gomemtrace";

struct Chart<'a> {
    tools: &'a Tools,
    work: &'a Path,
    dir: PathBuf,
    schema: PathBuf,
    defaults: Value,
}

pub fn check(tools: &Tools, work: &Path, plain: &[Value]) -> anyhow::Result<()> {
    let dir = deploy_dir().join("helm/gomemtrace");
    let schema = dir.join("values.schema.json");
    tools.check_metaschema(&schema)?;
    tools.check_metaschema(&servicemonitor_schema())?;
    let chart = Chart {
        tools,
        defaults: tools.yaml_document(&dir.join("values.yaml"))?,
        work,
        dir,
        schema,
    };
    let ci = deploy_dir().join("helm/ci");

    let default = chart.render("default", None, RELEASE)?;
    check_agent(&default, &Privileges::Least { extra: &[] })?;
    check_node_defaults(&default)?;
    same_as_plain(&default, plain)?;
    ensure!(
        one(&default, "ServiceMonitor").is_err(),
        "the ServiceMonitor is off by default"
    );

    let all_on_file = ci.join("all-on.yaml");
    let all_on_values = chart.values_with(&all_on_file)?;
    let all_on = chart.render("all-on", Some(&all_on_file), "observability")?;
    check_agent(
        &all_on,
        &Privileges::Least {
            extra: &["SYS_RESOURCE"],
        },
    )?;
    values_reach_the_render(&all_on_values, &all_on, "observability")?;

    let privileged = chart.render("privileged", Some(&ci.join("privileged.yaml")), RELEASE)?;
    check_agent(&privileged, &Privileges::Privileged)?;

    chart.invalid_values_are_rejected(&ci.join("invalid"))
}

impl Chart<'_> {
    /// Lints and renders the chart with the values of `values_file` over values.yaml,
    /// validates the render and returns its objects.
    fn render(
        &self,
        name: &str,
        values_file: Option<&Path>,
        namespace: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let values_args: Vec<&Path> = values_file.into_iter().collect();
        let mut lint = self.tools.helm();
        lint.args(["lint", "--strict"]).arg(&self.dir);
        for file in &values_args {
            lint.arg("-f").arg(file);
        }
        run(&mut lint)?;

        // The values schema, checked by a validator independent of helm's.
        let merged = match values_file {
            Some(file) => self.values_with(file)?,
            None => self.defaults.clone(),
        };
        let out = self.check_values(name, &merged)?;
        ensure!(
            out.status.success(),
            "check-jsonschema rejects the {name} values: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        let mut template = self.tools.helm();
        template
            .args(["template", RELEASE])
            .arg(&self.dir)
            .args(["--namespace", namespace]);
        for file in &values_args {
            template.arg("-f").arg(file);
        }
        let out = output(&mut template)?;
        ensure!(
            out.status.success(),
            "helm template ({name}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = self.work.join(format!("render-{name}.yaml"));
        std::fs::write(&rendered, &out.stdout)?;
        self.tools.yamllint(std::slice::from_ref(&rendered))?;
        self.tools
            .kubernetes_validate(std::slice::from_ref(&rendered))?;
        let objects = self.tools.yaml_documents(&rendered)?;
        for object in objects
            .iter()
            .filter(|o| CUSTOM_KINDS.iter().any(|kind| o["kind"] == json!(kind)))
        {
            let file = self.work.join(format!("render-{name}-servicemonitor.json"));
            std::fs::write(&file, serde_json::to_vec_pretty(object)?)?;
            let out = self
                .tools
                .check_jsonschema(&servicemonitor_schema(), &file)?;
            ensure!(
                out.status.success(),
                "{} of the {name} render: {}",
                describe(object),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(objects)
    }

    /// values.yaml with `file` coalesced over it, as helm does (maps merge, null deletes).
    fn values_with(&self, file: &Path) -> anyhow::Result<Value> {
        let mut values = self.defaults.clone();
        coalesce(&mut values, &self.tools.yaml_document(file)?);
        Ok(values)
    }

    fn check_values(&self, name: &str, values: &Value) -> anyhow::Result<std::process::Output> {
        let file = self.work.join(format!("values-{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(values)?)?;
        self.tools.check_jsonschema(&self.schema, &file)
    }

    /// Each deploy/helm/ci/invalid file names the value its schema must reject
    /// (`# rejected at: /json/pointer`): helm must refuse to render with it, pointing at
    /// that value, and check-jsonschema must reject the merged values too.
    fn invalid_values_are_rejected(&self, dir: &Path) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        ensure!(
            !files.is_empty(),
            "no invalid values files in {}",
            dir.display()
        );
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let pointer = text
                .lines()
                .find_map(|l| l.strip_prefix("# rejected at: "))
                .with_context(|| format!("{} has no '# rejected at:' line", file.display()))?
                .trim();
            let out = output(
                self.tools
                    .helm()
                    .args(["template", RELEASE])
                    .arg(&self.dir)
                    .arg("-f")
                    .arg(&file),
            )?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                bail!(
                    "helm rendered the chart with {}: its schema let it through",
                    file.display()
                );
            }
            ensure!(
                stderr.contains("values don't meet the specifications of the schema")
                    && stderr.contains(&format!("'{pointer}'")),
                "helm rejected {} but not for {pointer}: {stderr}",
                file.display()
            );
            let name = file.file_stem().unwrap_or_default().to_string_lossy();
            let out = self.check_values(&format!("invalid-{name}"), &self.values_with(&file)?)?;
            ensure!(
                !out.status.success(),
                "check-jsonschema accepted {}",
                file.display()
            );
            eprintln!("deploy-check: {} rejected at {pointer}", file.display());
        }
        Ok(())
    }
}

fn servicemonitor_schema() -> PathBuf {
    deploy_dir().join("schemas/servicemonitor-v1.json")
}

fn coalesce(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(existing) = base.get_mut(key)
                    && existing.is_object()
                    && value.is_object()
                {
                    coalesce(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// With default values the chart renders the plain manifests' objects: same kinds and
/// names, same pod spec, RBAC and Service (labels differ: the chart adds Helm's).
fn same_as_plain(rendered: &[Value], plain: &[Value]) -> anyhow::Result<()> {
    let identities =
        |objects: &[Value]| -> BTreeSet<String> { objects.iter().map(describe).collect() };
    ensure!(
        identities(rendered) == identities(plain),
        "the chart renders {:?}, the plain manifests hold {:?}",
        identities(rendered),
        identities(plain)
    );
    let parts = [
        ("DaemonSet", "/spec/template/spec"),
        ("DaemonSet", "/spec/template/metadata/annotations"),
        ("DaemonSet", "/spec/updateStrategy"),
        ("ClusterRole", "/rules"),
        ("ClusterRoleBinding", "/roleRef"),
        ("ClusterRoleBinding", "/subjects"),
        ("Service", "/spec/ports"),
        ("Service", "/spec/clusterIP"),
    ];
    for (kind, pointer) in parts {
        let chart = at(one(rendered, kind)?, pointer)?;
        let manifest = at(one(plain, kind)?, pointer)?;
        ensure!(
            chart == manifest,
            "{kind} {pointer} differs between the chart and deploy/kubernetes:\n  chart: {chart}\n  plain: {manifest}"
        );
    }
    Ok(())
}

/// Every value of the all-on file shows where it should in the render.
fn values_reach_the_render(
    values: &Value,
    objects: &[Value],
    namespace: &str,
) -> anyhow::Result<()> {
    let daemonset = one(objects, "DaemonSet")?;
    let pod = at(daemonset, "/spec/template/spec")?;
    let agent = at(pod, "/containers/0")?;
    let name = format!("{}-agent", str_of(values, "/fullnameOverride")?);
    for object in objects {
        if object["kind"] != json!("ClusterRole") && object["kind"] != json!("ClusterRoleBinding") {
            ensure!(
                object.pointer("/metadata/namespace") == Some(&json!(namespace)),
                "{} is not in the release namespace",
                describe(object)
            );
        }
    }
    ensure!(
        at(daemonset, "/metadata/name")? == &json!(name),
        "fullnameOverride names the objects"
    );

    let expected = expected_args(at(values, "/agent")?)?;
    ensure!(
        at(agent, "/args")? == &json!(expected),
        "agent flags {} do not follow the values: expected {expected:?}",
        at(agent, "/args")?
    );
    let image = format!(
        "{}:{}",
        str_of(values, "/image/repository")?,
        str_of(values, "/image/tag")?
    );
    let pairs = [
        (at(agent, "/image")?, json!(image)),
        (
            at(agent, "/imagePullPolicy")?,
            values["image"]["pullPolicy"].clone(),
        ),
        (at(agent, "/resources")?, values["resources"].clone()),
        (
            at(pod, "/imagePullSecrets")?,
            values["imagePullSecrets"].clone(),
        ),
        (
            at(pod, "/priorityClassName")?,
            values["priorityClassName"].clone(),
        ),
        (at(pod, "/nodeSelector")?, values["nodeSelector"].clone()),
        (at(pod, "/tolerations")?, values["tolerations"].clone()),
        (at(pod, "/affinity")?, values["affinity"].clone()),
        (
            at(pod, "/securityContext/seccompProfile/type")?,
            values["security"]["seccompProfile"].clone(),
        ),
        (
            at(pod, "/serviceAccountName")?,
            values["serviceAccount"]["name"].clone(),
        ),
        (
            at(daemonset, "/spec/updateStrategy")?,
            values["updateStrategy"].clone(),
        ),
    ];
    for (rendered, wanted) in pairs {
        ensure!(
            rendered == &wanted,
            "rendered {rendered}, the values say {wanted}"
        );
    }
    contains_all(
        at(daemonset, "/spec/template/metadata/labels")?,
        &values["podLabels"],
    )?;
    contains_all(
        at(daemonset, "/spec/template/metadata/annotations")?,
        &values["podAnnotations"],
    )?;
    contains_all(
        at(one(objects, "ServiceAccount")?, "/metadata/annotations")?,
        &values["serviceAccount"]["annotations"],
    )?;
    let service = one(objects, "Service")?;
    contains_all(
        at(service, "/metadata/annotations")?,
        &values["service"]["annotations"],
    )?;
    ensure!(
        at(one(objects, "ClusterRoleBinding")?, "/subjects/0/namespace")? == &json!(namespace),
        "the binding's ServiceAccount is in the release namespace"
    );

    let monitor = one(objects, "ServiceMonitor")?;
    contains_all(
        at(monitor, "/metadata/labels")?,
        &values["serviceMonitor"]["labels"],
    )?;
    let endpoint = at(monitor, "/spec/endpoints/0")?;
    ensure!(
        endpoint
            == &json!({"port": "http", "path": "/metrics",
                "interval": values["serviceMonitor"]["interval"],
                "scrapeTimeout": values["serviceMonitor"]["scrapeTimeout"]}),
        "ServiceMonitor endpoint {endpoint}"
    );
    contains_all(
        at(service, "/metadata/labels")?,
        at(monitor, "/spec/selector/matchLabels")?,
    )?;
    ensure!(
        at(monitor, "/spec/namespaceSelector/matchNames")? == &json!([namespace]),
        "the ServiceMonitor looks in the release namespace"
    );
    Ok(())
}

/// The agent's flags for the chart's `agent` values, in the contract's spelling.
fn expected_args(agent: &Value) -> anyhow::Result<Vec<String>> {
    let mut args = vec![
        format!("--listen=0.0.0.0:{}", at(agent, "/port")?),
        format!("--mode={}", str_of(agent, "/mode")?),
        format!("--kubernetes={}", str_of(agent, "/kubernetes")?),
        format!("--max-processes={}", at(agent, "/maxProcesses")?),
    ];
    for (key, flag) in [
        ("includeExe", "--include-exe"),
        ("excludeExe", "--exclude-exe"),
        ("includeNamespace", "--include-namespace"),
        ("excludeNamespace", "--exclude-namespace"),
    ] {
        for value in strings(&agent[key]) {
            args.push(format!("{flag}={value}"));
        }
    }
    if let Some(selector) = agent["podSelector"].as_object().filter(|s| !s.is_empty()) {
        // serde_json's map is ordered by key, like Go templates' range over a map.
        let pairs: Vec<String> = selector
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        args.push(format!("--pod-selector={}", pairs.join(",")));
    }
    if let Some(url) = agent["pyroscopeUrl"].as_str().filter(|u| !u.is_empty()) {
        args.push(format!("--pyroscope-url={url}"));
    }
    args.extend(strings(&agent["extraArgs"]));
    Ok(args)
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    at(value, pointer)?
        .as_str()
        .with_context(|| format!("{pointer} is not a string"))
}

/// Every key of `subset` is in `map` with the same value.
fn contains_all(map: &Value, subset: &Value) -> anyhow::Result<()> {
    for (key, value) in subset.as_object().context("a map of values")? {
        ensure!(
            map.get(key) == Some(value),
            "{key}: {value} is missing from {map}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_merges_maps_replaces_lists_and_deletes_nulls() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 3});
        coalesce(&mut base, &json!({"a": {"y": 5}, "l": [9], "gone": null}));
        assert_eq!(base, json!({"a": {"x": 1, "y": 5}, "l": [9]}));
    }
}
