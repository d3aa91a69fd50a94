//! A minimal writer of the `newc` cpio format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): directories, regular
//! files and symbolic links, each a 110-byte ASCII header, the name, the data, each padded
//! to 4 bytes, ended by a `TRAILER!!!` entry.

pub struct Cpio {
    out: Vec<u8>,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_inode: 1,
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, 1, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let name = path.trim_start_matches('/');
        let inode = self.next_inode;
        self.next_inode += 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_parse_back() {
        let mut cpio = Cpio::new();
        cpio.dir("/bin");
        cpio.file("/bin/x", 0o755, b"hello");
        cpio.symlink("/bin/sh", "busybox");
        let bytes = cpio.finish();
        // Walk the archive back with the format's own rules.
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (filesize, namesize) = (field(6), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&bytes[name_at..name_at + namesize - 1]).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            let data = &bytes[data_at..data_at + filesize];
            names.push((name.to_string(), data.to_vec()));
            at = (data_at + filesize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, bytes.len());
        assert_eq!(names[1], ("bin/x".to_string(), b"hello".to_vec()));
        assert_eq!(names[2], ("bin/sh".to_string(), b"busybox".to_vec()));
    }
}
