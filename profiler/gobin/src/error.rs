//! Why a file could not be read as a Go binary.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{object}: not an ELF file: {reason}")]
    NotElf { object: String, reason: String },
    #[error(
        "{object}: truncated or corrupt ELF file: its headers need {needed} bytes, it has {size}"
    )]
    Truncated {
        object: String,
        needed: u64,
        size: u64,
    },
    #[error("{object}: not a Go binary: no Go pclntab")]
    NotGo { object: String },
    #[error("unsupported Go version {version}: need go1.18 or later (pclntab format)")]
    UnsupportedVersion { version: String },
    #[error("malformed Go binary: {what}")]
    Malformed { what: String },
}

impl Error {
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        Error::Malformed { what: what.into() }
    }
}
