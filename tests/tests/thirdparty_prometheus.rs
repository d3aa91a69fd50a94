//! Prometheus (Debian's 2.42.0, Go 1.19.8, stripped, cgo; `scripts/setup.sh` installs it)
//! scraping itself every 200 ms while four client threads query its HTTP API and its own
//! /metrics on loopback, traced by `gomemtrace -p PID`:
//!
//! - exact mode until it has answered `TRACED_REQUESTS` (or for at most 10 s), then Ctrl-C:
//!   no event lost or kept without its stack, the bytes under Prometheus's own frames, and
//!   the count within 2% of what its runtime itself counted over the trace;
//! - the default mode for 3 s: no drop, no top site in the runtime, the samples scaled to
//!   the runtime's count.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, ensure};
use gomemtrace_tests::{
    Proc, TempDir, find_on_path, http_get,
    loopback::{ANSWER_WITHIN, Load, free_port},
    poll, require_root,
    thirdparty::{Served, default_by_pid, exact_by_pid},
};

const CLIENTS: usize = 4;
/// All clients together: a bounded load (traced in exact mode the server answers fewer).
const REQUESTS_PER_SECOND: u64 = 300;
const TRACED_REQUESTS: u64 = 2000;
const LONGEST_TRACE: Duration = Duration::from_secs(10);
const OWN_PACKAGES: &str = "github.com/prometheus/";
/// What the clients ask, in turn: the query API, the label API and the self-metrics.
const PATHS: [&str; 3] = [
    "/api/v1/query?query=up",
    "/api/v1/label/__name__/values",
    "/metrics",
];

fn serve<'a>(prometheus: &Path, tmp: &TempDir) -> Result<Served<'a>> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    std::fs::write(
        tmp.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\nscrape_configs:\n  \
             - job_name: self\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )?;
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!(
        "--config.file={}",
        tmp.join("prometheus.yml").display()
    ))
    .arg(format!("--web.listen-address={addr}"))
    .arg(format!(
        "--storage.tsdb.path={}",
        tmp.join("data").display()
    ))
    .arg("--log.level=error");
    let server = Proc::spawn(cmd)?;
    poll("prometheus ready", Duration::from_secs(60), || {
        Ok(http_get(&addr, "/-/ready", Duration::from_secs(2))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|_| ()))
    })?;
    let load = Load::start(CLIENTS, REQUESTS_PER_SECOND, move |c, i| {
        let path = PATHS[(c + i as usize) % PATHS.len()];
        let (status, body) = http_get(&addr, path, ANSWER_WITHIN)?;
        ensure!(
            status == 200 && !body.is_empty(),
            "GET {path}: {status}, {} bytes",
            body.len()
        );
        Ok(())
    });
    Ok(Served {
        name: "prometheus",
        own_packages: OWN_PACKAGES,
        server,
        load,
    })
}

fn prometheus() -> Option<std::path::PathBuf> {
    let found = find_on_path("prometheus");
    if found.is_none() {
        println!("SKIP: prometheus is not installed (scripts/setup.sh installs Debian's)");
    }
    found
}

#[test]
fn prometheus_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(prometheus) = prometheus() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-prometheus-exact")?;
    exact_by_pid(
        serve(&prometheus, &tmp)?,
        &tmp,
        TRACED_REQUESTS,
        LONGEST_TRACE,
    )
}

#[test]
fn prometheus_default_mode_by_pid() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(prometheus) = prometheus() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-prometheus-default")?;
    default_by_pid(serve(&prometheus, &tmp)?, &tmp)
}
