//! Real servers under a bounded loopback load, traced by pid: the client threads that keep
//! a server busy, and an exact trace that runs until the server has answered a number of
//! requests (or a deadline passes), then gets Ctrl-C.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{Finished, Proc};

/// How long a client waits for one answer: a server traced in exact mode on a loaded
/// machine answers slowly (Prometheus's /metrics once took over 10 s at a load of 30).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A free TCP port on loopback (free when asked; the server binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Client threads, each calling `request(client, i)` for i = 0, 1, ... until stopped, all
/// together at most `per_second` a second (a bounded load: unpaced clients on a 2-core
/// machine starve everything else, the tracer and the other tests included).
pub struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Result<()>>>,
}

impl Load {
    pub fn start(
        clients: usize,
        per_second: u64,
        request: impl Fn(usize, u64) -> Result<()> + Send + Sync + 'static,
    ) -> Load {
        let every = Duration::from_secs_f64(clients as f64 / per_second.max(1) as f64);
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let request = Arc::new(request);
        let clients = (0..clients)
            .map(|c| {
                let (stop, requests, request) = (stop.clone(), requests.clone(), request.clone());
                std::thread::spawn(move || -> Result<()> {
                    let (mut i, start) = (0, Instant::now());
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(wait) =
                            (start + every * i as u32).checked_duration_since(Instant::now())
                        {
                            std::thread::sleep(wait);
                        }
                        request(c, i)?;
                        requests.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            requests,
            clients,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops the clients; the requests answered, or the first client's failure.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(self.requests())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `tracer` (a `gomemtrace -p` command) until it says it attached, then until `load`
/// has answered `requests` more or `longest` has passed, then sends it Ctrl-C and waits
/// for its report.
pub fn trace_until(
    tracer: std::process::Command,
    load: &Load,
    requests: u64,
    longest: Duration,
) -> Result<Finished> {
    let mut tracer = Proc::spawn(tracer)?;
    tracer.wait_stderr("attached", Duration::from_secs(30))?;
    let (at_attach, attached) = (load.requests(), Instant::now());
    while load.requests() - at_attach < requests && attached.elapsed() < longest {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{} requests traced in {:?}",
        load.requests() - at_attach,
        attached.elapsed()
    );
    tracer.signal(libc::SIGINT)?;
    tracer.wait(Duration::from_secs(300))
}
