//! `gomemtrace agent`'s HTTP surface against a real agent: a flood of profile requests
//! is held to `--max-profile-requests` (the rest refused at once with 429) while /metrics
//! answers; `seconds=` beyond the maximum is a 400; `--web-config-file` serves TLS with
//! basic auth (a certificate made here, a bcrypt hash of a password made here) and a bad
//! file is exit 2 with one line.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use gomemtrace_tests::{
    Proc, TempDir, Variant, agent::listen_address, assert_one_error_line, copy_executable, fixture,
    get_text, gomemtrace_command, http_get, latest_go, poll, require_root, run, samples,
};

/// The agent's default `--max-profile-requests`.
const MAX_PROFILE_REQUESTS: usize = 4;
/// The agent's longest `seconds=` (docs/AGENT.md).
const MAX_SECONDS: u64 = 600;

/// An agent on a loopback port; `addr` from its "listening on" line.
struct Agent {
    proc: Proc,
    addr: String,
}

impl Agent {
    /// Started with `extra` arguments; ready when its "listening on" line is out (the
    /// caller waits for /readyz with its own client).
    fn spawn(include_exe: &str, extra: &[&str]) -> Result<Agent> {
        let mut cmd = gomemtrace_command()?;
        cmd.args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--include-exe",
            include_exe,
        ]);
        cmd.args(extra);
        let proc = Proc::spawn(cmd)?;
        let addr = listen_address(&proc)?;
        Ok(Agent { proc, addr })
    }

    fn wait_ready(&self) -> Result<()> {
        poll("/readyz", Duration::from_secs(20), || {
            Ok((http_get(&self.addr, "/readyz", Duration::from_secs(5))?.0 == 200).then_some(()))
        })
    }
}

#[test]
fn a_flood_of_profile_requests_is_bounded_and_metrics_still_answer() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-http-flood")?;
    let exe = tmp.join("agentload-flood");
    copy_executable(&fixture("agentload", &latest_go(), Variant::Normal)?, &exe)?;
    let agent = Agent::spawn(&exe.display().to_string(), &[])?;
    agent.wait_ready()?;
    // The fixture waits for SIGUSR1 after "ready": attached and idle, a valid target.
    let mut target = Proc::spawn(Command::new(&exe))?;
    target.wait_stdout("ready", Duration::from_secs(10))?;
    let exe_label = exe.display().to_string();
    poll("the agent to attach", Duration::from_secs(10), || {
        let text = get_text(&agent.addr, "/metrics")?;
        Ok((!samples(
            &text,
            "gomemtrace_allocated_bytes_total",
            &[("exe", &exe_label)],
        )
        .is_empty())
        .then_some(()))
    })?;
    let pid = target.pid();

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let addr = agent.addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let (status, body) = http_get(
                    &addr,
                    &format!("/debug/pprof/allocs?pid={pid}&seconds=5"),
                    Duration::from_secs(30),
                )?;
                Ok::<_, anyhow::Error>((status, body, started.elapsed()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The accepted ones are waiting out their window: /metrics does not wait for them.
    let started = Instant::now();
    let metrics = get_text(&agent.addr, "/metrics")?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "/metrics took {took:?} during the flood"
    );
    ensure!(metrics.contains("gomemtrace_agent_build_info"));
    let (status, _) = http_get(&agent.addr, "/healthz", Duration::from_secs(1))?;
    ensure!(status == 200, "/healthz during the flood: {status}");

    let mut accepted = 0;
    let mut refused = 0;
    for request in requests {
        let (status, body, took) = request.join().expect("request thread")?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => {
                accepted += 1;
                ensure!(
                    took >= Duration::from_secs(5),
                    "an accepted window returned after {took:?}"
                );
            }
            429 => {
                refused += 1;
                ensure!(
                    took < Duration::from_secs(1),
                    "a refusal took {took:?}: it should be at once"
                );
                ensure!(
                    text.trim_end().lines().count() == 1 && text.contains("--max-profile-requests"),
                    "the refusal's body: {text:?}"
                );
            }
            other => anyhow::bail!("a flood request: {other} {text}"),
        }
    }
    ensure!(
        accepted == MAX_PROFILE_REQUESTS && refused == 20 - MAX_PROFILE_REQUESTS,
        "{accepted} accepted, {refused} refused of 20"
    );
    let text = get_text(&agent.addr, "/metrics")?;
    let busy = samples(
        &text,
        "gomemtrace_agent_http_rejected_total",
        &[("reason", "busy")],
    );
    ensure!(
        busy == [refused as f64],
        "rejected_total{{reason=busy}}: {busy:?}, {refused} refused"
    );
    // Slots free again once the windows are over.
    let (status, body) = http_get(
        &agent.addr,
        &format!("/debug/pprof/allocs?pid={pid}&seconds=1"),
        Duration::from_secs(10),
    )?;
    ensure!(
        status == 200,
        "after the flood: {status} {}",
        String::from_utf8_lossy(&body)
    );

    for (seconds, status) in [(100_000, 400), (MAX_SECONDS + 1, 400), (0, 400)] {
        let (got, body) = http_get(
            &agent.addr,
            &format!("/debug/pprof/allocs?pid={pid}&seconds={seconds}"),
            Duration::from_secs(2),
        )?;
        let text = String::from_utf8_lossy(&body);
        ensure!(
            got == status && text.contains(&MAX_SECONDS.to_string()),
            "seconds={seconds}: {got} {text}"
        );
    }
    target.signal(libc::SIGUSR1)?;
    target.signal(libc::SIGUSR1)?;
    let _ = target.wait(Duration::from_secs(10));
    drop(agent.proc);
    Ok(())
}

