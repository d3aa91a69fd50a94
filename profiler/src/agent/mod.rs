//! `gomemtrace agent`: every Go process on the node, traced by one set of probes;
//! Prometheus metrics on /metrics and pprof profiles over HTTP (docs/AGENT.md).

mod allocstats;
mod attachments;
mod config;
mod discovery;
mod duty;
mod gc;
mod goroutine_metrics;
mod goroutines;
mod http;
mod kubernetes;
mod metadata;
mod metrics;
mod numa;
mod profiles;
mod pyroscope;
mod stacks;
mod tracer;
mod webconfig;

pub use config::{Config, Kubernetes};

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use crate::{
    agent::{attachments::Attachments, discovery::Filter},
    bpf::{Bpf, ProcEvents},
    engine::preflight,
    error::UserError,
};

/// State shared by the agent's loop and the HTTP handlers.
pub struct Shared {
    pub metrics: Mutex<metrics::Metrics>,
    /// What /metrics renders, without the lock above: the tracer holds that lock while it
    /// harvests (reading every target's counters and goroutines), which under load once
    /// kept a scrape waiting 2.4 s.
    pub registry: prometheus::Registry,
    pub tables: Mutex<profiles::Tables>,
    /// The probes are loaded and the first /proc scan finished.
    pub ready: AtomicBool,
    /// Unix seconds of the loop's latest iteration.
    heartbeat: AtomicU64,
    pub stop: AtomicBool,
    /// This executable, for the views that run as a subcommand.
    pub self_exe: PathBuf,
}

/// The loop is alive if it went round within this many seconds.
const STALLED_AFTER_S: u64 = 10;

impl Shared {
    fn beat(&self) {
        self.heartbeat.store(unix_seconds(), Ordering::Release);
    }

    fn beating(&self) -> bool {
        unix_seconds().saturating_sub(self.heartbeat.load(Ordering::Acquire)) <= STALLED_AFTER_S
    }
}

/// SIGINT or SIGTERM.
async fn stopped() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(args: &Config) -> anyhow::Result<ExitCode> {
    // A bad file is a bad argument: refused before anything is loaded.
    let web = args
        .web_config_file
        .as_deref()
        .map(webconfig::load)
        .transpose()?;
    preflight::check()?;
    let filter = Filter::new(args)?;
    // Every traced process needs a slot in the probes' per-process maps.
    if args.max_processes > gomemtrace_common::MAX_PROCESSES as usize {
        return Err(UserError::BadArgument {
            what: format!("--max-processes {}", args.max_processes),
            reason: format!(
                "at most {} (the probes' per-process map size)",
                gomemtrace_common::MAX_PROCESSES
            ),
        }
        .into());
    }
    let kubernetes = match args.kubernetes {
        Kubernetes::Always => true,
        Kubernetes::Never => false,
        Kubernetes::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    };
    let node = match (kubernetes, &args.node_name) {
        (false, _) => None,
        (true, Some(node)) => Some(node.clone()),
        (true, None) => {
            return Err(UserError::BadArgument {
                what: "--kubernetes".into(),
                reason: "the pod watch needs this node's name: --node-name or NODE_NAME".into(),
            }
            .into());
        }
    };
    let pusher = match &args.pyroscope_url {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return Err(UserError::BadArgument {
                what: format!("--pyroscope-url {url}"),
                reason: "an http:// or https:// URL".into(),
            }
            .into());
        }
        Some(url) => Some(pyroscope::Pusher::new(url, args.pyroscope_interval)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .map_err(|e| UserError::Listen {
            addr: args.listen.to_string(),
            reason: e.to_string(),
        })?;
    let metrics = metrics::Metrics::new()?;
    let shared = Arc::new(Shared {
        registry: metrics.registry(),
        metrics: Mutex::new(metrics),
        tables: Mutex::new(profiles::Tables::default()),
        ready: AtomicBool::new(false),
        heartbeat: AtomicU64::new(unix_seconds()),
        stop: AtomicBool::new(false),
        self_exe: std::env::current_exe().context("this executable's path")?,
    });
    // The one eBPF object every capability of the agent runs in.
    let bpf = Bpf::load()?;
    let attachments = Attachments::new(&bpf, args.mode, args.max_processes)?;
    // Before the /proc scan: a process exec'd during the scan is seen either way.
    let events = ProcEvents::attach(&bpf)?;
    eprintln!(
        "gomemtrace: agent: listening on {}, mode {:?}{}",
        listener.local_addr().unwrap_or(args.listen),
        args.mode,
        web.as_ref()
            .map(|w| format!(", {}", w.describe()))
            .unwrap_or_default()
    );
    let gc = gc::GcTracker::new(&bpf)?;
    let stacks = (!args.no_stack_metrics)
        .then(|| stacks::StackTracker::new(&bpf))
        .transpose()?;
    let numa = match numa::NumaTracker::new(&bpf) {
        Ok(tracker) => Some(tracker),
        Err(why) => {
            eprintln!("gomemtrace: agent: NUMA: not available ({why}); no remote-access metrics");
            None
        }
    };
    shared
        .metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .numa_available
        .set(i64::from(numa.is_some()));
    let pods = node.map(|node| {
        let index = kubernetes::SharedIndex::default();
        runtime.spawn(kubernetes::watch(node, index.clone()));
        index
    });
    let tracer = tracer::Tracer::new(
        attachments,
        tracer::Trackers { gc, stacks, numa },
        events,
        filter,
        shared.clone(),
        pods,
    );
    if let Some(pusher) = pusher {
        runtime.spawn(pusher.run(shared.clone()));
    }
    let tracer = std::thread::Builder::new()
        .name("gomemtrace-agent".into())
        .spawn(move || tracer.run())?;
    let (tls, auth) = web.map_or((None, None), |w| (w.tls, w.auth));
    let app = http::router(
        shared.clone(),
        http::Options {
            max_profile_requests: args.max_profile_requests,
            auth,
        },
    );
    let served = runtime.block_on(async {
        match tls {
            Some(config) => {
                axum::serve(webconfig::TlsListener::new(listener, config)?, app)
                    .with_graceful_shutdown(stopped())
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped())
                    .await
            }
        }
    });
    shared.stop.store(true, Ordering::Release);
    let _ = tracer.join();
    // Handlers still waiting out a window are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served.context("HTTP server")?;
    Ok(ExitCode::SUCCESS)
}
