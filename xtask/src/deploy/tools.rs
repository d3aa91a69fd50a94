//! The validators deploy-check runs, as installed by scripts/setup.sh under the cache
//! directory: helm (from npm), and yamllint, kubernetes-validate, check-jsonschema and
//! PyYAML in one Python venv.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::{KUBERNETES_VERSIONS, deploy_dir};
use crate::{go_cache, run};

/// scripts/setup.sh's HELM_VERSION.
const HELM_VERSION: &str = "v4.1.4";

/// Kinds kubernetes-validate has no schema for, each checked by deploy-check against a
/// schema of its own instead.
pub const CUSTOM_KINDS: [&str; 1] = ["ServiceMonitor"];

pub struct Tools {
    helm: PathBuf,
    venv_bin: PathBuf,
}

impl Tools {
    pub fn find() -> anyhow::Result<Self> {
        let tools = Self {
            helm: go_cache().join("helm").join(HELM_VERSION).join("helm"),
            venv_bin: go_cache().join("venv-deploy/bin"),
        };
        for tool in [
            tools.helm.clone(),
            tools.venv_bin.join("yamllint"),
            tools.venv_bin.join("kubernetes-validate"),
            tools.venv_bin.join("check-jsonschema"),
        ] {
            ensure!(
                tool.exists(),
                "{} is missing (run scripts/setup.sh)",
                tool.display()
            );
        }
        let version = output(tools.helm().args(["version", "--short"]))?;
        let version = String::from_utf8_lossy(&version.stdout);
        ensure!(
            version.starts_with(HELM_VERSION),
            "helm reports {version:?}, expected {HELM_VERSION}"
        );
        Ok(tools)
    }

    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(&self.helm);
        // No repositories, plugins or registry logins of the user's: the chart alone.
        cmd.env("HELM_CONFIG_HOME", "/nonexistent")
            .env("HELM_DATA_HOME", "/nonexistent")
            .env("HELM_CACHE_HOME", "/nonexistent");
        cmd
    }

    /// `yamllint --strict` with deploy/.yamllint: warnings fail too.
    pub fn yamllint(&self, paths: &[PathBuf]) -> anyhow::Result<()> {
        run(Command::new(self.venv_bin.join("yamllint"))
            .arg("--strict")
            .arg("-c")
            .arg(deploy_dir().join(".yamllint"))
            .args(paths))
    }

    /// kubernetes-validate `--strict` (unknown fields fail) against every release of
    /// [`KUBERNETES_VERSIONS`]. Only the [`CUSTOM_KINDS`] may lack a schema.
    pub fn kubernetes_validate(&self, paths: &[PathBuf]) -> anyhow::Result<()> {
        for version in KUBERNETES_VERSIONS {
            let out = output(
                Command::new(self.venv_bin.join("kubernetes-validate"))
                    .args(["--strict", "--quiet", "-k", version])
                    .args(paths),
            )?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                out.status.success(),
                "kubernetes-validate {version} rejected {paths:?}:\n{text}"
            );
            for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
                if !CUSTOM_KINDS
                    .iter()
                    .any(|kind| line.contains(&format!("kind {kind} ")))
                {
                    bail!("kubernetes-validate {version} skipped a resource: {line}");
                }
            }
        }
        Ok(())
    }

    /// check-jsonschema of one instance file (YAML or JSON); the caller judges the outcome.
    pub fn check_jsonschema(&self, schema: &Path, instance: &Path) -> anyhow::Result<Output> {
        output(
            Command::new(self.venv_bin.join("check-jsonschema"))
                .arg("--schemafile")
                .arg(schema)
                .arg(instance),
        )
    }

    /// check-jsonschema `--check-metaschema`: `schema` is itself a valid JSON Schema.
    pub fn check_metaschema(&self, schema: &Path) -> anyhow::Result<()> {
        run(Command::new(self.venv_bin.join("check-jsonschema"))
            .arg("--check-metaschema")
            .arg(schema))
    }

    /// Every non-empty document of a YAML file, as JSON (parsed by PyYAML's safe loader).
    pub fn yaml_documents(&self, path: &Path) -> anyhow::Result<Vec<Value>> {
        const TO_JSON: &str = "import json, sys, yaml\n\
            with open(sys.argv[1]) as f:\n    \
            docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
            json.dump(docs, sys.stdout)";
        let out = output(
            Command::new(self.venv_bin.join("python"))
                .args(["-c", TO_JSON])
                .arg(path),
        )?;
        ensure!(
            out.status.success(),
            "parse {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<Value> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("documents of {}", path.display()))?;
        Ok(docs)
    }

    /// The one document of a YAML file.
    pub fn yaml_document(&self, path: &Path) -> anyhow::Result<Value> {
        let mut docs = self.yaml_documents(path)?;
        ensure!(
            docs.len() == 1,
            "{} holds {} documents",
            path.display(),
            docs.len()
        );
        Ok(docs.remove(0))
    }
}

/// Runs `cmd` to completion and returns its output whatever its exit status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    eprintln!("xtask: {cmd:?}");
    cmd.output().with_context(|| format!("spawn {cmd:?}"))
}
