//! `gomemtrace agent`'s options (the contract the DaemonSet manifests are written against).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

use super::ModeArg;
use crate::agent;

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Address of the HTTP server (/metrics, /healthz, /readyz, /debug/pprof/...).
    #[arg(long, default_value = "0.0.0.0:9470", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// TLS and basic auth for the HTTP server: a YAML file in the Prometheus exporters'
    /// format (exporter-toolkit's --web.config.file): tls_server_config {cert_file,
    /// key_file}, basic_auth_users {USER: BCRYPT-HASH}. /healthz and /readyz need no
    /// credentials.
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Most /debug/pprof requests in flight at once; more are refused at once with 429.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_profile_requests: usize,

    /// How allocations are collected, as for the one-process profiler.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Trace only executables whose path matches one of these globs (default: all).
    #[arg(long, value_name = "GLOB")]
    pub include_exe: Vec<String>,

    /// Never trace executables whose path matches one of these globs.
    #[arg(long, value_name = "GLOB")]
    pub exclude_exe: Vec<String>,

    /// Trace only processes of pods in these Kubernetes namespaces.
    #[arg(long, value_name = "NS")]
    pub include_namespace: Vec<String>,

    /// Never trace processes of pods in these Kubernetes namespaces.
    #[arg(long, value_name = "NS")]
    pub exclude_namespace: Vec<String>,

    /// Trace only processes of pods with all these labels.
    #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = parse_selector)]
    pub pod_selector: Option<PodSelector>,

    /// This node's name (Kubernetes: from the downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Label processes with their pod: `auto` when KUBERNETES_SERVICE_HOST is set.
    #[arg(long, value_enum, default_value_t = KubernetesArg::Auto)]
    pub kubernetes: KubernetesArg,

    /// Most processes traced at once; more are counted and left alone.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_processes: usize,

    /// No stack-growth metrics: no uprobe on runtime.copystack (one probe hit per stack
    /// copy; goroutine counts need no probe).
    #[arg(long)]
    pub no_stack_metrics: bool,

    /// Push each process's allocation profile to this Pyroscope server (its /ingest API).
    #[arg(long, value_name = "URL")]
    pub pyroscope_url: Option<String>,

    /// How often to push, each push covering the interval since the previous one.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s", value_name = "DURATION")]
    pub pyroscope_interval: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubernetesArg {
    Auto,
    Always,
    Never,
}

/// `key=value[,key=value]`: every label must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSelector(pub Vec<(String, String)>);

/// A `--pod-selector` item that is not `key=value`.
#[derive(Debug, thiserror::Error)]
#[error("{0}: expected key=value")]
pub struct BadSelector(String);

fn parse_selector(s: &str) -> Result<PodSelector, BadSelector> {
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
            _ => Err(BadSelector(pair.to_string())),
        })
        .collect::<Result<_, _>>()
        .map(PodSelector)
}

impl AgentArgs {
    /// The agent's typed settings.
    pub fn config(&self) -> agent::Config {
        agent::Config {
            listen: self.listen,
            web_config_file: self.web_config_file.clone(),
            max_profile_requests: self.max_profile_requests,
            mode: self.mode.into(),
            include_exe: self.include_exe.clone(),
            exclude_exe: self.exclude_exe.clone(),
            include_namespace: self.include_namespace.clone(),
            exclude_namespace: self.exclude_namespace.clone(),
            pod_selector: self.pod_selector.clone().map(|s| s.0).unwrap_or_default(),
            node_name: self.node_name.clone(),
            kubernetes: match self.kubernetes {
                KubernetesArg::Auto => agent::Kubernetes::Auto,
                KubernetesArg::Always => agent::Kubernetes::Always,
                KubernetesArg::Never => agent::Kubernetes::Never,
            },
            max_processes: self.max_processes,
            no_stack_metrics: self.no_stack_metrics,
            pyroscope_url: self.pyroscope_url.clone(),
            pyroscope_interval: self.pyroscope_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, View};

    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["gomemtrace", "agent"]).unwrap();
        let Some(View::Agent(args)) = cli.view else {
            panic!("no agent view");
        };
        assert_eq!(args.listen.to_string(), "0.0.0.0:9470");
        assert_eq!(args.mode, ModeArg::Auto);
        assert_eq!(args.kubernetes, KubernetesArg::Auto);
        assert_eq!(args.max_processes, 256);
        assert_eq!(args.max_profile_requests, 4);
        assert!(args.web_config_file.is_none());
    }

    #[test]
    fn repeatable_filters_and_selector() {
        let cli = Cli::try_parse_from([
            "gomemtrace",
            "agent",
            "--include-exe",
            "/usr/bin/*",
            "--include-exe",
            "**/server",
            "--pod-selector",
            "app=web,tier=front",
            "--mode",
            "exact",
        ])
        .unwrap();
        let Some(View::Agent(args)) = cli.view else {
            panic!("no agent view");
        };
        assert_eq!(args.include_exe.len(), 2);
        assert_eq!(
            args.pod_selector.unwrap().0,
            vec![
                ("app".into(), "web".into()),
                ("tier".into(), "front".into())
            ]
        );
        assert!(Cli::try_parse_from(["gomemtrace", "agent", "--pod-selector", "app"]).is_err());
    }
}
