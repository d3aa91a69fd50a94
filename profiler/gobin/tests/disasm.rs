//! `disasm::attach_offset` and `disasm::ret_offsets` (iced-x86) against `go tool objdump`
//! (Go's own x86 disassembler) on the test program built by every Go release: the named
//! allocation entry points, `main.*` functions, and then every function of the binary.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use gomemtrace_gobin::disasm::{attach_offset, ret_offsets};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use support::{Variant, go_binary, go_tool, go_versions};

/// One instruction line of `go tool objdump`: address and Go-syntax text (`JBE 0x477ca6`).
#[derive(Debug)]
struct Line {
    addr: u64,
    asm: String,
}

/// A function as `go tool objdump` prints it.
#[derive(Debug)]
struct ObjdumpFunc {
    name: String,
    lines: Vec<Line>,
}

impl ObjdumpFunc {
    fn entry(&self) -> u64 {
        self.lines[0].addr
    }

    /// Whether Go's disassembler failed on some bytes (it prints `?`, e.g. for AVX-512 in
    /// the runtime's assembly) and so may have resynchronised differently from iced.
    fn has_undecodable(&self) -> bool {
        self.lines.iter().any(|l| l.asm == "?")
    }

    /// Whether the function uses VEX/EVEX (AVX) instructions: Go's x86asm decodes some of
    /// them with the wrong length (1.27 `countbody`: `VZEROUPPER` eats the next
    /// instruction's bytes and hides a `RET`), so its RETs are not an oracle there.
    fn has_vex(&self) -> bool {
        (0..self.lines.len()).any(|i| self.mnemonic(i).starts_with('V'))
    }

    fn mnemonic(&self, i: usize) -> &str {
        self.lines[i].asm.split_whitespace().next().unwrap_or("")
    }

    fn rets(&self) -> BTreeSet<u64> {
        (0..self.lines.len())
            .filter(|&i| self.mnemonic(i) == "RET")
            .map(|i| self.lines[i].addr)
            .collect()
    }

    /// The oracle for `attach_offset`, from the objdump text alone: within the first 8
    /// instructions, a `JBE` right after a `CMPQ` against `0x10(reg)` (g.stackguard0) whose
    /// target starts a tail that jumps back to this function's entry → the instruction after
    /// the `JBE`; otherwise the entry.
    fn expected_attach(&self) -> u64 {
        for i in 0..self.lines.len().min(8) {
            match self.mnemonic(i) {
                "JBE" if i > 0 => {
                    let prev = &self.lines[i - 1].asm;
                    if prev.starts_with("CMPQ")
                        && prev.contains("0x10(")
                        && i + 1 < self.lines.len()
                    {
                        let target =
                            parse_hex(self.lines[i].asm.split_whitespace().nth(1).unwrap_or(""));
                        if target.is_some_and(|t| self.tail_jumps_to_entry(t)) {
                            return self.lines[i + 1].addr;
                        }
                    }
                    return self.entry();
                }
                "JMP" | "CALL" | "RET" | "INT" | "UD2" => return self.entry(),
                _ => {}
            }
        }
        self.entry()
    }

    fn tail_jumps_to_entry(&self, target: u64) -> bool {
        let Some(start) = self.lines.iter().position(|l| l.addr == target) else {
            return false;
        };
        for i in start..self.lines.len().min(start + 64) {
            match self.mnemonic(i) {
                "CALL" => {}
                "JMP" => {
                    // The whole operand: generic names contain spaces.
                    let arg = self.lines[i].asm.strip_prefix("JMP ").unwrap_or("");
                    return arg == format!("{}(SB)", self.name)
                        || parse_hex(arg) == Some(self.entry());
                }
                m if m.starts_with('J') || m == "RET" || m == "INT" || m == "UD2" => return false,
                _ => {}
            }
        }
        false
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Parses `go tool objdump [-s REGEX] BINARY`, keyed by function entry address.
fn objdump(version: &str, binary: &Path, regex: Option<&str>) -> HashMap<u64, ObjdumpFunc> {
    let mut args = vec!["tool", "objdump"];
    if let Some(regex) = regex {
        args.extend(["-s", regex]);
    }
    args.push(binary.to_str().expect("UTF-8 path"));
    let text = go_tool(version, &args);
    let mut funcs: Vec<ObjdumpFunc> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            let name = rest
                .split("(SB)")
                .next()
                .expect("TEXT name(SB)")
                .to_string();
            funcs.push(ObjdumpFunc {
                name,
                lines: Vec::new(),
            });
            continue;
        }
        // "  file.go:12\t0x477b00\t\t493b6610\t\tCMPQ SP, 0x10(R14)\t\t"
        let fields: Vec<&str> = line
            .split('\t')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let (Some(func), [_, addr, _hex, asm, ..]) = (funcs.last_mut(), fields.as_slice()) else {
            continue;
        };
        let Some(addr) = parse_hex(addr) else {
            continue;
        };
        func.lines.push(Line {
            addr,
            asm: asm.to_string(),
        });
    }
    funcs
        .into_iter()
        .filter(|f| !f.lines.is_empty())
        .map(|f| (f.entry(), f))
        .collect()
}

/// RET addresses according to GNU `objdump -d` (binutils), if it is installed: an
/// oracle for the functions `go tool objdump` cannot decode.
fn gnu_objdump_rets(binary: &Path) -> Option<BTreeSet<u64>> {
    let output = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-M", "intel"])
        .arg(binary)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut rets = BTreeSet::new();
    for line in text.lines() {
        // "  4010b5:\tret    " / "  4010b5:\trepz ret"
        let Some((addr, insn)) = line.trim_start().split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if insn.split_whitespace().any(|t| t == "ret" || t == "retq") {
            rets.insert(addr);
        }
    }
    Some(rets)
}

