//! Entry points of the fuzz targets (`fuzz/`, `cargo xtask fuzz`): one per parser of
//! untrusted bytes, each taking the fuzzer's input whole. Every input must give a value
//! or a typed error: a panic, an endless loop or an allocation beyond the input's size is
//! a bug in the parser. Not an API: kept here so the targets reach the crate's private
//! parsers, and so that a crash's regression test can replay its input.

use std::io;

use crate::allocstats::{self, AllocStatsLayout, AllocStatsOffsets, LayoutSource};
use crate::elf::{ElfImage, go_build_id_note};
use crate::goroutines::{self, GoroutineLayout};
use crate::memory::{ImageMemory, MemorySource};
use crate::moduledata::{self, ModuledataLayout};
use crate::offsets::{self, SchedOffsets};
use crate::pclntab::{FUNCDATA_INL_TREE, InlinedCall, Pclntab};
use crate::{GoBinary, GoVersion, buildinfo, disasm, types};

/// The most a memory reader may ask for in one read. A reader whose length comes from
/// the target's memory or binary and exceeds this would, on a real process, allocate
/// that much before reading: a bug (the readers cap every such length).
const MAX_READ: usize = 64 << 20;

/// Functions the agent's analysis looks at in every Go executable (entry probes, RET
/// probes, the anchors of stripped binaries' globals).
const ANALYSED_FUNCTIONS: [&str; 12] = [
    "runtime.mallocgc",
    "runtime.newobject",
    "runtime.newproc1",
    "runtime.gdestroy",
    "runtime.goexit0",
    "runtime.copystack",
    "runtime.gcStart",
    "runtime.gcMarkDone",
    "runtime.schedinit",
    "runtime.profilealloc",
    "runtime.gcMarkTinyAllocs",
    "runtime.(*mcache).allocLarge",
];

/// A little-endian cursor over the fuzzer's input: fixed fields first, the rest as data.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u64(&mut self) -> u64 {
        let (head, rest) = self.0.split_at(self.0.len().min(8));
        self.0 = rest;
        let mut word = [0u8; 8];
        word[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(word)
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// [`ImageMemory`] that also refuses (as a panic: the fuzzer's crash) a read longer than
/// [`MAX_READ`].
struct BoundedMemory<'a>(ImageMemory<'a>);

impl MemorySource for BoundedMemory<'_> {
    fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        assert!(len <= MAX_READ, "read of {len} bytes at {addr:#x}");
        self.0.read_bytes(addr, len)
    }

    fn read_words(&self, addrs: &[u64], width: usize) -> io::Result<Vec<Option<u64>>> {
        self.0.read_words(addrs, width)
    }
}

/// The ELF container: headers, sections, segments, symbols, relocations, notes.
pub fn elf(data: &[u8]) {
    let _ = crate::check_complete_bytes(data, "fuzz");
    let _ = go_build_id_note(data);
    let Ok(image) = ElfImage::parse(data, "fuzz") else {
        return;
    };
    for section in &image.sections {
        let _ = image.section(&section.name);
        let _ = image.vaddr_to_file_offset(section.addr);
        let _ = image.file_backed_len(section.addr);
    }
    for segment in &image.segments {
        for vaddr in [segment.vaddr, segment.vaddr.wrapping_add(segment.file_size)] {
            let _ = image.vaddr_to_file_offset(vaddr);
            let _ = image.file_backed_len(vaddr);
        }
    }
}

/// `.go.buildinfo`; the pointers of the pre-1.18 form are file offsets into the input.
pub fn buildinfo(data: &[u8]) {
    let _ = buildinfo::parse(data, |vaddr, len| {
        let start = usize::try_from(vaddr).ok()?;
        data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    });
}

