//! `--web-config-file`: TLS and basic auth for the HTTP server, in the Prometheus
//! exporters' format (exporter-toolkit's `--web.config.file`):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt   # PEM; relative paths are relative to this file
//!   key_file: server.key
//! basic_auth_users:
//!   prometheus: $2y$10$...  # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Read once at start; every problem is one [`UserError::BadArgument`]. Other
//! exporter-toolkit keys (client certificates, cipher suites, HTTP/2, headers) are refused,
//! not ignored: they are security settings.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::HeaderValue;
use base64::Engine as _;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use serde::Deserialize;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::error::UserError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFiles>,
    /// Empty (`basic_auth_users:`) is none.
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What a web-config file asks for.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl WebConfig {
    /// One line for the start-up log: `https, basic auth (2 users)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.tls.is_some() { "https" } else { "http" }.to_string()];
        if let Some(auth) = &self.auth {
            parts.push(format!("basic auth ({} users)", auth.users.len()));
        }
        parts.join(", ")
    }
}

/// Reads and checks the file: its YAML, the certificate and key (loaded into a rustls
/// server configuration), each bcrypt hash.
pub fn load(path: &Path) -> Result<WebConfig, UserError> {
    let bad = |reason: &dyn std::fmt::Display| UserError::BadArgument {
        what: format!("--web-config-file {}", path.display()),
        // One line, whatever the parser or the file system said.
        reason: reason
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    let file = parse(&text).map_err(|e| bad(&e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = file
        .tls_server_config
        .map(|files| server_config(dir, &files).map(Arc::new))
        .transpose()
        .map_err(|e| bad(&e))?;
    let auth = match file.basic_auth_users {
        Some(users) if !users.is_empty() => {
            Some(Arc::new(BasicAuth::new(users).map_err(|e| bad(&e))?))
        }
        _ => None,
    };
    Ok(WebConfig { tls, auth })
}

/// What is wrong with the file, in one line (it becomes the bad-argument message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Problem(String);

impl From<String> for Problem {
    fn from(reason: String) -> Self {
        Problem(reason)
    }
}

fn parse(text: &str) -> Result<File, Problem> {
    let options = serde_saphyr::options! { with_snippet: false };
    // An empty file (or one of comments) asks for nothing, as for exporter-toolkit.
    serde_saphyr::from_str_with_options::<Option<File>>(text, options)
        .map(Option::unwrap_or_default)
        .map_err(|e| Problem(e.without_snippet().to_string()))
}

fn server_config(dir: &Path, files: &TlsFiles) -> Result<ServerConfig, Problem> {
    let read = |key: &str, file: &Path| {
        let path = dir.join(file);
        std::fs::read(&path)
            .map(|bytes| (path.clone(), bytes))
            .map_err(|e| {
                format!(
                    "tls_server_config.{key} {}: cannot read it: {e}",
                    path.display()
                )
            })
    };
    let (cert_path, cert_pem) = read("cert_file", &files.cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(Problem::from(format!(
            "tls_server_config.cert_file {}: no PEM certificate in it",
            cert_path.display()
        )));
    }
    let (key_path, key_pem) = read("key_file", &files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls_server_config.key_file {}: no PEM private key in it ({e})",
            key_path.display()
        )
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "tls_server_config: certificate {} and key {}: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Most `Authorization` values remembered as verified: bcrypt costs tens of milliseconds
/// a check by design, too much for every scrape.
const VERIFIED_CACHE: usize = 64;

/// `basic_auth_users`: user → bcrypt hash.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Checked against when the user is unknown, so that an unknown user takes as long
    /// as a wrong password.
    decoy: String,
    /// `Authorization` header values that verified.
    verified: Mutex<HashSet<Vec<u8>>>,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<Self, Problem> {
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(Problem::from(format!(
                    "basic_auth_users: user {user:?}: a basic-auth user name has no ':'"
                )));
            }
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                format!("basic_auth_users.{user}: not a bcrypt hash ($2a$, $2b$ or $2y$): {e}")
            })?;
        }
        let decoy = bcrypt::hash("gomemtrace", 10).map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            users: users.into_iter().collect(),
            decoy,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether `authorization` (the request's header) is `Basic` with a known user and
    /// that user's password.
    pub async fn allows(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let key = value.as_bytes().to_vec();
        if self.cache().contains(&key) {
            return true;
        }
        let Some((user, password)) = credentials(value) else {
            return false;
        };
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || match this.users.get(&user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &this.decoy);
                false
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut cache = self.cache();
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Basic base64(user:password)` → (user, password).
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A connection's TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP listener behind TLS, for `axum::serve`: handshakes run in their own tasks, so
/// a slow or silent client holds up no one else.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Within a Tokio runtime.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (send, accepted) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            while !send.is_closed() {
                let (tcp, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    // Out of file descriptors and the like: as axum::serve, wait and retry.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let send = send.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        let _ = send.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_asks_for_nothing() {
        for text in ["", "# nothing\n", "basic_auth_users:\n"] {
            let file = parse(text).unwrap();
            assert!(file.tls_server_config.is_none());
            assert!(file.basic_auth_users.unwrap_or_default().is_empty());
        }
    }

    #[test]
    fn unknown_keys_are_refused_in_one_line() {
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n")
            .unwrap_err();
        assert!(e.0.contains("client_auth_type"), "{e}");
        let e = parse("http_server_config:\n  http2: false\n").unwrap_err();
        assert!(e.0.contains("http_server_config"), "{e}");
    }

    #[test]
    fn users_and_tls_files() {
        let file = parse(
            "tls_server_config:\n  cert_file: /etc/tls/tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: $2y$10$abc\n",
        )
        .unwrap();
        let tls = file.tls_server_config.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/tls/tls.crt"));
        assert_eq!(tls.key_file, Path::new("tls.key"));
        assert_eq!(file.basic_auth_users.unwrap()["prometheus"], "$2y$10$abc");
    }

    #[test]
    fn bad_hashes_and_user_names_are_refused() {
        let users = |user: &str, hash: &str| BTreeMap::from([(user.to_string(), hash.to_string())]);
        assert!(BasicAuth::new(users("p", "secret")).is_err());
        let hash = bcrypt::hash("pw", 4).unwrap();
        assert!(BasicAuth::new(users("a:b", &hash)).is_err());
        assert!(BasicAuth::new(users("p", &hash)).is_ok());
    }

    #[tokio::test]
    async fn basic_auth_checks_user_and_password() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([("p".to_string(), hash)])).unwrap());
        let basic = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(auth.allows(Some(&basic("p:pw"))).await);
        // Cached, and still right.
        assert!(auth.allows(Some(&basic("p:pw"))).await);
        assert!(!auth.allows(Some(&basic("p:wrong"))).await);
        assert!(!auth.allows(Some(&basic("q:pw"))).await);
        assert!(
            !auth
                .allows(Some(&HeaderValue::from_static("Bearer x")))
                .await
        );
        assert!(!auth.allows(None).await);
    }
}
