//! A third-party web server traced by pid: Debian's caddy 2.6.2 (Go 1.19.8, stripped, cgo;
//! `scripts/setup.sh` installs it) serving a generated tree of files on loopback to four
//! client threads (a new connection per request), traced by `gomemtrace -p PID`:
//!
//! - exact mode until caddy has answered `TRACED_REQUESTS` (or for at most 10 s), then
//!   Ctrl-C: no event lost or kept without its stack, most bytes under caddy's own frames,
//!   and the count within 2% of what caddy's runtime itself counted over the trace (its
//!   allocation counters, read from the process at attach and at the end);
//! - the default mode for 3 s: what `auto` picks for this binary, no drop, the sites on
//!   top outside the runtime, and the samples scaled to the runtime's count.

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
const REQUESTS_PER_SECOND: u64 = 1000;
const FILES: usize = 200;
/// Requests answered while traced in exact mode: a goroutine per connection, so tens of
/// thousands of keys (goroutine × stack × type).
const TRACED_REQUESTS: u64 = 3000;
const LONGEST_TRACE: Duration = Duration::from_secs(10);
const OWN_PACKAGES: &str = "github.com/caddyserver/caddy/";

/// caddy serving `FILES` files of 1–8 KiB, and clients fetching them.
fn serve<'a>(caddy: &Path, tmp: &TempDir) -> Result<Served<'a>> {
    let root = tmp.join("site");
    std::fs::create_dir_all(&root)?;
    let size = |i: usize| (1 + i % 8) * 1024;
    for i in 0..FILES {
        let body: String = (0..size(i))
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        std::fs::write(root.join(format!("f{i}.txt")), body)?;
    }
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(caddy);
    cmd.args(["file-server", "--listen", &addr, "--root"])
        .arg(&root)
        .env("HOME", tmp.join("home"))
        .env("XDG_DATA_HOME", tmp.join("data"))
        .env("XDG_CONFIG_HOME", tmp.join("config"));
    let server = Proc::spawn(cmd)?;
    poll("caddy serving", Duration::from_secs(30), || {
        Ok(http_get(&addr, "/f0.txt", Duration::from_secs(2))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|_| ()))
    })?;
    let load = Load::start(CLIENTS, REQUESTS_PER_SECOND, move |c, i| {
        let file = (c + CLIENTS * i as usize) % FILES;
        let (status, body) = http_get(&addr, &format!("/f{file}.txt"), ANSWER_WITHIN)?;
        ensure!(
            status == 200 && body.len() == size(file),
            "GET /f{file}.txt: {status}, {} bytes",
            body.len()
        );
        Ok(())
    });
    Ok(Served {
        name: "caddy",
        own_packages: OWN_PACKAGES,
        server,
        load,
    })
}

fn caddy() -> Option<std::path::PathBuf> {
    let found = find_on_path("caddy");
    if found.is_none() {
        println!("SKIP: caddy is not installed (scripts/setup.sh installs Debian's caddy)");
    }
    found
}

#[test]
fn caddy_serving_files_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(caddy) = caddy() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-exact")?;
    exact_by_pid(serve(&caddy, &tmp)?, &tmp, TRACED_REQUESTS, LONGEST_TRACE)
}

#[test]
fn caddy_serving_files_default_mode_by_pid() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(caddy) = caddy() else {
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-caddy-default")?;
    default_by_pid(serve(&caddy, &tmp)?, &tmp)
}
