//! The executable mappings of a process (`/proc/PID/maps`), to turn runtime addresses
//! into file addresses (PIE load bias) and to name the files that hold them.

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub inode: u64,
    pub path: String,
}

/// Executable, file-backed mappings of `pid`.
pub fn executable_mappings(pid: u32) -> std::io::Result<Vec<MappedFile>> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("maps"))?;
    Ok(parse(&text))
}

fn parse(maps: &str) -> Vec<MappedFile> {
    maps.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MappedFile> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || inode == 0 || !path.starts_with('/') {
        return None;
    }
    Some(MappedFile {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_executable_file_mappings() {
        let maps = "\
00400000-00401000 r--p 00000000 fe:01 123 /usr/bin/app
00401000-00480000 r-xp 00001000 fe:01 123 /usr/bin/app
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000001000-7f1000100000 r-xp 00028000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0 [vdso]
";
        let m = parse(maps);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            MappedFile {
                start: 0x401000,
                end: 0x480000,
                file_offset: 0x1000,
                inode: 123,
                path: "/usr/bin/app".into()
            }
        );
        assert_eq!(m[1].file_offset, 0x28000);
    }

    #[test]
    fn reads_own_mappings() {
        let own = executable_mappings(std::process::id()).unwrap();
        assert!(!own.is_empty());
    }
}
