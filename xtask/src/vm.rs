//! `cargo xtask vm`: a two-node NUMA machine, emulated by QEMU (TCG: no KVM needed), that
//! runs `gomemtrace numa` on the `numa` fixture and brings back what it printed.
//!
//! The guest is Debian's cloud kernel (the package `linux-image-cloud-amd64` depends on)
//! and busybox-static, fetched with `apt-get download` (nothing is installed on the host)
//! and cached under `$GOMEMTRACE_CACHE/vm`; a static (musl) gomemtrace and the static Go
//! fixture go into an initramfs whose `/init` runs the scenario, prints each result file
//! between markers on the serial console and powers off. The recipe and its timings are
//! in docs/NUMA.md.

mod cpio;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Subcommand};

use crate::{cargo, go_cache, run, target_dir, workspace_root};

#[derive(Args)]
pub struct VmArgs {
    #[command(subcommand)]
    action: VmAction,
}

#[derive(Subcommand)]
enum VmAction {
    /// Build the guest, boot it, run the NUMA scenario and save its results.
    Run {
        /// Where the console log and result files go (default: target/vm/results).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Go release that builds the fixture.
        #[arg(long, default_value = "1.27")]
        go: String,
        /// Wall-clock limit of the boot, in seconds.
        #[arg(long, default_value_t = 150)]
        timeout: u64,
    },
    /// The NUMA VM test: `cargo test --test numa_vm` (which calls `vm run`).
    Test,
}

pub fn main(args: VmArgs) -> anyhow::Result<()> {
    match args.action {
        VmAction::Run { out, go, timeout } => {
            let out = out.unwrap_or_else(|| target_dir().join("vm/results"));
            let results = boot_numa_scenario(&out, &go, timeout)?;
            eprintln!(
                "xtask vm: results in {}: {}",
                out.display(),
                results.join(", ")
            );
            Ok(())
        }
        VmAction::Test => run(cargo().args([
            "test",
            "-p",
            "gomemtrace-tests",
            "--test",
            "numa_vm",
            "--",
            "--nocapture",
        ])),
    }
}

/// Marks one result file on the console: `===gomemtrace-vm:NAME:begin===` ... `:end===`.
const MARK: &str = "===gomemtrace-vm:";

