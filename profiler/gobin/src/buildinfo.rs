//! `.go.buildinfo`: the Go version and module/build settings (what `go version -m` prints).
//!
//! Layout (Go `debug/buildinfo`): 16-byte magic `\xff Go buildinf:`, byte 14 = pointer
//! size, byte 15 = flags. With `flags & 2` (Go 1.18+) the version and the modinfo follow
//! at offset 32 as uvarint-length-prefixed strings; before that, two pointers at offset 16
//! point to Go string headers.

use crate::bytes::{read_uvarint, u64_le};

pub(crate) const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const FLAG_INLINE_STRINGS: u8 = 2;
const FLAG_BIG_ENDIAN: u8 = 1;

#[derive(Debug, Default)]
pub(crate) struct BuildInfo {
    pub version: String,
    pub main_module: Option<String>,
    pub settings: Vec<(String, String)>,
}

/// Parses a buildinfo blob. `read_vaddr` resolves the pointers of the pre-1.18 form.
pub(crate) fn parse(
    blob: &[u8],
    read_vaddr: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Option<BuildInfo> {
    if blob.get(..14)? != MAGIC {
        return None;
    }
    // The magic may end the blob (a 14-byte section, or the magic at the end of a file).
    let &[ptr_size, flags] = blob.get(14..16)? else {
        return None;
    };
    let ptr_size = usize::from(ptr_size);
    let (version, modinfo) = if flags & FLAG_INLINE_STRINGS != 0 {
        let rest = blob.get(32..)?;
        let (version, rest) = read_length_prefixed(rest)?;
        let modinfo = read_length_prefixed(rest)
            .map(|(m, _)| m)
            .unwrap_or_default();
        (String::from_utf8_lossy(&version).into_owned(), modinfo)
    } else {
        // Pointer form: only little-endian 64-bit is worth supporting here.
        if ptr_size != 8 || flags & FLAG_BIG_ENDIAN != 0 {
            return None;
        }
        let read_go_string = |ptr_slot: u64| -> Option<Vec<u8>> {
            let header = read_vaddr(ptr_slot, 16)?;
            let (data, len) = (u64_le(&header, 0)?, u64_le(&header, 8)?);
            let bytes = read_vaddr(data, usize::try_from(len).ok()?)?;
            Some(bytes)
        };
        let version_ptr = u64_le(blob, 16)?;
        let modinfo_ptr = u64_le(blob, 24)?;
        (
            String::from_utf8_lossy(&read_go_string(version_ptr)?).into_owned(),
            read_go_string(modinfo_ptr).unwrap_or_default(),
        )
    };
    let mut info = BuildInfo {
        version,
        ..Default::default()
    };
    parse_modinfo(&strip_sentinels(&modinfo), &mut info);
    Some(info)
}

fn read_length_prefixed(data: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let (len, n) = read_uvarint(data)?;
    let len = usize::try_from(len).ok()?;
    let end = n.checked_add(len)?;
    Some((data.get(n..end)?.to_vec(), &data[end..]))
}

/// The linker wraps modinfo in two 16-byte binary sentinels; the last one follows a newline.
fn strip_sentinels(bytes: &[u8]) -> String {
    if bytes.len() >= 33 && bytes[bytes.len() - 17] == b'\n' {
        String::from_utf8_lossy(&bytes[16..bytes.len() - 16]).into_owned()
    } else {
        String::new()
    }
}

fn parse_modinfo(modinfo: &str, info: &mut BuildInfo) {
    let mut path = None;
    for line in modinfo.lines() {
        let mut fields = line.split('\t');
        match fields.next() {
            Some("path") => path = fields.next().map(str::to_string),
            Some("mod") => info.main_module = fields.next().map(str::to_string),
            Some("build") => {
                let setting = fields.collect::<Vec<_>>().join("\t");
                if let Some((key, value)) = split_setting(&setting) {
                    info.settings.push((key, value));
                }
            }
            _ => {}
        }
    }
    if info.main_module.is_none() {
        info.main_module = path;
    }
}

/// `KEY=VALUE`, where either side is Go-quoted (`strconv.Quote`) when it holds spaces,
/// tabs, quotes or newlines (`-ldflags="-s -w"`).
fn split_setting(setting: &str) -> Option<(String, String)> {
    let (key, rest) = if setting.starts_with('"') {
        let (key, len) = go_unquote(setting)?;
        (key, setting.get(len..)?.strip_prefix('=')?)
    } else {
        let (key, rest) = setting.split_once('=')?;
        (key.to_string(), rest)
    };
    let value = if rest.starts_with('"') {
        go_unquote(rest).map(|(v, _)| v)?
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// Unquotes a leading Go double-quoted string; returns it and the number of bytes consumed.
fn go_unquote(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, escaped) = chars.next()?;
                match escaped {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'x' => {
                        let hex: String = [chars.next()?.1, chars.next()?.1].iter().collect();
                        out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                    }
                    other => out.push(other),
                }
            }
            other => out.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_settings() {
        assert_eq!(
            split_setting("CGO_ENABLED=0"),
            Some(("CGO_ENABLED".into(), "0".into()))
        );
        assert_eq!(
            split_setting(r#"-ldflags="-s -w""#),
            Some(("-ldflags".into(), "-s -w".into()))
        );
        assert_eq!(
            split_setting(r#"-gcflags="a\"b""#),
            Some(("-gcflags".into(), "a\"b".into()))
        );
    }

    #[test]
    fn the_magic_alone_is_no_buildinfo() {
        // Fuzz crash (buildinfo): a blob of the 14 magic bytes alone was indexed past its end.
        assert!(parse(MAGIC, |_, _| None).is_none());
        assert!(parse(&[MAGIC.as_slice(), &[8]].concat(), |_, _| None).is_none());
    }

    #[test]
    fn a_length_past_the_address_space_is_refused() {
        // A uvarint length of 2^64 - 1 overflowed the end of the string.
        let mut data = vec![0xff; 9];
        data.push(0x01);
        data.extend_from_slice(b"go1.22");
        assert!(read_length_prefixed(&data).is_none());
    }

    #[test]
    fn parses_inline_form() {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[8, FLAG_INLINE_STRINGS]);
        blob.resize(32, 0);
        let version = b"go1.27.3";
        blob.push(version.len() as u8);
        blob.extend_from_slice(version);
        let modinfo = format!(
            "{}path\tprog\nmod\tprog\t(devel)\t\nbuild\tGOOS=linux\n{}",
            "0".repeat(16),
            "1".repeat(16)
        );
        blob.push(modinfo.len() as u8);
        blob.extend_from_slice(modinfo.as_bytes());
        let info = parse(&blob, |_, _| None).unwrap();
        assert_eq!(info.version, "go1.27.3");
        assert_eq!(info.main_module.as_deref(), Some("prog"));
        assert_eq!(
            info.settings,
            vec![("GOOS".to_string(), "linux".to_string())]
        );
    }
}