/// `.gopclntab`: the header, every function's entry, name, file, line, inline index and
/// inline tree, and PC lookups.
pub fn pclntab(data: &[u8]) {
    let Some(tab) = Pclntab::parse(data, 0x40_0000, 0) else {
        return;
    };
    let _ = tab.oldest_version();
    let end = tab
        .func_entry(data, tab.nfunc)
        .map_or(0, |e| u64::from(e.entry_off));
    for i in 0..tab.nfunc {
        let Some(entry) = tab.func_entry(data, i) else {
            break;
        };
        let _ = tab.func_name(data, entry);
        let _ = tab.func_id(data, entry);
        let _ = tab.is_asm(data, entry);
        for pc_off in [0, 1, 16] {
            let _ = tab.file(data, entry, pc_off);
            let _ = tab.line(data, entry, pc_off);
            let _ = tab.inline_index(data, entry, pc_off);
        }
        if let Some(off) = tab.funcdata_offset(data, entry, FUNCDATA_INL_TREE) {
            let size = InlinedCall::size(tab.magic);
            let record = data.get(off as usize..).unwrap_or_default();
            if let Some(call) = InlinedCall::parse(record.get(..size).unwrap_or(record), tab.magic)
            {
                let _ = tab.name_at(data, call.name_off);
            }
        }
        let _ = tab.find_func(data, u64::from(entry.entry_off));
    }
    for pc_off in [0, end / 2, end.saturating_sub(1), end, u64::MAX] {
        let _ = tab.find_func(data, pc_off);
    }
}