/// The scenario, as the guest's `/init`. NUMA balancing's scan delay and period are
/// shortened (debugfs) so hint faults arrive within a second of the workers starting;
/// transparent huge pages are off so every buffer page stays where the fixture put it
/// until a hint fault migrates it.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /tmp
# Files leave gzipped and base64-encoded: every byte through the emulated serial port is
# slow under TCG.
section() { echo "===gomemtrace-vm:$1:begin==="; gzip -c "$2" | base64; echo "===gomemtrace-vm:$1:end==="; }
echo "vm: kernel $(uname -r), nodes online $(cat /sys/devices/system/node/online)"
B=/sys/kernel/debug/sched/numa_balancing
echo 1 > /proc/sys/kernel/numa_balancing
# No transparent huge pages: a huge page built behind the fixture's back (khugepaged)
# may land on the other node and turn a "local" buffer partly remote.
echo never > /sys/kernel/mm/transparent_hugepage/enabled
echo 100 > $B/scan_delay_ms
echo 100 > $B/scan_period_min_ms
echo 400 > $B/scan_period_max_ms
/gomemtrace numa -q --format json -o /tmp/numa.json -- /numa -duration 8s -mib 8 > /tmp/fixture.txt 2> /tmp/stderr.txt
echo "$?" > /tmp/rc.txt
/gomemtrace numa -q --format text -o /tmp/numa.txt -- /numa -duration 4s -mib 8 -objects 256 > /tmp/fixture-text.txt 2>> /tmp/stderr.txt
echo "$?" >> /tmp/rc.txt
/gomemtrace numa --format pprof -o /tmp/numa.pb.gz -- /numa -duration 3s -mib 4 -objects 64 > /tmp/fixture-pprof.txt 2> /tmp/stderr-pprof.txt
echo "$?" >> /tmp/rc.txt
# Attach mode: the fixture places its buffers and waits; gomemtrace attaches (-p); once it
# says it is tracing, the workers start. It is interrupted (Ctrl-C writes the report) 2 s
# after the fixture says every object is allocated, before the fixture ends: a fixed -d
# ended it while a slow guest was still allocating (CI: 648 of the runtime's 649 samples).
/numa -duration 6s -mib 8 -wait-start > /tmp/fixture-pid.txt 2>&1 &
P=$!
until grep -q '^ready' /tmp/fixture-pid.txt || ! kill -0 $P 2>/dev/null; do sleep 0.1; done
/gomemtrace numa -p $P --format json -o /tmp/numa-pid.json 2> /tmp/stderr-pid.txt &
G=$!
until grep -q 'tracing NUMA' /tmp/stderr-pid.txt || ! kill -0 $G 2>/dev/null; do sleep 0.1; done
kill -USR1 $P
until grep -q '^allocated' /tmp/fixture-pid.txt || ! kill -0 $P 2>/dev/null; do sleep 0.1; done
sleep 2
kill -INT $G
wait $G
echo "$?" >> /tmp/rc.txt
wait $P
echo "$?" >> /tmp/rc.txt
# The agent: remote accesses as Prometheus metrics. The last scrape before the fixture
# exits (its series go with it) is kept.
ifconfig lo 127.0.0.1 up
/gomemtrace agent --listen 127.0.0.1:9470 --include-exe /numa --kubernetes never 2> /tmp/agent-stderr.txt &
A=$!
until wget -q -O /dev/null http://127.0.0.1:9470/readyz 2>/dev/null || ! kill -0 $A 2>/dev/null; do sleep 0.2; done
/numa -duration 6s -mib 8 -wait-start > /tmp/fixture-agent.txt 2>&1 &
P=$!
until grep -q '^ready' /tmp/fixture-agent.txt || ! kill -0 $P 2>/dev/null; do sleep 0.1; done
until wget -q -O /tmp/scrape.txt http://127.0.0.1:9470/metrics 2>/dev/null && grep -q '^gomemtrace_agent_attached_processes 1' /tmp/scrape.txt || ! kill -0 $A 2>/dev/null; do sleep 0.2; done
kill -USR1 $P
while kill -0 $P 2>/dev/null; do
  wget -q -O /tmp/scrape.txt http://127.0.0.1:9470/metrics 2>/dev/null && grep -q 'exe="/numa"' /tmp/scrape.txt && cp /tmp/scrape.txt /tmp/agent-metrics.txt
  sleep 0.5
done
kill $A
wait $A
echo "$?" > /tmp/agent-rc.txt
grep numa_ /proc/vmstat > /tmp/vmstat.txt
for f in rc.txt fixture.txt numa.json stderr.txt fixture-text.txt numa.txt fixture-pprof.txt stderr-pprof.txt numa.pb.gz fixture-pid.txt numa-pid.json stderr-pid.txt fixture-agent.txt agent-metrics.txt agent-stderr.txt agent-rc.txt vmstat.txt; do
  [ -f /tmp/$f ] || : > /tmp/$f
  section $f /tmp/$f
done
poweroff -f
"#;

