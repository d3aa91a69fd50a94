//! `cargo xtask deploy-check`: validates deploy/ without a cluster.
//!
//! - the plain manifests (deploy/kubernetes/): yamllint, kubernetes-validate, and the
//!   contract's privileges and probes read back from the DaemonSet;
//! - the Helm chart (deploy/helm/gomemtrace/): `helm lint --strict`, renders with default
//!   values and with deploy/helm/ci/*.yaml validated like the plain manifests, the default
//!   render compared with the plain manifests, every value of ci/all-on.yaml traced into
//!   the render, and every ci/invalid/*.yaml rejected by the values schema (by helm and by
//!   an independent JSON-schema validator);
//! - the OCI image (deploy/image/): built by buildah from the static binary, then checked
//!   through `buildah inspect` and the archive's one layer, whose binary must run alone.
//!
//! The tools come from scripts/setup.sh (see [`tools::Tools`]); outputs go under the cargo
//! target directory.

mod chart;
mod image;
mod manifests;
mod quantity;
mod tools;

use std::path::PathBuf;

use crate::{target_dir, workspace_root};

/// Kubernetes releases the manifests are validated against: the oldest the chart supports
/// (Chart.yaml's kubeVersion) and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25", "1.37"];

pub fn deploy_check() -> anyhow::Result<()> {
    let tools = tools::Tools::find()?;
    let work = target_dir().join("deploy-check");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let plain = manifests::check(&tools)?;
    chart::check(&tools, &work, &plain)?;
    image::check(&work)?;
    eprintln!("deploy-check: manifests, chart and image are valid");
    Ok(())
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}
