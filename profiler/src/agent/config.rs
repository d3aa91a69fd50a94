//! The agent's settings, typed (made from the command line in `cli::AgentArgs::config`).

use std::path::PathBuf;

use crate::alloc::plan::ModeRequest;

/// Whether to watch the Kubernetes API for this node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kubernetes {
    /// When `KUBERNETES_SERVICE_HOST` is set (in a pod).
    Auto,
    Always,
    Never,
}

/// The agent's settings, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: std::net::SocketAddr,
    pub web_config_file: Option<PathBuf>,
    pub max_profile_requests: usize,
    pub mode: ModeRequest,
    pub include_exe: Vec<String>,
    pub exclude_exe: Vec<String>,
    pub include_namespace: Vec<String>,
    pub exclude_namespace: Vec<String>,
    /// Every (label, value) must match.
    pub pod_selector: Vec<(String, String)>,
    pub node_name: Option<String>,
    pub kubernetes: Kubernetes,
    pub max_processes: usize,
    pub no_stack_metrics: bool,
    pub pyroscope_url: Option<String>,
    pub pyroscope_interval: std::time::Duration,
}