/// Moduledata's search by its first two words, over the input read as 8-byte words at
/// addresses equal to their offsets.
pub fn moduledata(data: &[u8]) {
    let mut input = Input(data);
    let (version, pc_header, funcnametab) = (input.u32(), input.u64(), input.u64());
    let memory = input.rest();
    let _ = ModuledataLayout::for_version(GoVersion::new(version >> 16, version & 0xffff, 0));
    let word = |slot: u64| {
        let at = usize::try_from(slot).ok()?;
        Some(u64::from_le_bytes(
            memory.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let slots = (0..memory.len() as u64).step_by(4);
    let _ = moduledata::find_by_pc_header(slots, pc_header, funcnametab, word);
}

/// Struct member offsets from DWARF: the runtime's `g`/`m`, `schedt`, `gobuf` and the
/// allocation counters' structs.
pub fn dwarf_offsets(data: &[u8]) {
    let _ = offsets::from_dwarf(data);
    let _ = offsets::sched_from_dwarf(data);
    let _ = offsets::gobuf_from_dwarf(data);
    let _ = AllocStatsOffsets::from_dwarf(data);
}

/// Type descriptor names: `[types_base][typ]`, then memory at address 0x1000.
pub fn types(data: &[u8]) {
    let mut input = Input(data);
    let (types_base, typ) = (input.u64(), input.u64());
    let memory = BoundedMemory(ImageMemory {
        base: 0x1000,
        bytes: input.rest(),
    });
    let read = |addr: u64, len: usize| memory.read_bytes(addr, len).ok();
    let _ = types::type_name(&read, types_base, typ);
}

/// Machine-code analysis: `[entry]`, then the code.
pub fn disasm(data: &[u8]) {
    let mut input = Input(data);
    let entry = input.u64();
    let code = input.rest();
    let attach = disasm::attach_offset(code, entry);
    assert!(
        attach.wrapping_sub(entry) <= code.len() as u64,
        "attach offset {attach:#x} outside the code at {entry:#x}"
    );
    let _ = disasm::ret_offsets(code, entry);
    let _ = disasm::rip_relative_loads(code, entry);
    let _ = disasm::rip_relative_leas(code, entry);
    let _ = disasm::rip_relative_operands(code, entry);
    let _ = disasm::direct_calls(code, entry);
}

/// The anchors of a stripped binary's allocation counters: `[entry]`, then the code of
/// `runtime.gcMarkTinyAllocs` or `runtime.(*mcache).allocLarge` (both are tried).
pub fn allocstats_anchors(data: &[u8]) {
    let mut input = Input(data);
    let entry = input.u64();
    let code = input.rest();
    let _ = allocstats::allp_from_code(code, entry);
    let _ = allocstats::heap_stats_from_code(code, entry);
}

/// Go version strings and the per-release tables they select.
pub fn version(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = [
        GoVersion::parse(&text),
        crate::binary::parse_version(&text).ok(),
    ];
    for version in parsed.into_iter().flatten() {
        let _ = version.to_string();
        let _ = offsets::for_version(version);
        let _ = offsets::sched_for_version(version);
        let _ = offsets::gobuf_for_version(version);
        let _ = AllocStatsOffsets::for_version(version);
        let _ = ModuledataLayout::for_version(version);
    }
}

/// The whole-binary analysis the agent runs on every executable of a node: the cheap
/// tests, the parse, the runtime's offsets, the probes' places, symbols, types, and the
/// layouts of the goroutine and allocation readers.
pub fn binary(data: &[u8]) {
    let _ = GoBinary::has_buildinfo(data);
    if !GoBinary::looks_like_go(data) {
        return;
    }
    let _ = crate::check_complete_bytes(data, "fuzz");
    let Ok(binary) = GoBinary::from_bytes(data.to_vec()) else {
        return;
    };
    let data = binary.file_data();
    let version = binary.version();
    let _ = (binary.arch(), binary.is_pie(), binary.is_stripped());
    let _ = (
        binary.gnu_build_id(),
        binary.go_build_id(),
        binary.main_module(),
    );
    let _ = (binary.build_settings().len(), binary.types_range());
    let runtime = offsets::from_dwarf(data)
        .ok()
        .flatten()
        .or_else(|| offsets::for_version(version));
    let sched = offsets::sched_from_dwarf(data).or_else(|| offsets::sched_for_version(version));
    let _ = offsets::gobuf_from_dwarf(data).or_else(|| offsets::gobuf_for_version(version));
    if let (Some(sched), Some(runtime)) = (sched, runtime) {
        let _ = GoroutineLayout::of(&binary, sched, runtime.g_startpc);
    }
    let _ = AllocStatsLayout::locate(&binary, data);
    for name in ANALYSED_FUNCTIONS {
        let Some(f) = binary.function(name) else {
            continue;
        };
        if let Some(code) = binary.function_code(f) {
            let at = disasm::attach_offset(code, f.entry);
            let _ = binary.vaddr_to_file_offset(at);
            let _ = disasm::ret_offsets(code, f.entry);
        }
        let _ = binary.symbolize(f.entry);
    }
    let functions = binary.functions();
    // A bounded sample of PCs: every function would make one input cost seconds.
    let step = (functions.len() / 64).max(1);
    for f in functions.iter().step_by(step) {
        let _ = binary.function_at(f.entry);
        let _ = binary.symbolize(f.entry);
        let _ = binary.symbolize(f.end.wrapping_sub(1));
    }
}

/// The goroutine reader over a memory image at address 0: `[allgs][sched][bias]
/// [g.atomicstatus | schedt.goidgen << 32][g.startpc]`, then the memory.
pub fn goroutines(data: &[u8]) {
    let _ = goroutines_reading(data);
}

fn goroutines_reading(data: &[u8]) -> Result<goroutines::GoroutineCount, goroutines::CountError> {
    let mut input = Input(data);
    let (allgs, sched, bias, sched_offsets, startpc) = (
        input.u64(),
        input.u64(),
        input.u64(),
        input.u64(),
        input.u32(),
    );
    let layout = GoroutineLayout::new(
        allgs,
        (sched != 0).then_some(sched),
        SchedOffsets {
            g_atomicstatus: sched_offsets as u32,
            schedt_goidgen: (sched_offsets >> 32) as u32,
        },
        startpc,
    );
    let memory = BoundedMemory(ImageMemory {
        base: 0,
        bytes: input.rest(),
    });
    goroutines::count(&memory, &layout, bias, &mut |pc| pc & 1 == 0)
}

/// The allocation-counter reader over a memory image at address 0: `[memstats][allp]
/// [bias][layout]`, then the memory. The layout byte's low bits pick a verified release's
/// offsets (1.19–1.27); above them, the offsets come from the input, as DWARF gives them.
pub fn alloc_counters(data: &[u8]) {
    let _ = alloc_counters_reading(data);
}

fn alloc_counters_reading(data: &[u8]) -> Result<allocstats::AllocCounters, allocstats::ReadError> {
    let mut input = Input(data);
    let (memstats, allp, bias, layout) = (input.u64(), input.u64(), input.u64(), input.u64());
    let offsets =
        match AllocStatsOffsets::for_version(GoVersion::new(1, 19 + (layout % 9) as u32, 0)) {
            Some(offsets) if layout < 9 => offsets,
            _ => AllocStatsOffsets {
                mstats_heap_stats: input.u32(),
                heap_stats_gen: input.u32(),
                delta_size: input.u32(),
                tiny_alloc_count: input.u32(),
                large_alloc: input.u32(),
                large_alloc_count: input.u32(),
                small_alloc_count: input.u32(),
                large_free: input.u32(),
                large_free_count: input.u32(),
                small_free_count: input.u32(),
                p_mcache: input.u32(),
                mcache_tiny_allocs: input.u32(),
                mcache_alloc: input.u32(),
                mspan_alloc_count: input.u32(),
                mspan_alloc_count_before_cache: input.u32(),
            },
        };
    let layout = AllocStatsLayout {
        memstats,
        allp,
        offsets,
        class_to_size: allocstats::SIZE_CLASS_TO_SIZE,
        source: LayoutSource::Symbols,
    };
    let memory = BoundedMemory(ImageMemory {
        base: 0,
        bytes: input.rest(),
    });
    allocstats::read_counters(&memory, &layout, bias)
}

/// Seed inputs for the targets, cut from a real Go executable (`data`): the parts each
/// parser reads, not the whole file where a part does (megabytes fuzz slowly).
/// `(target, input)` pairs; nothing for a part the binary lacks.
pub fn seeds_from_binary(data: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("binary", data.to_vec()),
        ("binary", data[..data.len().min(4096)].to_vec()),
        ("elf", data.to_vec()),
        ("elf", data[..data.len().min(4096)].to_vec()),
    ];
    let Ok(elf) = ElfImage::parse(data, "seed") else {
        return seeds;
    };
    let section = |name: &str| {
        let s = elf.section(name)?;
        data.get(usize::try_from(s.offset).ok()?..)?
            .get(..usize::try_from(s.size).ok()?)
    };
    if let Some(note) = section(".note.go.buildid") {
        seeds.push(("elf", note.to_vec()));
    }
    let buildinfo = section(".go.buildinfo").or_else(|| {
        let at = data.windows(14).position(|w| w == buildinfo::MAGIC)?;
        data.get(at..(at + 1024).min(data.len()))
    });
    seeds.extend(buildinfo.map(|b| ("buildinfo", b.to_vec())));
    let Ok(binary) = GoBinary::from_bytes(data.to_vec()) else {
        return seeds;
    };
    seeds.push(("pclntab", binary.pcln().to_vec()));
    seeds.push(("version", binary.version_string().as_bytes().to_vec()));
    if let Some(md) = binary.moduledata {
        let v = binary.version();
        let mut seed = (v.major << 16 | v.minor).to_le_bytes().to_vec();
        seed.extend([0; 4]);
        let (pc_header, funcnametab) = (
            binary.pclntab.addr,
            binary.pclntab.addr + binary.pclntab.funcname_offset as u64,
        );
        seed.extend(pc_header.to_le_bytes());
        seed.extend(funcnametab.to_le_bytes());
        let mut memory = vec![0u8; 0x40];
        memory.extend(binary.read_vaddr(md, 0x200).unwrap_or_default());
        if memory.len() >= 0x50 {
            memory[0x40..0x48].copy_from_slice(&pc_header.to_le_bytes());
            memory[0x48..0x50].copy_from_slice(&funcnametab.to_le_bytes());
        }
        seed.extend(memory);
        seeds.push(("moduledata", seed));
    }
    let code_seed = |name: &str| {
        let f = binary.function(name)?;
        let code = binary.function_code(f)?;
        let mut seed = f.entry.to_le_bytes().to_vec();
        seed.extend_from_slice(&code[..code.len().min(8192)]);
        Some(seed)
    };
    for name in ANALYSED_FUNCTIONS {
        seeds.extend(code_seed(name).map(|seed| ("disasm", seed)));
    }
    for name in ["runtime.gcMarkTinyAllocs", "runtime.(*mcache).allocLarge"] {
        seeds.extend(code_seed(name).map(|seed| ("allocstats_anchors", seed)));
    }
    seeds.extend(type_seeds(&binary).into_iter().map(|seed| ("types", seed)));
    seeds
}

/// A few type descriptors of `binary` (by their symbols) with their names, moved to the
/// `types` target's address 0x1000.
fn type_seeds(binary: &GoBinary) -> Vec<Vec<u8>> {
    let Some((types_base, _)) = binary.types_range() else {
        return Vec::new();
    };
    let mut names: Vec<(&String, &u64)> = binary
        .elf
        .data_symbols
        .iter()
        .filter(|(name, _)| name.starts_with("type:") || name.starts_with("type."))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|(_, &typ)| {
            let descriptor = binary.read_vaddr(typ, 0x30)?;
            let str_off = i32::from_le_bytes(descriptor[0x28..0x2c].try_into().ok()?);
            let name_addr = types_base.checked_add_signed(i64::from(str_off))?;
            let name = (1..=64)
                .rev()
                .find_map(|len| binary.read_vaddr(name_addr, len))?;
            let mut seed = 0x1030u64
                .wrapping_sub(i64::from(str_off) as u64)
                .to_le_bytes()
                .to_vec();
            seed.extend(0x1000u64.to_le_bytes());
            seed.extend_from_slice(descriptor);
            seed.extend_from_slice(name);
            Some(seed)
        })
        .take(6)
        .collect()
}

/// Seed inputs of the remote-memory readers: a small consistent image of the runtime's
/// structures per verified release (they come from a running process, not a file).
pub fn synthetic_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (tflag, name) in [
        (0x2u8, "*main.node"),
        (0x1, "[]uint8"),
        (0x0, "map.bucket[string]int"),
    ] {
        // A descriptor at 0x1000 whose name (flags, uvarint length, bytes) follows it.
        let mut seed = (0x1030u64 - 0x30).to_le_bytes().to_vec();
        seed.extend(0x1000u64.to_le_bytes());
        let mut descriptor = [0u8; 0x30];
        descriptor[0x14] = tflag;
        descriptor[0x28..0x2c].copy_from_slice(&0x30i32.to_le_bytes());
        seed.extend(descriptor);
        seed.extend([0x01, name.len() as u8]);
        seed.extend(name.as_bytes());
        seeds.push(("types", seed));
    }
    for minor in [19, 21, 22, 23, 24, 25, 26, 27] {
        let version = GoVersion::new(1, minor, 0);
        if let (Some(sched), Some(runtime)) = (
            offsets::sched_for_version(version),
            offsets::for_version(version),
        ) {
            seeds.push(("goroutines", goroutines_seed(sched, runtime.g_startpc)));
        }
        if let Some(offsets) = AllocStatsOffsets::for_version(version) {
            seeds.push((
                "alloc_counters",
                alloc_counters_seed(minor - 19, &offsets, false),
            ));
            seeds.push((
                "alloc_counters",
                alloc_counters_seed(minor - 19, &offsets, true),
            ));
        }
    }
    seeds
}

