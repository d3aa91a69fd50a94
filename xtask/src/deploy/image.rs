//! The agent's OCI image (deploy/image/Containerfile), built by buildah without a daemon:
//! vfs storage and chroot isolation under the cargo target directory, exported as an
//! oci-archive, then checked from the outside (config and labels via `buildah inspect`)
//! and from the inside (its one layer holds exactly the static binary, which runs alone).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};

use super::{deploy_dir, manifests::at, tools::output};
use crate::{run, static_build::static_gomemtrace, target_dir, workspace_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const ENTRYPOINT: [&str; 2] = ["/gomemtrace", "agent"];

/// Builds the image and the archive `target/oci/gomemtrace-VERSION.oci.tar`; returns its path.
pub fn check(work: &Path) -> anyhow::Result<PathBuf> {
    let binary = static_gomemtrace()?;

    let context = work.join("image-context");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join("gomemtrace"))?;
    let revision = git_revision();
    let tag = format!("localhost/gomemtrace:{VERSION}");
    run(buildah(work)
        .args([
            "build",
            "--isolation",
            "chroot",
            "--format",
            "oci",
            "--pull-never",
        ])
        .arg("--file")
        .arg(deploy_dir().join("image/Containerfile"))
        .arg("--build-arg")
        .arg(format!("VERSION={VERSION}"))
        .arg("--build-arg")
        .arg(format!("REVISION={revision}"))
        .args(["--tag", &tag])
        .arg(&context))?;

    let inspect = output(buildah(work).args(["inspect", "--type", "image", &tag]))?;
    ensure!(inspect.status.success(), "buildah inspect {tag} failed");
    let image: Value = serde_json::from_slice(&inspect.stdout).context("buildah inspect")?;
    check_config(at(&image, "/OCIv1")?, &revision)?;

    let archive_dir = target_dir().join("oci");
    std::fs::create_dir_all(&archive_dir)?;
    let archive = archive_dir.join(format!("gomemtrace-{VERSION}.oci.tar"));
    if archive.exists() {
        std::fs::remove_file(&archive)?;
    }
    run(buildah(work).args(["push", &tag]).arg(format!(
        "oci-archive:{}:gomemtrace:{VERSION}",
        archive.display()
    )))?;
    check_archive(&archive, &binary, work)?;
    eprintln!("deploy-check: image {tag} written to {}", archive.display());
    Ok(archive)
}

/// buildah on a private store under `work`: vfs needs no overlay or fuse support.
fn buildah(work: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(work.join("buildah/root"))
        .arg("--runroot")
        .arg(work.join("buildah/run"))
        .args(["--storage-driver", "vfs"]);
    cmd
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Entrypoint, user, port and OCI labels as deploy/image/Containerfile means them.
fn check_config(oci: &Value, revision: &str) -> anyhow::Result<()> {
    let config = at(oci, "/config")?;
    ensure!(
        at(config, "/Entrypoint")? == &json!(ENTRYPOINT),
        "entrypoint {}",
        config["Entrypoint"]
    );
    ensure!(
        config.get("Cmd").is_none_or(Value::is_null),
        "no Cmd: arguments go after the entrypoint"
    );
    ensure!(
        at(config, "/User")? == &json!("0:0"),
        "user {}",
        config["User"]
    );
    ensure!(
        config.pointer("/ExposedPorts/9470~1tcp").is_some(),
        "port 9470/tcp is exposed"
    );
    let labels = at(config, "/Labels")?;
    for (key, value) in [
        ("org.opencontainers.image.title", "gomemtrace"),
        ("org.opencontainers.image.version", VERSION),
        ("org.opencontainers.image.revision", revision),
        ("org.opencontainers.image.licenses", "MIT OR Apache-2.0"),
    ] {
        ensure!(
            labels.get(key) == Some(&json!(value)),
            "label {key} should be {value:?}, labels: {labels}"
        );
    }
    let layers = at(oci, "/rootfs/diff_ids")?
        .as_array()
        .context("diff_ids")?;
    ensure!(
        layers.len() == 1,
        "one layer (FROM scratch + the binary), found {}",
        layers.len()
    );
    Ok(())
}

/// The archive's manifest has one layer holding only /gomemtrace, byte for byte the static
/// binary, and that binary runs in a root holding nothing else.
fn check_archive(archive: &Path, binary: &Path, work: &Path) -> anyhow::Result<()> {
    let layout = work.join("oci-layout");
    std::fs::create_dir_all(&layout)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout))?;
    let blob = |digest: &Value| -> anyhow::Result<PathBuf> {
        let digest = digest.as_str().context("digest")?;
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifests = at(&index, "/manifests")?.as_array().context("manifests")?;
    ensure!(manifests.len() == 1, "one manifest in the archive");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(at(&manifests[0], "/digest")?)?)?)?;
    let layers = at(&manifest, "/layers")?.as_array().context("layers")?;
    ensure!(
        layers.len() == 1,
        "one layer in the manifest, found {}",
        layers.len()
    );
    let layer = blob(at(&layers[0], "/digest")?)?;

    let listing = output(Command::new("tar").arg("-tvf").arg(&layer))?;
    ensure!(listing.status.success(), "list the layer");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let entries: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(|name| name.trim_start_matches("./"))
        .filter(|name| !name.is_empty())
        .collect();
    ensure!(
        entries == ["gomemtrace"],
        "the layer holds {entries:?}, not only gomemtrace"
    );
    ensure!(
        listing.trim_start().starts_with("-rwx"),
        "gomemtrace is not an executable file: {listing}"
    );

    let rootfs = work.join("image-rootfs");
    std::fs::create_dir_all(&rootfs)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs))?;
    ensure!(
        std::fs::read(rootfs.join("gomemtrace"))? == std::fs::read(binary)?,
        "the image's /gomemtrace is not the static build"
    );
    // No libc, no loader, no /proc in there: only a static binary gets to print its version.
    expect_version(
        Command::new("chroot")
            .arg(&rootfs)
            .arg("/gomemtrace")
            .arg("--version"),
    )
}

fn expect_version(cmd: &mut Command) -> anyhow::Result<()> {
    let out = output(cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == format!("gomemtrace {VERSION}"),
        "{cmd:?} printed {stdout:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