/// Builds everything, boots, and writes the console log and each result file into
/// `out`; returns the names of the result files.
fn boot_numa_scenario(out: &Path, go_release: &str, timeout_s: u64) -> anyhow::Result<Vec<String>> {
    let cache = go_cache().join("vm");
    std::fs::create_dir_all(&cache)?;
    let kernel = guest_kernel(&cache)?;
    let busybox = unpacked_package(&cache, "busybox-static")?.join("bin/busybox");
    let gomemtrace = crate::static_build::static_gomemtrace()?;
    let fixture = static_go_fixture("numa", go_release)?;

    let mut initramfs = cpio::Cpio::new();
    for dir in ["/bin", "/proc", "/sys", "/dev", "/tmp"] {
        initramfs.dir(dir);
    }
    initramfs.file("/bin/busybox", 0o755, &read(&busybox)?);
    for applet in [
        "sh", "mount", "mkdir", "cat", "echo", "grep", "poweroff", "uname", "sleep", "gzip",
        "base64", "kill", "wget", "ifconfig", "cp",
    ] {
        initramfs.symlink(&format!("/bin/{applet}"), "busybox");
    }
    initramfs.file("/gomemtrace", 0o755, &read(&gomemtrace)?);
    initramfs.file("/numa", 0o755, &read(&fixture)?);
    initramfs.file("/init", 0o755, INIT.as_bytes());
    let vm_dir = target_dir().join("vm");
    std::fs::create_dir_all(&vm_dir)?;
    let initrd = vm_dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs.finish())?;

    let started = Instant::now();
    // TCG guests under load occasionally hang in the kernel (a soft lockup of the guest
    // CPU, seen about once in 20 boots): that boot says nothing about gomemtrace, so it is
    // booted once more. Any other failure, or a second lockup, fails.
    let console = match boot(&kernel, &initrd, timeout_s) {
        Err(e) if is_guest_lockup(&e.to_string()) => {
            eprintln!("xtask vm: the guest kernel locked up (TCG); booting once more:\n{e:#}");
            boot(&kernel, &initrd, timeout_s)?
        }
        other => other?,
    };
    eprintln!(
        "xtask vm: guest ran {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("console.log"), &console)?;
    let sections = sections(&console);
    ensure!(
        !sections.is_empty(),
        "the guest printed no results (console log in {}):\n{}",
        out.join("console.log").display(),
        tail(&console, 40)
    );
    let mut names = Vec::new();
    for (name, body) in sections {
        let bytes = gunzip(&base64_decode(&body)?)
            .with_context(|| format!("{name}: not gzip+base64 as /init sends it"))?;
        std::fs::write(out.join(&name), bytes)?;
        names.push(name);
    }
    Ok(names)
}

/// Whether a failed boot's message shows the guest kernel's soft-lockup watchdog.
fn is_guest_lockup(message: &str) -> bool {
    message.contains("did not power off")
        && (message.contains("soft lockup") || message.contains("stuck for"))
}

/// Runs the recipe's QEMU line under `timeout`; returns the serial console's text.
fn boot(kernel: &Path, initrd: &Path, timeout_s: u64) -> anyhow::Result<String> {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--kill-after=5",
        &timeout_s.to_string(),
        "qemu-system-x86_64",
    ])
    .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
    .args(["-smp", "2,sockets=2", "-m", "2048M"])
    .args(["-object", "memory-backend-ram,id=m0,size=1024M"])
    .args(["-object", "memory-backend-ram,id=m1,size=1024M"])
    .args(["-numa", "node,nodeid=0,cpus=0,memdev=m0"])
    .args(["-numa", "node,nodeid=1,cpus=1,memdev=m1"])
    .args(["-numa", "dist,src=0,dst=1,val=21"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "console=ttyS0 rdinit=/init panic=-1 loglevel=1",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    .stdin(std::process::Stdio::null());
    eprintln!("xtask: {cmd:?}");
    let output = cmd
        .output()
        .context("run qemu-system-x86_64 (scripts/setup.sh installs it)")?;
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    if output.status.code() == Some(124) || output.status.code() == Some(137) {
        bail!(
            "the guest did not power off within {timeout_s} s; console:\n{}",
            tail(&console, 40)
        );
    }
    ensure!(
        output.status.success(),
        "qemu failed ({}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        tail(&console, 40)
    );
    Ok(console)
}

/// The result files between the markers, by name.
fn sections(console: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix(MARK).and_then(|r| r.strip_suffix("===")) {
            if let Some(name) = rest.strip_suffix(":begin") {
                current = Some((name.to_string(), String::new()));
                continue;
            }
            if rest.ends_with(":end")
                && let Some(done) = current.take()
            {
                out.push(done);
                continue;
            }
        }
        if let Some((_, body)) = &mut current {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Standard base64 (RFC 4648, `=` padding, line breaks ignored), as busybox `base64` writes.
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let value = |c: u8| -> anyhow::Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        } as u32)
    };
    let symbols: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let mut word = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            word |= value(c)? << (18 - 6 * i);
        }
        let bytes = word.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