fn put(memory: &mut Vec<u8>, at: u64, value: &[u8]) {
    let at = at as usize;
    if memory.len() < at + value.len() {
        memory.resize(at + value.len(), 0);
    }
    memory[at..at + value.len()].copy_from_slice(value);
}

/// `runtime.allgs` at 0x10 with three `g`s (running, dead, waiting), `sched.goidgen` 5.
fn goroutines_seed(sched: SchedOffsets, g_startpc: u32) -> Vec<u8> {
    let mut seed = Vec::new();
    for word in [
        0x10,
        0x20,
        0,
        u64::from(sched.g_atomicstatus) | u64::from(sched.schedt_goidgen) << 32,
        u64::from(g_startpc),
    ] {
        seed.extend(u64::to_le_bytes(word));
    }
    let mut memory = Vec::new();
    put(&mut memory, 0x10, &0x40u64.to_le_bytes());
    put(&mut memory, 0x18, &3u64.to_le_bytes());
    put(
        &mut memory,
        0x20 + u64::from(sched.schedt_goidgen),
        &5u64.to_le_bytes(),
    );
    for (i, status) in [2u32, 6, 0x1004].into_iter().enumerate() {
        let g = 0x100 + 0x200 * i as u64;
        put(&mut memory, 0x40 + 8 * i as u64, &g.to_le_bytes());
        put(
            &mut memory,
            g + u64::from(sched.g_atomicstatus),
            &status.to_le_bytes(),
        );
        put(
            &mut memory,
            g + u64::from(g_startpc),
            &(0x40_1000 + i as u64).to_le_bytes(),
        );
    }
    seed.extend(memory);
    seed
}