/// A GET over TLS (HTTP/1.0), trusting `ca` only: (status, headers, body).
fn https_get(
    addr: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
    authorization: Option<(&str, &str)>,
) -> Result<(u16, String, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let auth = authorization
        .map(|(user, password)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        })
        .unwrap_or_default();
    write!(tls, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify: the body is complete (HTTP/1.0).
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).context(format!("read GET {path}")),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line of {head}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

#[test]
fn web_config_serves_tls_with_basic_auth() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let tmp = TempDir::new("agent-http-tls")?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    std::fs::write(tmp.join("tls.crt"), certified.cert.pem())?;
    std::fs::write(tmp.join("tls.key"), certified.signing_key.serialize_pem())?;
    let ca = certified.cert.der().clone();
    let hash = bcrypt::hash("s3cret", 4)?;
    let config = tmp.join("web.yml");
    // Relative paths: relative to the file, as for exporter-toolkit.
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
            tmp.join("tls.key").display()
        ),
    )?;
    let agent = Agent::spawn(
        "/nonexistent/*",
        &["--web-config-file", &config.display().to_string()],
    )?;
    poll("/readyz over TLS", Duration::from_secs(20), || {
        // The probes' endpoints need no credentials.
        Ok((https_get(&agent.addr, &ca, "/readyz", None)?.0 == 200).then_some(()))
    })?;
    let (status, _, _) = https_get(&agent.addr, &ca, "/healthz", None)?;
    ensure!(status == 200, "/healthz without credentials: {status}");

    let (status, _, body) =
        https_get(&agent.addr, &ca, "/metrics", Some(("prometheus", "s3cret")))?;
    ensure!(
        status == 200 && body.contains("gomemtrace_agent_build_info"),
        "/metrics with the right credentials: {status} {body}"
    );
    for (what, credentials) in [
        ("wrong password", Some(("prometheus", "wrong"))),
        ("unknown user", Some(("someone", "s3cret"))),
        ("no credentials", None),
    ] {
        for path in ["/metrics", "/debug/pprof/allocs?pid=1&seconds=1"] {
            let (status, head, _) = https_get(&agent.addr, &ca, path, credentials)?;
            ensure!(
                status == 401
                    && head
                        .to_ascii_lowercase()
                        .contains("www-authenticate: basic"),
                "{path} with {what}: {status}\n{head}"
            );
        }
    }
    // Plain HTTP on the TLS port: no HTTP answer.
    let plain = http_get(&agent.addr, "/healthz", Duration::from_secs(5));
    ensure!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.0)
    );

    let (_, _, body) = https_get(&agent.addr, &ca, "/metrics", Some(("prometheus", "s3cret")))?;
    let unauthorized = samples(
        &body,
        "gomemtrace_agent_http_rejected_total",
        &[("reason", "unauthorized")],
    );
    ensure!(
        unauthorized == [6.0],
        "rejected_total{{reason=unauthorized}}: {unauthorized:?}"
    );
    Ok(())
}

/// A bad `--web-config-file`: exit 2, one line naming the file, before any probe loads.
#[test]
fn a_bad_web_config_file_exits_2_with_one_line() -> Result<()> {
    let tmp = TempDir::new("agent-http-bad-config")?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = tmp.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let cases = [
        (tmp.join("missing.yml").display().to_string(), "cannot read"),
        (
            write("yaml.yml", "basic_auth_users: [unclosed\n")?,
            "yaml.yml",
        ),
        (
            write(
                "cert.yml",
                "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n",
            )?,
            "nowhere.crt",
        ),
        (
            write("hash.yml", "basic_auth_users:\n  prometheus: plaintext\n")?,
            "bcrypt",
        ),
        (
            write(
                "unknown.yml",
                "tls_server_config:\n  cert_file: a.crt\n  client_ca_file: ca.crt\n",
            )?,
            "client_ca_file",
        ),
    ];
    for (file, needle) in cases {
        let mut cmd = gomemtrace_command()?;
        cmd.args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--web-config-file",
            &file,
        ]);
        let out = run(cmd, Duration::from_secs(20))?;
        ensure!(
            out.code() == 2,
            "{file}: exit {}\n{}",
            out.code(),
            out.stderr
        );
        assert_one_error_line(&file, &out);
        ensure!(
            out.stderr.contains("--web-config-file") && out.stderr.contains(needle),
            "{file}: the error should say {needle:?}:\n{}",
            out.stderr
        );
    }
    Ok(())
}
