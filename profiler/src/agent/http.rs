//! The HTTP endpoints of the contract: /metrics, /healthz, /readyz and the pprof
//! profiles under /debug/pprof/.
//!
//! The profile endpoints hold a request for up to `seconds` (and a subcommand, or a
//! blocking thread to symbolize): at most `--max-profile-requests` of them run at once,
//! the others are refused at once (429). /metrics, /healthz and /readyz take no slot and
//! never wait behind them. With basic auth (`--web-config-file`), everything but /healthz
//! and /readyz needs the credentials.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::IntCounter;
use tokio::sync::Semaphore;

use crate::agent::{Shared, profiles, webconfig::BasicAuth};

/// Longest `seconds=` window (docs/AGENT.md): longer ones are refused with 400.
pub const MAX_SECONDS: u64 = 600;
const DEFAULT_SECONDS: u64 = 30;
/// A window's start waits at most this long for a just-attached process's first harvest
/// (the tracer harvests every second).
const HARVEST_WAIT: Duration = Duration::from_secs(5);

/// The HTTP server's limits and access control.
pub struct Options {
    /// Profile requests in flight at once (`--max-profile-requests`).
    pub max_profile_requests: usize,
    /// `basic_auth_users` of `--web-config-file`.
    pub auth: Option<Arc<BasicAuth>>,
}

pub fn router(shared: Arc<Shared>, options: Options) -> Router {
    let rejected = shared
        .metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .http_rejected
        .clone();
    let slots = ProfileSlots {
        slots: Arc::new(Semaphore::new(options.max_profile_requests)),
        max: options.max_profile_requests,
        rejected: rejected.with_label_values(&["busy"]),
    };
    let profiles = Router::new()
        .route("/debug/pprof/allocs", get(allocs))
        .route("/debug/pprof/heap", get(heap))
        .route("/debug/pprof/goroutines", get(goroutines))
        .route("/debug/pprof/stackgrowth", get(stackgrowth))
        .route_layer(from_fn_with_state(slots, limit_profiles));
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .merge(profiles);
    if let Some(auth) = options.auth {
        // Outside the slots: a request without credentials takes none.
        let guard = Guard {
            auth,
            rejected: rejected.with_label_values(&["unauthorized"]),
        };
        protected = protected.route_layer(from_fn_with_state(guard, require_auth));
    }
    // The probes' endpoints say nothing but whether the agent is up: no credentials, so
    // that Kubernetes probes need none.
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(shared)
}

/// The profile requests' slots.
#[derive(Clone)]
struct ProfileSlots {
    slots: Arc<Semaphore>,
    max: usize,
    rejected: IntCounter,
}

/// Runs a profile request in a free slot (held until its response is ready, or its
/// client went away), or refuses it at once.
async fn limit_profiles(
    State(slots): State<ProfileSlots>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_slot) = slots.slots.try_acquire() else {
        slots.rejected.inc();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            format!(
                "{} profile requests already in flight (--max-profile-requests): try again when one has finished\n",
                slots.max
            ),
        )
            .into_response();
    };
    next.run(request).await
}

#[derive(Clone)]
struct Guard {
    auth: Arc<BasicAuth>,
    rejected: IntCounter,
}

async fn require_auth(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if guard
        .auth
        .allows(request.headers().get(header::AUTHORIZATION))
        .await
    {
        return next.run(request).await;
    }
    guard.rejected.inc();
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"gomemtrace\"")],
        "unauthorized: basic-auth credentials of --web-config-file needed\n",
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = super::metrics::render(&shared.registry);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.beating() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "agent loop stalled\n").into_response()
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(std::sync::atomic::Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "probes loading or first /proc scan running\n",
        )
            .into_response()
    }
}

/// A refused request: status and one line.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    let mut text = message.into();
    text.push('\n');
    (status, text)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    refuse(status, message).into_response()
}

/// The traced process a query names: `pid=`, or `pod=` + `namespace=`.
fn select(shared: &Shared, query: &HashMap<String, String>) -> Result<u32, Refusal> {
    let tables = shared.tables.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pid) = query.get("pid") {
        let pid: u32 = pid
            .parse()
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("pid={pid}: not a pid")))?;
        return if tables.by_pid.contains_key(&pid) {
            Ok(pid)
        } else {
            Err(refuse(
                StatusCode::NOT_FOUND,
                format!("pid {pid} is not traced"),
            ))
        };
    }
    let (Some(pod), Some(namespace)) = (query.get("pod"), query.get("namespace")) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "name the process: pid=PID, or pod=NAME&namespace=NS",
        ));
    };
    let mut pids: Vec<u32> = tables
        .by_pid
        .iter()
        .filter(|(_, t)| &t.process.labels.pod == pod && &t.process.labels.namespace == namespace)
        .map(|(&pid, _)| pid)
        .collect();
    pids.sort_unstable();
    match pids.as_slice() {
        [] => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no traced process in pod {namespace}/{pod}"),
        )),
        [pid] => Ok(*pid),
        many => Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "pod {namespace}/{pod} has {} traced processes (pids {many:?}): add pid=",
                many.len()
            ),
        )),
    }
}

