//! `runtime.firstmoduledata`: where the runtime keeps the text start, the type descriptor
//! range and the funcdata base. Field offsets per release (GO-RUNTIME.md §7, verified
//! from DWARF of each toolchain).

use crate::GoVersion;

/// Field offsets of `runtime.moduledata` for one Go release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModuledataLayout {
    pub pc_header: u64,
    pub funcnametab: u64,
    pub text: u64,
    pub types: u64,
    pub etypes: u64,
    pub gofunc: u64,
}

impl ModuledataLayout {
    pub fn for_version(version: GoVersion) -> Self {
        let minor = if version.major > 1 {
            u32::MAX
        } else {
            version.minor
        };
        // 1.20 is unverified; its moduledata matches 1.21 in the Go sources.
        let (types, etypes, gofunc) = match minor {
            ..=19 => (0x118, 0x120, 0x130),
            20..=26 => (0x128, 0x130, 0x140),
            _ => (0x128, 0x138, 0x158),
        };
        Self {
            pc_header: 0x0,
            funcnametab: 0x8,
            text: 0xb0,
            types,
            etypes,
            gofunc,
        }
    }
}

/// Finds moduledata by its first two fields, `{&pcHeader, &funcnametab[0]}`, among
/// 8-byte-aligned words. `read_word` resolves a slot to the pointer it holds (taking PIE
/// relocations into account); `candidates` are the slot addresses to try.
pub(crate) fn find_by_pc_header(
    candidates: impl Iterator<Item = u64>,
    pc_header: u64,
    funcnametab: u64,
    read_word: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    candidates.filter(|slot| slot % 8 == 0).find(|&slot| {
        read_word(slot) == Some(pc_header) && read_word(slot.wrapping_add(8)) == Some(funcnametab)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_verified_table() {
        let at = |minor| ModuledataLayout::for_version(GoVersion::new(1, minor, 0));
        assert_eq!(
            (at(19).types, at(19).etypes, at(19).gofunc),
            (0x118, 0x120, 0x130)
        );
        assert_eq!(
            (at(21).types, at(26).etypes, at(26).gofunc),
            (0x128, 0x130, 0x140)
        );
        assert_eq!(
            (at(27).types, at(27).etypes, at(27).gofunc),
            (0x128, 0x138, 0x158)
        );
    }

    #[test]
    fn finds_the_slot_holding_both_pointers() {
        let words = [
            (0x1000u64, 7u64),
            (0x1008, 0x5000),
            (0x1010, 0x5040),
            (0x1018, 0),
        ];
        let read = |slot| words.iter().find(|(s, _)| *s == slot).map(|(_, v)| *v);
        let found = find_by_pc_header(words.iter().map(|(s, _)| *s), 0x5000, 0x5040, read);
        assert_eq!(found, Some(0x1008));
    }
}
