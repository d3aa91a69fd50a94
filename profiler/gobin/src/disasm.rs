//! amd64 machine-code analysis for placing uprobes on Go functions (iced-x86).
//!
//! Two questions a Go profiler must answer from the code itself:
//! - where to put an *entry* probe so it is cheap and fires once per call
//!   ([`attach_offset`]);
//! - where the function *returns*, because uretprobes crash Go programs (the runtime
//!   unwinds and moves goroutine stacks and trips over the kernel's return trampoline), so
//!   exits are observed with ordinary uprobes on every `RET` ([`ret_offsets`]).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// How many instructions from the entry may precede the stack check's conditional jump.
/// The longest Go prologue (huge frames: `MOV r12,rsp; SUB r12,N; JB tail; CMP r12,[r14+0x10];
/// JBE tail`) has the JBE as its 5th instruction; a little slack costs nothing.
const MAX_PROLOGUE_INSNS: usize = 8;

/// How many instructions of the out-of-line morestack tail are scanned for the `JMP entry`.
/// The tail spills every register argument before `CALL runtime.morestack*` and reloads it
/// after (Go 1.27), so it grows with the number of arguments.
const MAX_TAIL_INSNS: usize = 64;

/// `g.stackguard0` is at +0x10 in every Go release (after `stack.lo`, `stack.hi`).
const STACKGUARD0_OFFSET: u64 = 0x10;

/// The address at which to attach an entry uprobe to the Go function whose machine code is
/// `code`, loaded at `entry`: the instruction right after the stack check's conditional
/// jump to the morestack tail, or `entry` itself when there is no recognisable stack check
/// (nosplit functions, assembly without a check).
///
/// Why not `entry` (+0)?
/// - Cost: the first instruction of a Go function is the stack check, `cmp rsp,[r14+0x10]`
///   (or `cmp r12,[r14+0x10]` after `lea r12,[rsp-N]` for frames over 128 bytes, and
///   `mov r12,rsp; sub r12,N; jb; cmp r12,[r14+0x10]` for huge frames). The kernel cannot
///   emulate an R14-relative `cmp`, so a probe there single-steps it out of line: measured
///   ~10 µs per hit versus ~0.55 µs for a probe on the `push rbp` after the check.
/// - Correctness: when the stack must grow, the check branches to
///   `CALL runtime.morestack_noctxt; JMP entry`, and the function re-executes its entry on
///   the new stack. A probe at +0 then fires twice for one call; a probe after the check
///   fires once, on the path that actually continues into the body.
///
/// Arguments are still in their ABIInternal registers there (the check only compares) and
/// the return address is still at `[rsp]` (the frame is not set up yet).
///
/// The check is accepted only when the conditional jump's target, if it lies inside
/// `code`, leads to a `JMP entry` — so a nosplit function that happens to compare something
/// at `[reg+0x10]` keeps its probe at `entry` and no call is missed. When the target lies
/// outside `code` (the caller passed only the prologue), `entry` is returned as well.
pub fn attach_offset(code: &[u8], entry: u64) -> u64 {
    stack_check_end(code, entry).unwrap_or(entry)
}