fn seconds(query: &HashMap<String, String>) -> Result<Duration, Refusal> {
    let Some(text) = query.get("seconds") else {
        return Ok(Duration::from_secs(DEFAULT_SECONDS));
    };
    match text.parse::<u64>() {
        Ok(s) if (1..=MAX_SECONDS).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("seconds={text}: a whole number from 1 to {MAX_SECONDS}"),
        )),
    }
}

fn pprof_response(bytes: Vec<u8>, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.pb.gz\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// Allocations during the next `seconds`.
async fn allocs(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (pid, duration) = match select(&shared, &query).and_then(|p| Ok((p, seconds(&query)?))) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let table_of = |shared: &Shared| {
        shared
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_pid
            .get(&pid)
            .cloned()
    };
    // A process attached since the last harvest has an empty table: the window starts
    // at the next harvest, not at attach.
    let mut start = table_of(&shared);
    let deadline = tokio::time::Instant::now() + HARVEST_WAIT;
    while start.as_ref().is_some_and(|t| !t.harvested) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        start = table_of(&shared);
    }
    let Some(start) = start else {
        return error(StatusCode::GONE, format!("pid {pid} exited"));
    };
    if !start.harvested {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pid {pid}: its probe maps were not read within {HARVEST_WAIT:?}"),
        );
    }
    tokio::time::sleep(duration).await;
    let Some(end) = table_of(&shared) else {
        return error(
            StatusCode::GONE,
            format!("pid {pid} exited during the window"),
        );
    };
    let shared2 = shared.clone();
    let built = tokio::task::spawn_blocking(move || {
        let stacks = shared2
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stacks
            .clone();
        profiles::pprof(Some(&start), &end, &stacks, duration)
    })
    .await;
    match built {
        Ok(Ok(bytes)) => pprof_response(bytes, "allocs"),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runtime-sampled mode: of the objects allocated since the agent attached, those still
/// live (inuse_*), with what was allocated (alloc_*).
async fn heap(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pid = match select(&shared, &query) {
        Ok(pid) => pid,
        Err(refusal) => return refusal.into_response(),
    };
    let built = tokio::task::spawn_blocking(move || {
        // Copied out: symbolizing must not hold up the agent's loop.
        let (table, stacks) = {
            let tables = shared.tables.lock().unwrap_or_else(|e| e.into_inner());
            (tables.by_pid.get(&pid)?.clone(), tables.stacks.clone())
        };
        if table.process.mode() != gomemtrace_report::model::Mode::Runtime {
            return Some(Err(anyhow::anyhow!(
                "pid {pid}: in-use heap needs runtime-sampled mode (the heap sampler's frees); this process is traced in exact mode"
            )));
        }
        let since = table.process.attached_at.elapsed();
        Some(profiles::pprof(None, &table, &stacks, since))
    })
    .await;
    match built {
        Ok(Some(Ok(bytes))) => pprof_response(bytes, "heap"),
        Ok(Some(Err(e))) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        Ok(None) => error(StatusCode::GONE, format!("pid {pid} exited")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn goroutines(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    subcommand(shared, query, "goroutines").await
}

async fn stackgrowth(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    subcommand(shared, query, "stackgrowth").await
}

/// The goroutine and stack-growth views need their own probes for the window: the
/// one-process subcommand runs for `seconds` and hands its pprof over a pipe.
async fn subcommand(
    shared: Arc<Shared>,
    query: HashMap<String, String>,
    view: &'static str,
) -> Response {
    let (pid, duration) = match select(&shared, &query).and_then(|p| Ok((p, seconds(&query)?))) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let output = tokio::process::Command::new(&shared.self_exe)
        .args([
            view,
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{}s", duration.as_secs()),
            "--format",
            "pprof",
            "-q",
        ])
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => pprof_response(out.stdout, view),
        Ok(out) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "gomemtrace {view}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("run gomemtrace {view}: {e}"),
        ),
    }
}
