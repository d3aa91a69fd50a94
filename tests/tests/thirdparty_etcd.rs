//! A third-party server traced by pid in exact mode: Debian's etcd 3.4.23 (Go 1.19.8;
//! `scripts/setup.sh` installs etcd-server) on loopback takes puts through its HTTP
//! gateway from four client threads (1,500 puts/s) while `gomemtrace --exact -p PID`
//! traces it until etcd has answered 3,000 puts (2 s at that rate; longer on a loaded
//! machine, where etcd, slowed by the probes, answers fewer), or for at most 10 s, then
//! gets Ctrl-C.
//! Before gomemtrace drained its maps while tracing, such a run lost 63% of its events
//! (`alloc_map_full`). Now: no event lost or kept without its stack, every event in a
//! sample, most bytes under etcd's own frames, and the count within 2% of what etcd's
//! runtime itself counted over the trace (its allocation counters, read from the process
//! at attach and at the end: every allocation call is one object there too).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, ensure};
use base64::Engine as _;
use gomemtrace_tests::{
    Proc, TempDir, exact_report::check_exact_report, find_on_path, gomemtrace_command, http_get,
    http_post, poll, require_root,
};

const CLIENTS: usize = 4;
/// Puts per second, all clients together (the rate the issue measured drops at). Each put
/// is a new connection, so a new goroutine in etcd: its keys (goroutine × stack) and the
/// json report grow with the count (~11 KB of json per put).
const PUTS_PER_SECOND: u64 = 1500;
/// Puts answered while traced: ~39 keys each (a goroutine per connection), so well over the
/// 65,536 keys one allocation buffer holds.
const TRACED_PUTS: u64 = 3000;
/// The longest trace: the report grows with the time traced too (etcd's own background
/// work), and a debug build writes a report of a million keys slowly.
const LONGEST_TRACE: Duration = Duration::from_secs(10);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn etcd_under_puts_exact_by_pid_keeps_every_event() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(etcd) = find_on_path("etcd") else {
        println!("SKIP: etcd is not installed (scripts/setup.sh installs Debian's etcd-server)");
        return Ok(());
    };
    let tmp = TempDir::new("thirdparty-etcd")?;
    let (client, peer) = (free_port()?, free_port()?);
    let addr = format!("127.0.0.1:{client}");
    let mut cmd = Command::new(&etcd);
    cmd.arg("--data-dir")
        .arg(tmp.join("data"))
        .args(["--name", "default"])
        .arg(format!("--listen-client-urls=http://{addr}"))
        .arg(format!("--advertise-client-urls=http://{addr}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .args(["--log-level", "error"]);
    let mut server = Proc::spawn(cmd)?;
    poll("etcd's /health", Duration::from_secs(30), || {
        Ok(http_get(&addr, "/health", Duration::from_secs(2))
            .ok()
            .filter(|(status, body)| *status == 200 && body.windows(4).any(|w| w == b"true"))
            .map(|_| ()))
    })?;

    // Puts of distinct keys with 256-byte values until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, puts, addr) = (stop.clone(), puts.clone(), addr.clone());
            std::thread::spawn(move || -> Result<()> {
                let b64 = base64::engine::general_purpose::STANDARD;
                let value = b64.encode(vec![b'v'; 256]);
                let mut i = 0u64;
                let every = Duration::from_secs(1) * CLIENTS as u32 / PUTS_PER_SECOND as u32;
                let start = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(wait) =
                        (start + every * i as u32).checked_duration_since(std::time::Instant::now())
                    {
                        std::thread::sleep(wait);
                    }
                    let key = b64.encode(format!("/gomemtrace/{c}/{i}"));
                    let body = format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}");
                    let (status, reply) = http_post(
                        &addr,
                        "/v3/kv/put",
                        body.as_bytes(),
                        Duration::from_secs(10),
                    )?;
                    ensure!(
                        status == 200,
                        "put: {status} {}",
                        String::from_utf8_lossy(&reply)
                    );
                    puts.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let report_path = tmp.join("r.json");
    let mut cmd = gomemtrace_command()?;
    cmd.args(["--exact", "--totals", "probes", "--format", "json", "-o"])
        .arg(&report_path)
        .arg("-p")
        .arg(server.pid().to_string());
    let started = std::time::Instant::now();
    let traced = (|| -> Result<_> {
        let mut tracer = Proc::spawn(cmd)?;
        tracer.wait_stderr("attached", Duration::from_secs(30))?;
        let (at_attach, attached) = (puts.load(Ordering::Relaxed), std::time::Instant::now());
        while puts.load(Ordering::Relaxed) - at_attach < TRACED_PUTS
            && attached.elapsed() < LONGEST_TRACE
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{} puts traced in {:?}",
            puts.load(Ordering::Relaxed) - at_attach,
            attached.elapsed()
        );
        tracer.signal(libc::SIGINT)?;
        tracer.wait(Duration::from_secs(300))
    })();
    println!("gomemtrace ran {:?}", started.elapsed());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let _ = server.signal(libc::SIGTERM);
    let _ = server.wait(Duration::from_secs(20));
    let out = traced?;
    ensure!(
        out.code() == 0,
        "gomemtrace exited {}:\n{}",
        out.code(),
        out.stderr
    );
    let json = std::fs::read_to_string(&report_path)?;
    let figures = check_exact_report(&json, "go.etcd.io/etcd/")?;
    let report = &figures.report;
    println!(
        "report of {} bytes parsed at {:?}",
        json.len(),
        started.elapsed()
    );
    let done = puts.load(Ordering::Relaxed);
    println!(
        "etcd: {done} puts in all, {} allocation events traced",
        report.events
    );
    ensure!(done >= PUTS_PER_SECOND, "only {done} puts");
    // More keys than one allocation buffer holds: the drain was needed.
    println!("{} samples (keys)", report.samples.len());
    ensure!(
        report.samples.len() > 65_536,
        "only {} keys: the trace did not need the drain",
        report.samples.len()
    );
    // The stacks reach etcd's own code.
    figures.own_share_at_least(0.5, "go.etcd.io/etcd/")?;
    println!(
        "runtime counters over the trace: {} objects (read at the end: {})",
        figures.counted_objects, figures.counted_at_end
    );
    ensure!(figures.counted_at_end, "etcd was running at the end");
    figures.events_match_the_runtime(0.02)?;
    Ok(())
}