/// The address after the stack check's `JBE`, if the prologue has a verified stack check.
fn stack_check_end(code: &[u8], entry: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut previous: Option<Instruction> = None;
    for _ in 0..MAX_PROLOGUE_INSNS {
        if !decoder.can_decode() {
            return None;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        let is_check_jump = insn.mnemonic() == Mnemonic::Jbe
            && insn.op0_kind() == OpKind::NearBranch64
            && previous.as_ref().is_some_and(is_stackguard_cmp);
        if is_check_jump {
            let target = insn.near_branch_target();
            return (target > insn.ip() && leads_back_to_entry(code, entry, target))
                .then(|| insn.next_ip());
        }
        // Anything that leaves the straight line before the check means there is no check.
        // (Conditional jumps are fine: the huge-frame form has a `JB` before the check.)
        if leaves_straight_line(&insn) {
            return None;
        }
        previous = Some(insn);
    }
    None
}

/// Unconditional transfers, traps and returns: after one of these the prologue is over.
/// (Matched by mnemonic: iced's flow-control tables need its `instr_info` feature.)
fn leaves_straight_line(insn: &Instruction) -> bool {
    matches!(
        insn.mnemonic(),
        Mnemonic::Jmp
            | Mnemonic::Jmpe
            | Mnemonic::Call
            | Mnemonic::Ret
            | Mnemonic::Retf
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Iretq
            | Mnemonic::Int
            | Mnemonic::Int1
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::Ud0
            | Mnemonic::Ud1
            | Mnemonic::Ud2
            | Mnemonic::Hlt
            | Mnemonic::Syscall
            | Mnemonic::Sysenter
            | Mnemonic::Loop
            | Mnemonic::Loope
            | Mnemonic::Loopne
            | Mnemonic::Jrcxz
            | Mnemonic::Jecxz
    )
}

fn is_jcc(insn: &Instruction) -> bool {
    matches!(
        insn.mnemonic(),
        Mnemonic::Ja
            | Mnemonic::Jae
            | Mnemonic::Jb
            | Mnemonic::Jbe
            | Mnemonic::Je
            | Mnemonic::Jne
            | Mnemonic::Jg
            | Mnemonic::Jge
            | Mnemonic::Jl
            | Mnemonic::Jle
            | Mnemonic::Jo
            | Mnemonic::Jno
            | Mnemonic::Jp
            | Mnemonic::Jnp
            | Mnemonic::Js
            | Mnemonic::Jns
    )
}

/// `cmp reg, [base+0x10]` (or the operands the other way round): a compare against
/// `g.stackguard0`, with `g` in R14 (ABIInternal) or loaded from TLS (ABI0 assembly).
fn is_stackguard_cmp(insn: &Instruction) -> bool {
    if insn.mnemonic() != Mnemonic::Cmp || insn.op_count() != 2 {
        return false;
    }
    let is_reg = |i| insn.op_kind(i) == OpKind::Register;
    let is_guard = |i| {
        insn.op_kind(i) == OpKind::Memory
            && insn.memory_index() == Register::None
            && insn.memory_base() != Register::RIP
            && insn.memory_base() != Register::None
            && insn.memory_displacement64() == STACKGUARD0_OFFSET
    };
    (is_reg(0) && is_guard(1)) || (is_guard(0) && is_reg(1))
}

/// Whether the straight-line code at `target` (the morestack tail) reaches an
/// unconditional `JMP entry` before any other control transfer except `CALL`s.
fn leads_back_to_entry(code: &[u8], entry: u64, target: u64) -> bool {
    let Some(pos) = target
        .checked_sub(entry)
        .and_then(|p| usize::try_from(p).ok())
    else {
        return false;
    };
    let Some(tail) = code.get(pos..) else {
        return false;
    };
    let mut decoder = Decoder::with_ip(64, tail, target, DecoderOptions::NONE);
    for _ in 0..MAX_TAIL_INSNS {
        if !decoder.can_decode() {
            return false;
        }
        let insn = decoder.decode();
        if insn.is_invalid() || is_jcc(&insn) {
            return false;
        }
        if insn.mnemonic() == Mnemonic::Jmp {
            return insn.op0_kind() == OpKind::NearBranch64 && insn.near_branch_target() == entry;
        }
        if insn.mnemonic() != Mnemonic::Call && leaves_straight_line(&insn) {
            return false;
        }
    }
    false
}

/// The addresses of every `RET` (`C3`, `C2 iw`, with or without prefixes) in `code`
/// loaded at `entry`, found by a linear sweep: Go never puts data in `.text` and pads
/// between functions with `INT3`, so a sweep sees every instruction. Undecodable bytes are
/// skipped one at a time rather than aborting the sweep.
///
/// These are where exit probes go instead of uretprobes. The morestack tail
/// (`CALL runtime.morestack*; JMP entry`) is not an exit and is not reported (it ends in a
/// `JMP`); neither are tail-`JMP`s out of ABI wrappers, panics or `Goexit`, which a
/// profiler must handle by expiring stale entry records.
pub fn ret_offsets(code: &[u8], entry: u64) -> Vec<u64> {
    let mut rets = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        let pos = decoder.position();
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            let next = pos + 1;
            if next >= code.len() {
                break;
            }
            // Resynchronise one byte further on.
            decoder
                .set_position(next)
                .expect("position is inside the code");
            // Addresses wrap as the decoder's own do: `entry` is read from the file.
            decoder.set_ip(entry.wrapping_add(next as u64));
            continue;
        }
        if is_near_ret(&insn) {
            rets.push(insn.ip());
        }
    }
    rets
}

