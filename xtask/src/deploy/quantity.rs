//! Kubernetes resource quantities ("10m", "64Mi"), enough to compare requests with the
//! agent's footprint goal.

use anyhow::{Context as _, bail};

/// CPU in millicores: "10m" → 10, "0.5" → 500, "2" → 2000.
pub fn millicores(quantity: &str) -> anyhow::Result<f64> {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse().context("cpu quantity"),
        None => Ok(quantity.parse::<f64>().context("cpu quantity")? * 1000.0),
    }
}

/// Memory in bytes: "64Mi", "80M", "1Gi", "1048576".
pub fn bytes(quantity: &str) -> anyhow::Result<f64> {
    const SUFFIXES: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return Ok(number.parse::<f64>().context("memory quantity")? * factor);
        }
    }
    match quantity.parse::<f64>() {
        Ok(n) => Ok(n),
        Err(_) => bail!("unsupported memory quantity {quantity:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_kubernetes_suffixes() {
        assert_eq!(millicores("10m").unwrap(), 10.0);
        assert_eq!(millicores("0.25").unwrap(), 250.0);
        assert_eq!(bytes("64Mi").unwrap(), 67_108_864.0);
        assert_eq!(bytes("1G").unwrap(), 1e9);
        assert!(bytes("64MiB").is_err());
    }
}
