//! Which processes the agent looks at: every pid in /proc at start, then those the exec
//! events name; which it keeps: by executable glob and, with Kubernetes metadata, by
//! namespace and pod labels.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{
    agent::{config::Config, metadata::PodInfo},
    error::UserError,
};

/// The identity of an executable file: processes of the same file share its analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExeId {
    pub dev: u64,
    pub ino: u64,
    /// Replaced in place (same inode, new contents) is a different executable.
    pub mtime_ns: i64,
}

/// A process's executable: its identity, `/proc/PID/exe` (opens the very file, in any
/// mount namespace) and its path as the process sees it.
#[derive(Clone, Debug)]
pub struct Exe {
    pub id: ExeId,
    pub link: PathBuf,
    pub path: String,
}

impl Exe {
    /// `None` for kernel threads, exited processes and unreadable ones.
    pub fn of(pid: u32) -> Option<Exe> {
        let link = PathBuf::from(format!("/proc/{pid}/exe"));
        let path = std::fs::read_link(&link).ok()?;
        let meta = std::fs::metadata(&link).ok()?;
        Some(Exe {
            id: ExeId {
                dev: meta.dev(),
                ino: meta.ino(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            },
            link,
            path: path.to_string_lossy().into_owned(),
        })
    }
}

/// Every process id in /proc now.
pub fn scan_proc() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` still runs (a zombie does not).
pub fn is_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// The --include/--exclude options.
pub struct Filter {
    include_exe: Option<GlobSet>,
    exclude_exe: GlobSet,
    include_namespace: Vec<String>,
    exclude_namespace: Vec<String>,
    pod_selector: Vec<(String, String)>,
}

impl Filter {
    pub fn new(args: &Config) -> Result<Self, UserError> {
        let set = |globs: &[String]| -> Result<GlobSet, UserError> {
            let mut builder = GlobSetBuilder::new();
            for glob in globs {
                builder.add(Glob::new(glob).map_err(|e| UserError::BadArgument {
                    what: format!("glob {glob}"),
                    reason: e.kind().to_string(),
                })?);
            }
            builder.build().map_err(|e| UserError::BadArgument {
                what: "exe globs".into(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            include_exe: if args.include_exe.is_empty() {
                None
            } else {
                Some(set(&args.include_exe)?)
            },
            exclude_exe: set(&args.exclude_exe)?,
            include_namespace: args.include_namespace.clone(),
            exclude_namespace: args.exclude_namespace.clone(),
            pod_selector: args.pod_selector.clone(),
        })
    }

    pub fn allows_exe(&self, path: &str) -> bool {
        self.include_exe
            .as_ref()
            .is_none_or(|set| set.is_match(path))
            && !self.exclude_exe.is_match(path)
    }

    /// Namespace and pod filters; `None` (no Kubernetes metadata for the process) passes
    /// only where no namespace or pod filter asks for a match.
    pub fn allows_pod(&self, pod: Option<&PodInfo>) -> bool {
        match pod {
            None => self.include_namespace.is_empty() && self.pod_selector.is_empty(),
            Some(pod) => {
                (self.include_namespace.is_empty()
                    || self.include_namespace.contains(&pod.namespace))
                    && !self.exclude_namespace.contains(&pod.namespace)
                    && self
                        .pod_selector
                        .iter()
                        .all(|(k, v)| pod.labels.get(k) == Some(v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, View};

    fn filter(extra: &[&str]) -> Filter {
        let mut argv = vec!["gomemtrace", "agent"];
        argv.extend_from_slice(extra);
        let Some(View::Agent(args)) = Cli::try_parse_from(argv).unwrap().view else {
            panic!("no agent view");
        };
        Filter::new(&args.config()).unwrap()
    }

    #[test]
    fn exe_globs_include_then_exclude() {
        let all = filter(&[]);
        assert!(all.allows_exe("/usr/local/bin/server"));
        let some = filter(&["--include-exe", "/srv/**", "--exclude-exe", "**/*-debug"]);
        assert!(some.allows_exe("/srv/app/server"));
        assert!(!some.allows_exe("/srv/app/server-debug"));
        assert!(!some.allows_exe("/usr/bin/dockerd"));
    }

    #[test]
    fn namespace_and_selector_need_metadata() {
        let pod = PodInfo {
            namespace: "shop".into(),
            name: "web-1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            containers: Vec::new(),
        };
        assert!(filter(&[]).allows_pod(None));
        assert!(filter(&[]).allows_pod(Some(&pod)));
        let shop = filter(&["--include-namespace", "shop", "--pod-selector", "app=web"]);
        assert!(shop.allows_pod(Some(&pod)));
        assert!(!shop.allows_pod(None));
        assert!(!filter(&["--exclude-namespace", "shop"]).allows_pod(Some(&pod)));
        assert!(!filter(&["--pod-selector", "app=db"]).allows_pod(Some(&pod)));
    }

    #[test]
    fn bad_glob_is_a_user_error() {
        let Some(View::Agent(args)) =
            Cli::try_parse_from(["gomemtrace", "agent", "--include-exe", "a[b"])
                .unwrap()
                .view
        else {
            panic!("no agent view");
        };
        assert!(matches!(
            Filter::new(&args.config()),
            Err(UserError::BadArgument { .. })
        ));
    }
}