/// `memstats` at 0x100 with counts in its deltas, `allp` (two Ps) at 0x40, an mcache with
/// two cached spans. `explicit`: the offsets written out in the input rather than picked
/// by release.
fn alloc_counters_seed(release: u32, o: &AllocStatsOffsets, explicit: bool) -> Vec<u8> {
    let memstats = 0x100u64;
    let heap = memstats + u64::from(o.mstats_heap_stats);
    let after_heap = (heap + u64::from(o.heap_stats_gen) + 0x100) & !0xff;
    let (p0, p1, mcache, span) = (
        after_heap,
        after_heap + 0x100,
        after_heap + 0x200,
        after_heap + 0x800,
    );
    let mut seed = Vec::new();
    for word in [
        memstats,
        0x40,
        0,
        if explicit { 100 } else { u64::from(release) },
    ] {
        seed.extend(u64::to_le_bytes(word));
    }
    if explicit {
        for field in [
            o.mstats_heap_stats,
            o.heap_stats_gen,
            o.delta_size,
            o.tiny_alloc_count,
            o.large_alloc,
            o.large_alloc_count,
            o.small_alloc_count,
            o.large_free,
            o.large_free_count,
            o.small_free_count,
            o.p_mcache,
            o.mcache_tiny_allocs,
            o.mcache_alloc,
            o.mspan_alloc_count,
            o.mspan_alloc_count_before_cache,
        ] {
            seed.extend(u64::from(field).to_le_bytes());
        }
    }
    let mut memory = Vec::new();
    // Deltas 0 and 2 hold counts; gen is 0, so delta 1 (gen + 1) is clear.
    for delta in [0u64, 2] {
        let base = heap + delta * u64::from(o.delta_size);
        put(
            &mut memory,
            base + u64::from(o.tiny_alloc_count),
            &7u64.to_le_bytes(),
        );
        put(
            &mut memory,
            base + u64::from(o.large_alloc),
            &65536u64.to_le_bytes(),
        );
        put(
            &mut memory,
            base + u64::from(o.large_alloc_count),
            &2u64.to_le_bytes(),
        );
        put(
            &mut memory,
            base + u64::from(o.small_alloc_count) + 8 * 3,
            &40u64.to_le_bytes(),
        );
        put(
            &mut memory,
            base + u64::from(o.small_free_count) + 8 * 3,
            &30u64.to_le_bytes(),
        );
    }
    put(
        &mut memory,
        heap + u64::from(o.heap_stats_gen),
        &0u32.to_le_bytes(),
    );
    put(&mut memory, 0x40, &0x60u64.to_le_bytes());
    put(&mut memory, 0x48, &2u64.to_le_bytes());
    put(&mut memory, 0x60, &p0.to_le_bytes());
    put(&mut memory, 0x68, &p1.to_le_bytes());
    put(
        &mut memory,
        p0 + u64::from(o.p_mcache),
        &mcache.to_le_bytes(),
    );
    put(
        &mut memory,
        mcache + u64::from(o.mcache_tiny_allocs),
        &3u64.to_le_bytes(),
    );
    for spc in [6u64, 7] {
        put(
            &mut memory,
            mcache + u64::from(o.mcache_alloc) + 8 * spc,
            &span.to_le_bytes(),
        );
    }
    put(
        &mut memory,
        span + u64::from(o.mspan_alloc_count),
        &10u16.to_le_bytes(),
    );
    put(
        &mut memory,
        span + u64::from(o.mspan_alloc_count_before_cache),
        &4u16.to_le_bytes(),
    );
    seed.extend(memory);
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_seeds_are_readings_that_succeed() {
        let seeds = synthetic_seeds();
        assert_eq!(seeds.len(), 3 + 8 + 2 * 8);
        for (target, seed) in seeds {
            match target {
                "types" => {
                    let mut input = Input(&seed);
                    let (types_base, typ) = (input.u64(), input.u64());
                    let memory = ImageMemory {
                        base: 0x1000,
                        bytes: input.rest(),
                    };
                    let read = |addr: u64, len: usize| memory.read_bytes(addr, len).ok();
                    let name = types::type_name(&read, types_base, typ).unwrap();
                    assert!(!name.starts_with('*'), "{name}");
                }
                "goroutines" => {
                    let count = goroutines_reading(&seed).unwrap();
                    // Running and waiting (status 4 with the scan bit); the dead one not.
                    assert_eq!(count.user + count.runtime, 2);
                    assert_eq!(count.ids_handed_out, Some(5));
                }
                "alloc_counters" => {
                    let counters = alloc_counters_reading(&seed).unwrap();
                    // Two deltas of 2 large (64 KiB), 7 tiny, 40 allocs and 30 frees of
                    // class 3 (24 B); 12 unflushed class-3 objects and 3 tiny ones.
                    let expected = allocstats::AllocCounters {
                        alloc_bytes: 2 * (65536 + 40 * 24) + 12 * 24,
                        alloc_objects: 2 * (2 + 7 + 40) + 12 + 3,
                        free_bytes: 2 * 30 * 24,
                        free_objects: 2 * (7 + 30) + 3,
                    };
                    assert_eq!(counters, expected);
                }
                other => panic!("{other}"),
            }
        }
    }
}