fn is_near_ret(insn: &Instruction) -> bool {
    matches!(
        insn.code(),
        Code::Retnq
            | Code::Retnq_imm16
            | Code::Retnw
            | Code::Retnw_imm16
            | Code::Retnd
            | Code::Retnd_imm16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: u64 = 0x40_1000;

    /// `runtime.mallocgc` prologue of Go 1.27 (small frame), with its morestack tail.
    fn small_frame() -> Vec<u8> {
        let mut code = vec![
            0x49, 0x3b, 0x66, 0x10, // cmp rsp,[r14+0x10]
            0x0f, 0x86, 0x06, 0x00, 0x00, 0x00, // jbe +6 -> tail
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp,rsp
            0x5d, // pop rbp
            0xc3, // ret
        ];
        // tail at +0x10: call rel32 (anything); jmp entry
        code.extend_from_slice(&[0xe8, 0, 0, 0, 0]);
        let jmp_ip = ENTRY + code.len() as u64 + 5;
        let rel = (ENTRY as i64 - jmp_ip as i64) as i32;
        code.push(0xe9);
        code.extend_from_slice(&rel.to_le_bytes());
        code
    }

    #[test]
    fn small_frame_check() {
        assert_eq!(attach_offset(&small_frame(), ENTRY), ENTRY + 10);
        assert_eq!(ret_offsets(&small_frame(), ENTRY), vec![ENTRY + 15]);
    }

    #[test]
    fn truncated_code_falls_back_to_entry() {
        // The JBE target is outside the code we were given: can't verify, stay at entry.
        assert_eq!(attach_offset(&small_frame()[..12], ENTRY), ENTRY);
    }

    #[test]
    fn jbe_that_does_not_return_to_entry_is_not_a_stack_check() {
        let mut code = small_frame();
        let n = code.len();
        code[n - 4..].copy_from_slice(&0i32.to_le_bytes()); // jmp to the next instruction
        assert_eq!(attach_offset(&code, ENTRY), ENTRY);
    }

    #[test]
    fn nosplit_function_stays_at_entry() {
        // mov rax,[rsp+8]; ret
        let code = [0x48, 0x8b, 0x44, 0x24, 0x08, 0xc3];
        assert_eq!(attach_offset(&code, ENTRY), ENTRY);
        assert_eq!(ret_offsets(&code, ENTRY), vec![ENTRY + 5]);
    }

    #[test]
    fn sweep_skips_undecodable_bytes() {
        // 0x06 (push es) is invalid in 64-bit mode; c2 10 00 = ret 0x10; int3 padding.
        let code = [0x06, 0x06, 0xc3, 0xc2, 0x10, 0x00, 0xcc, 0xcc];
        assert_eq!(ret_offsets(&code, ENTRY), vec![ENTRY + 2, ENTRY + 3]);
        assert!(ret_offsets(&[], ENTRY).is_empty());
        assert_eq!(attach_offset(&[], ENTRY), ENTRY);
    }

    #[test]
    fn resynchronising_at_the_top_of_the_address_space_wraps() {
        // Fuzz crash (disasm): an undecodable byte at entry u64::MAX - 1 overflowed the
        // next instruction's address.
        assert!(ret_offsets(&[0x09, 0x80, 0x91], u64::MAX - 1).is_empty());
        assert_eq!(ret_offsets(&[0x06, 0xc3], u64::MAX), vec![0]);
    }
}

/// Addresses of the RIP-relative memory operands of 64-bit `MOV reg, [rip+X]` loads in
/// `code`, in order: how a stripped binary's globals are found from the functions that
/// read them (e.g. `runtime.profilealloc` reads `runtime.MemProfileRate`).
pub fn rip_relative_loads(code: &[u8], entry: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            continue;
        }
        if instruction.code() == Code::Mov_r64_rm64
            && instruction.op1_kind() == OpKind::Memory
            && instruction.memory_base() == Register::RIP
        {
            targets.push(instruction.ip_rel_memory_address());
        }
    }
    targets
}

