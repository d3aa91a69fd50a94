//! Go toolchain versions as found in a binary's buildinfo (`go1.27.3`, `go1.26rc1`, ...).

use std::fmt;

/// A Go release: `go1.MINOR.PATCH`. Pre-releases (`go1.26rc1`) have patch 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `go1.21.13`, `go1.22`, `go1.26rc1`, `go1.27.3 X:nosizespecializedmalloc`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.trim().strip_prefix("go")?;
        let rest = rest.split([' ', '-', '+']).next()?;
        let mut parts = rest.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor_str = parts.next()?;
        let digits: String = minor_str
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let minor = digits.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap_or(0),
            None => 0,
        };
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// `(major, minor)`, the granularity at which runtime layouts change.
    pub fn release(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(
            GoVersion::parse("go1.21.13"),
            Some(GoVersion::new(1, 21, 13))
        );
        assert_eq!(GoVersion::parse("go1.22"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(
            GoVersion::parse("go1.26rc1"),
            Some(GoVersion::new(1, 26, 0))
        );
        assert_eq!(
            GoVersion::parse("go1.27.3 X:nosizespecializedmalloc"),
            Some(GoVersion::new(1, 27, 3))
        );
        assert_eq!(GoVersion::parse("devel"), None);
        assert!(GoVersion::new(1, 25, 0) > GoVersion::new(1, 24, 11));
    }
}