fn gunzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// The cloud kernel's vmlinuz, unpacked from the package `linux-image-cloud-amd64` depends
/// on.
fn guest_kernel(cache: &Path) -> anyhow::Result<PathBuf> {
    let package = kernel_package(cache)?;
    let root = unpacked_package(cache, &package)?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("read {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    Ok(vmlinuz)
}

/// The versioned kernel package name, remembered in the cache once resolved so that later
/// runs need no apt metadata.
fn kernel_package(cache: &Path) -> anyhow::Result<String> {
    let remembered = cache.join("kernel-package");
    if let Ok(name) = std::fs::read_to_string(&remembered) {
        return Ok(name.trim().to_string());
    }
    let name = match cloud_kernel_dependency()? {
        Some(name) => name,
        None => {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            cloud_kernel_dependency()?
                .context("apt-cache: linux-image-cloud-amd64 has no linux-image dependency")?
        }
    };
    std::fs::write(&remembered, &name)?;
    Ok(name)
}

fn cloud_kernel_dependency() -> anyhow::Result<Option<String>> {
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .context("run apt-cache")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .map(str::to_string))
}

/// `apt-get download`s `package` into the cache (once) and unpacks it there with
/// `dpkg-deb -x`; returns the unpacked root.
fn unpacked_package(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let root = cache.join(format!("{package}.root"));
    if root.join(".unpacked").exists() {
        return Ok(root);
    }
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(cache)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                })
            })
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            run(Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(cache))?;
            find_deb().with_context(|| format!("apt-get download {package} left no .deb"))?
        }
    };
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(root.join(".unpacked"), "")?;
    Ok(root)
}

/// `tests/fixtures/<name>/main.go` built with Go `go_release`, CGO_ENABLED=0 (static).
fn static_go_fixture(name: &str, go_release: &str) -> anyhow::Result<PathBuf> {
    crate::GoBuild {
        source: workspace_root().join("tests/fixtures").join(name),
        work: target_dir()
            .join("vm/go")
            .join(format!("{name}-{go_release}")),
        output: name,
        go_release,
        flags: &[],
        env: &[
            ("CGO_ENABLED", "0".into()),
            (
                "GOCACHE",
                go_cache().join("gocache").join(go_release).into(),
            ),
        ],
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_timed_out_boot_with_a_lockup_is_retried() {
        let lockup = "the guest did not power off within 150 s; console:\nwatchdog: BUG: soft lockup - CPU#0 stuck for 26s! [numa:146]";
        assert!(is_guest_lockup(lockup));
        assert!(!is_guest_lockup(
            "the guest did not power off within 150 s; console:\n..."
        ));
        assert!(!is_guest_lockup("qemu failed (exit 1): soft lockup"));
    }

    #[test]
    fn base64_and_gzip_round_trip_like_busybox_sends_them() {
        // RFC 4648 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9v\nYmFy\n"),
        ] {
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert!(base64_decode("Zm9v!").is_err());
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"numa").unwrap();
        assert_eq!(gunzip(&gz.finish().unwrap()).unwrap(), b"numa");
    }

    #[test]
    fn sections_are_cut_at_the_markers_and_kernel_noise_outside_is_ignored() {
        let console = "[ 1.0] booting\n===gomemtrace-vm:a.txt:begin===\nline 1\nline 2\n\
            ===gomemtrace-vm:a.txt:end===\n[ 2.0] noise\n===gomemtrace-vm:b:begin===\n\
            ===gomemtrace-vm:b:end===\n===gomemtrace-vm:cut:begin===\npartial\n";
        assert_eq!(
            sections(console),
            vec![
                ("a.txt".to_string(), "line 1\nline 2\n".to_string()),
                ("b".to_string(), String::new()),
            ]
        );
    }
}