/// Addresses of the RIP-relative operands of 64-bit `LEA reg, [rip+X]` in `code`, in
/// order: the addresses of globals whose address is taken (e.g. `&memstats.heapStats`
/// passed to a method).
pub fn rip_relative_leas(code: &[u8], entry: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.code() == Code::Lea_r64_m && instruction.memory_base() == Register::RIP {
            targets.push(instruction.ip_rel_memory_address());
        }
    }
    targets
}

/// Every direct near `CALL rel32` in `code` loaded at `entry`, in order: (address of the
/// `CALL`, address it calls). Used to find where a function reads the clock, so that probes
/// can bracket exactly the interval the runtime itself times. A direct `CALL` is emulated
/// by the kernel's uprobe code, so a probe on one is as cheap as an entry probe.
pub fn direct_calls(code: &[u8], entry: u64) -> Vec<(u64, u64)> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut calls = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.code() == Code::Call_rel32_64 {
            calls.push((instruction.ip(), instruction.near_branch64()));
        }
    }
    calls
}

#[cfg(test)]
mod direct_call_tests {
    use super::*;

    #[test]
    fn finds_direct_calls_and_their_targets() {
        // call +0x10; ret; call -0x0a (back to the entry)
        let code = [
            0xe8, 0x10, 0x00, 0x00, 0x00, 0xc3, 0xe8, 0xf6, 0xff, 0xff, 0xff,
        ];
        let entry = 0x40_1000;
        assert_eq!(
            direct_calls(&code, entry),
            [(entry, entry + 5 + 0x10), (entry + 6, entry + 11 - 0x0a)]
        );
        assert!(direct_calls(&[0xc3], entry).is_empty());
    }
}

/// The addresses of every RIP-relative memory operand in `code` (loads, stores, compares,
/// `LEA`s), in order: the globals a function touches.
pub fn rip_relative_operands(code: &[u8], entry: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if !instruction.is_invalid() && instruction.memory_base() == Register::RIP {
            targets.push(instruction.ip_rel_memory_address());
        }
    }
    targets
}

#[cfg(test)]
mod rip_relative_tests {
    use super::*;

    #[test]
    fn finds_rip_relative_loads() {
        // mov rdx, [rip+0x1434ed]; mov rax, [rip+0x10c089]; ret
        let code = [
            0x48, 0x8b, 0x15, 0xed, 0x34, 0x14, 0x00, 0x48, 0x8b, 0x05, 0x89, 0xc0, 0x10, 0x00,
            0xc3,
        ];
        let entry = 0x40c0e4;
        assert_eq!(
            rip_relative_loads(&code, entry),
            [entry + 7 + 0x1434ed, entry + 14 + 0x10c089]
        );
        // cmp qword [rip+0x10], 0; ret: a compare is an operand, not a load.
        let cmp = [0x48, 0x83, 0x3d, 0x10, 0x00, 0x00, 0x00, 0x00, 0xc3];
        assert!(rip_relative_loads(&cmp, entry).is_empty());
        assert_eq!(rip_relative_operands(&cmp, entry), [entry + 8 + 0x10]);
    }
}