/// A function from the ELF `.symtab`: name, address and machine code.
struct SymFunc {
    name: String,
    addr: u64,
    code: Vec<u8>,
}

fn symtab_functions(binary: &Path) -> Vec<SymFunc> {
    let bytes = std::fs::read(binary).expect("read test binary");
    let file = object::File::parse(&*bytes).expect("parse ELF");
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Some(section) = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
        else {
            continue;
        };
        let data = section.data().expect("section data");
        let start = usize::try_from(sym.address() - section.address()).expect("offset");
        let end = start + usize::try_from(sym.size()).expect("size");
        out.push(SymFunc {
            name: sym.name().expect("symbol name").to_string(),
            addr: sym.address(),
            code: data[start..end].to_vec(),
        });
    }
    out
}

fn named<'a>(funcs: &'a [SymFunc], name: &str) -> Option<&'a SymFunc> {
    funcs.iter().find(|f| f.name == name)
}

fn minor(v: &str) -> u32 {
    v.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("1.NN")
}

/// The functions the profiler probes, per release, plus `main.*` functions: every one has
/// a stack check, so the attach point must be the instruction after the check's `JBE`.
#[test]
fn probe_targets_attach_after_the_stack_check() {
    for v in go_versions() {
        let binary = go_binary(v, Variant::Normal);
        let funcs = symtab_functions(&binary);
        let mut names = vec![
            "runtime.mallocgc",
            "runtime.newobject",
            "main.newSmall",
            "main.recurse",
            "main.worker",
        ];
        if minor(v) >= 24 {
            names.push("runtime.mallocgcLarge");
        }
        if minor(v) >= 27 {
            names.push("runtime.mallocgcSmallScanNoHeaderSC2");
        }
        let regex = format!("^({})$", names.join("|").replace('.', "\\."));
        let od = objdump(v, &binary, Some(&regex));
        for name in names {
            let f = named(&funcs, name).unwrap_or_else(|| panic!("go{v}: no {name} in .symtab"));
            let o = &od[&f.addr];
            assert_eq!(o.name, name);
            // The oracle of the brief: the instruction after the first JBE.
            let jbe = (0..o.lines.len())
                .find(|&i| o.mnemonic(i) == "JBE")
                .expect("a JBE");
            assert!(
                jbe < 5,
                "go{v} {name}: stack check JBE is instruction {jbe}"
            );
            let expected = o.lines[jbe + 1].addr;
            let got = attach_offset(&f.code, f.addr);
            assert_eq!(
                got, expected,
                "go{v} {name}: attach {got:#x}, objdump says {expected:#x}"
            );
            assert_ne!(got, f.addr, "go{v} {name}");
            let rets: BTreeSet<u64> = ret_offsets(&f.code, f.addr).into_iter().collect();
            assert!(!rets.is_empty(), "go{v} {name}: no RET");
            assert_eq!(rets, o.rets(), "go{v} {name}: RETs");
        }
    }
}

/// Every function of every binary: RETs equal objdump's, and the attach point equals the
/// text-level oracle (which also covers nosplit functions, big/huge frames and ABI0
/// assembly). Functions where Go's disassembler printed `?` or decodes AVX are skipped
/// (counted); when GNU objdump is installed, every function's RETs are also compared with it.
#[test]
fn every_function_matches_objdump() {
    for v in go_versions() {
        let binary = go_binary(v, Variant::Normal);
        let od = objdump(v, &binary, None);
        let funcs = symtab_functions(&binary);
        let gnu = gnu_objdump_rets(&binary);
        let (mut checked, mut skipped, mut with_check) = (0, 0, 0);
        for f in &funcs {
            let Some(o) = od.get(&f.addr) else { continue };
            if let Some(gnu) = &gnu {
                // GNU objdump decodes every function (AVX-512 included): compare all RETs.
                let end = f.addr + f.code.len() as u64;
                let expected: BTreeSet<u64> = gnu.range(f.addr..end).copied().collect();
                let rets: BTreeSet<u64> = ret_offsets(&f.code, f.addr).into_iter().collect();
                assert_eq!(rets, expected, "go{v} {}: RETs vs GNU objdump", f.name);
            }
            if o.has_undecodable() || o.has_vex() {
                skipped += 1;
                continue;
            }
            let rets: BTreeSet<u64> = ret_offsets(&f.code, f.addr).into_iter().collect();
            assert_eq!(rets, o.rets(), "go{v} {}: RETs", f.name);
            let got = attach_offset(&f.code, f.addr);
            assert_eq!(got, o.expected_attach(), "go{v} {}: attach offset", f.name);
            with_check += usize::from(got != f.addr);
            checked += 1;
        }
        eprintln!(
            "go{v}: {checked} functions checked ({with_check} with a stack check), {skipped} skipped"
        );
        assert!(checked > 1000, "go{v}: only {checked} functions checked");
        // 1.26+ adds AVX-512 GC kernels (expandAVX512_*) that Go's disassembler can't read.
        assert!(skipped < 80, "go{v}: {skipped} functions skipped");
        assert!(
            with_check * 2 > checked,
            "go{v}: only {with_check} of {checked} have a stack check"
        );
    }
}

/// A `//go:nosplit` assembly function has no stack check: the probe stays at the entry.
#[test]
fn nosplit_function_attaches_at_entry() {
    for v in go_versions() {
        let funcs = symtab_functions(&go_binary(v, Variant::Normal));
        let f = named(&funcs, "runtime.nanotime1.abi0")
            .unwrap_or_else(|| panic!("go{v}: no nanotime1"));
        assert_eq!(attach_offset(&f.code, f.addr), f.addr, "go{v}");
    }
}
