//! PC → frames from pclntab alone (works on stripped binaries): the innermost inlined
//! function first, the physical function last, each with the file:line of the PC (or of
//! the call site, for the outer frames). Mirrors the runtime's `inlineUnwinder`.

use crate::pclntab::{FUNCDATA_INL_TREE, InlinedCall};
use crate::{Frame, GoBinary};

/// Inline nesting deeper than this means a corrupt table, not real code.
const MAX_INLINE_DEPTH: usize = 128;

impl GoBinary {
    /// Frames for `pc` (a file vaddr; pass return address − 1 for callers). Empty when `pc`
    /// is in no function.
    pub fn symbolize(&self, pc: u64) -> Vec<Frame> {
        self.symbolize_frames(pc).unwrap_or_default()
    }

    fn symbolize_frames(&self, pc: u64) -> Option<Vec<Frame>> {
        let pcln = self.pcln();
        let tab = &self.pclntab;
        let pc_off = pc.checked_sub(self.text_start())?;
        let entry = self.func_entry(tab.find_func(pcln, pc_off)?)?;
        let physical_name = tab.func_name(pcln, entry)?;
        let inline_tree = tab
            .funcdata_offset(pcln, entry, FUNCDATA_INL_TREE)
            .and_then(|off| Some(self.gofunc()?.wrapping_add(u64::from(off))));

        let mut frames = Vec::new();
        let mut offset_in_func = pc_off - u64::from(entry.entry_off);
        while frames.len() < MAX_INLINE_DEPTH {
            let file = tab.file(pcln, entry, offset_in_func).map(str::to_string);
            let line = tab.line(pcln, entry, offset_in_func).unwrap_or(0);
            let inlined = match (tab.inline_index(pcln, entry, offset_in_func), inline_tree) {
                (Some(index), Some(tree)) => self.inlined_call(tree, index),
                _ => None,
            };
            let Some(call) = inlined else {
                frames.push(Frame {
                    function: physical_name.to_string(),
                    file,
                    line,
                });
                break;
            };
            let function = tab.name_at(pcln, call.name_off).unwrap_or("?").to_string();
            frames.push(Frame {
                function,
                file,
                line,
            });
            // Continue at an instruction of the call site, in the caller.
            offset_in_func = u64::try_from(call.parent_pc).ok()?;
        }
        Some(frames)
    }

    fn inlined_call(&self, tree: u64, index: u32) -> Option<InlinedCall> {
        let size = InlinedCall::size(self.pclntab.magic);
        let record = self.read_vaddr(tree.wrapping_add(u64::from(index) * size as u64), size)?;
        InlinedCall::parse(record, self.pclntab.magic)
    }
}
