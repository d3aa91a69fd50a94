//! `--pyroscope-url`: every `--pyroscope-interval`, each traced process's allocations of
//! that interval go to Pyroscope's ingest API (`POST /ingest`, a multipart form whose
//! `profile` part is a gzipped pprof, as Pyroscope's own Go client sends it), named after
//! the process's container (else its comm) with the agent's bounded labels.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::agent::{
    Shared,
    metadata::Labels,
    profiles::{self, Table},
};

/// How Pyroscope should read our sample types (its Go client sends the same for heap
/// profiles).
const SAMPLE_TYPE_CONFIG: &str = r#"{"alloc_objects":{"units":"objects"},"alloc_space":{"units":"bytes"},"inuse_objects":{"units":"objects","aggregation":"average"},"inuse_space":{"units":"bytes","aggregation":"average"}}"#;

const BOUNDARY: &str = "gomemtrace-pyroscope-boundary-7c1f";

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct Pusher {
    url: String,
    interval: Duration,
    client: HttpsClient,
    /// Each process's table at the previous push.
    previous: HashMap<u32, Table>,
}

impl Pusher {
    pub fn new(url: &str, interval: Duration) -> anyhow::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .or_else(|_| {
                // No CA certificates (a FROM-scratch image): plain http still works.
                Ok::<_, std::io::Error>(
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    ),
                )
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            interval,
            client: Client::builder(TokioExecutor::new()).build(connector),
            previous: HashMap::new(),
        })
    }

    /// Pushes until the agent stops.
    pub async fn run(mut self, shared: Arc<Shared>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if shared.stop.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let (ok, failed) = self.push_all(&shared).await;
            let metrics = shared.metrics.lock().unwrap_or_else(|e| e.into_inner());
            for (result, n) in [("ok", ok), ("error", failed)] {
                metrics
                    .pyroscope_pushes
                    .with_label_values(&[result])
                    .inc_by(n);
            }
        }
    }

    /// One round: (pushed, failed).
    async fn push_all(&mut self, shared: &Arc<Shared>) -> (u64, u64) {
        let (now, stacks) = {
            let tables = shared.tables.lock().unwrap_or_else(|e| e.into_inner());
            (tables.by_pid.clone(), tables.stacks.clone())
        };
        let until = super::unix_seconds();
        let from = until.saturating_sub(self.interval.as_secs());
        let previous = std::mem::take(&mut self.previous);
        let stacks = Arc::new(stacks);
        let (mut ok, mut failed) = (0, 0);
        for (pid, table) in &now {
            if !table.harvested {
                continue;
            }
            let earlier = previous.get(pid).cloned();
            let later = table.clone();
            let stacks = stacks.clone();
            let interval = self.interval;
            let built = tokio::task::spawn_blocking(move || {
                profiles::pprof(earlier.as_ref(), &later, &stacks, interval)
            })
            .await;
            let result = match built {
                Ok(Ok(profile)) => self.post(&table.process.labels, from, until, profile).await,
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("gomemtrace: agent: pyroscope push for pid {pid}: {e:#}");
                }
            }
        }
        self.previous = now;
        (ok, failed)
    }

    async fn post(
        &self,
        labels: &Labels,
        from: u64,
        until: u64,
        profile: Vec<u8>,
    ) -> anyhow::Result<()> {
        let uri = format!(
            "{}/ingest?name={}&from={from}&until={until}&format=pprof&spyName=gomemtrace",
            self.url,
            percent_encode(&application_name(labels)),
        );
        let request = hyper::Request::post(&uri)
            .header(
                hyper::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Full::new(Bytes::from(multipart(&profile))))
            .with_context(|| format!("request to {uri}"))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .context("timed out")?
            .with_context(|| format!("POST {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            anyhow::bail!(
                "{status}: {}",
                body.map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// `app{label=value,...}`: the container (else the comm) and the labels that are set.
/// Characters Pyroscope's name syntax reserves become `_`.
pub fn application_name(labels: &Labels) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_-./:".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let app = if labels.container.is_empty() {
        &labels.comm
    } else {
        &labels.container
    };
    let pairs: Vec<String> = Labels::NAMES
        .iter()
        .zip(labels.values())
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", clean(v)))
        .collect();
    format!("{}.alloc{{{}}}", clean(app), pairs.join(","))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The form: the profile, and how to read its sample types.
fn multipart(profile: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(profile.len() + 1024);
    for (name, filename, content) in [
        ("profile", "profile.pprof", profile),
        (
            "sample_type_config",
            "sample_type_config.json",
            SAMPLE_TYPE_CONFIG.as_bytes(),
        ),
    ] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_set_labels_in_pyroscope_syntax() {
        let labels = Labels {
            namespace: "shop".into(),
            pod: "cart-7d9".into(),
            container: "cart".into(),
            exe: "/app/cart server".into(),
            comm: "cart".into(),
        };
        assert_eq!(
            application_name(&labels),
            "cart.alloc{namespace=shop,pod=cart-7d9,container=cart,exe=/app/cart_server,comm=cart}"
        );
        let host = Labels {
            exe: "/usr/bin/app{x}".into(),
            comm: "app".into(),
            ..Labels::default()
        };
        assert_eq!(
            application_name(&host),
            "app.alloc{exe=/usr/bin/app_x_,comm=app}"
        );
        assert_eq!(percent_encode("a{b=c,d}"), "a%7Bb%3Dc%2Cd%7D");
    }
}
