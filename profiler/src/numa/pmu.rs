//! Hardware memory-access sampling: Intel PEBS and AMD IBS. Detected at run time from the
//! PMUs the kernel exposes; their sample records are decoded here as pure functions (the
//! live perf-event path is not implemented: no machine of this project has either PMU, see
//! docs/NUMA.md).
//!
//! - PEBS: `perf_event_open` of `MEM_LOAD_L3_MISS_RETIRED.REMOTE_DRAM` (event 0xd3, umask
//!   0x02, precise) — every sample is a remote-DRAM load by construction — or the
//!   load-latency event, whose `data_src` says where the load was served from.
//! - IBS: the `ibs_op` PMU; the kernel fills `data_src` from `IBS_OP_DATA2`, and the raw
//!   record carries the registers themselves (`RmtNode`, `DataSrc`, the linear address).

use std::path::Path;

use serde::Serialize;

/// Which hardware sampler this machine offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pmu {
    /// Intel core PMU with load-latency PEBS (`cpu/format/ldlat`).
    Pebs { pmu_type: u32, model: String },
    /// AMD instruction-based sampling (`ibs_op`).
    Ibs { pmu_type: u32 },
}

/// Neither hardware sampler is present.
#[derive(Debug, thiserror::Error)]
#[error(
    "no PEBS (cpu PMU with ldlat) or IBS (ibs_op) PMU; event sources: {}",
    if .present.is_empty() { "none".to_string() } else { .present.join(", ") }
)]
pub struct NoPmu {
    /// The event sources the kernel exposes, sorted.
    pub present: Vec<String>,
}

/// Why a sample record cannot be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("sample_type {sample_type:#x} has fields this decoder does not walk ({unwalked:#x})")]
    SampleType { sample_type: u64, unwalked: u64 },
    #[error("record type {0} is not PERF_RECORD_SAMPLE")]
    NotSample(u32),
    #[error("record says {said} bytes, {given} given")]
    Size { said: usize, given: usize },
    #[error("record truncated at byte {0}")]
    Truncated(usize),
}

/// The PMU, or why there is none: from `root/sys/bus/event_source/devices`.
pub fn detect(root: &Path) -> Result<Pmu, NoPmu> {
    let devices = root.join("sys/bus/event_source/devices");
    let pmu_type = |dev: &str| {
        std::fs::read_to_string(devices.join(dev).join("type"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    if let Some(pmu_type) = pmu_type("ibs_op") {
        return Ok(Pmu::Ibs { pmu_type });
    }
    if let Some(pmu_type) = pmu_type("cpu")
        && devices.join("cpu/format/ldlat").exists()
    {
        let model = std::fs::read_to_string(devices.join("cpu/caps/pmu_name"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        return Ok(Pmu::Pebs { pmu_type, model });
    }
    let mut present: Vec<String> = std::fs::read_dir(&devices)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    Err(NoPmu { present })
}

// perf_event_attr.sample_type bits (include/uapi/linux/perf_event.h).
pub const SAMPLE_IP: u64 = 1 << 0;
pub const SAMPLE_TID: u64 = 1 << 1;
pub const SAMPLE_TIME: u64 = 1 << 2;
pub const SAMPLE_ADDR: u64 = 1 << 3;
pub const SAMPLE_CALLCHAIN: u64 = 1 << 5;
pub const SAMPLE_ID: u64 = 1 << 6;
pub const SAMPLE_CPU: u64 = 1 << 7;
pub const SAMPLE_PERIOD: u64 = 1 << 8;
pub const SAMPLE_STREAM_ID: u64 = 1 << 9;
pub const SAMPLE_RAW: u64 = 1 << 10;
pub const SAMPLE_REGS_USER: u64 = 1 << 12;
pub const SAMPLE_WEIGHT: u64 = 1 << 14;
pub const SAMPLE_DATA_SRC: u64 = 1 << 15;
pub const SAMPLE_IDENTIFIER: u64 = 1 << 16;
pub const SAMPLE_PHYS_ADDR: u64 = 1 << 19;
/// What [`decode_sample`] can walk; a record with any other bit set is refused.
const SUPPORTED: u64 = SAMPLE_IP
    | SAMPLE_TID
    | SAMPLE_TIME
    | SAMPLE_ADDR
    | SAMPLE_CALLCHAIN
    | SAMPLE_ID
    | SAMPLE_CPU
    | SAMPLE_PERIOD
    | SAMPLE_STREAM_ID
    | SAMPLE_RAW
    | SAMPLE_REGS_USER
    | SAMPLE_WEIGHT
    | SAMPLE_DATA_SRC
    | SAMPLE_IDENTIFIER
    | SAMPLE_PHYS_ADDR;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Index of R14 in x86 perf register masks (arch/x86/include/uapi/asm/perf_regs.h).
pub const PERF_REG_X86_R14: u32 = 22;

/// A decoded `PERF_RECORD_SAMPLE` of a memory-access sampler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemSample {
    pub ip: u64,
    pub pid: u32,
    pub tid: u32,
    pub time: u64,
    /// The data address (`PERF_SAMPLE_ADDR`).
    pub addr: u64,
    pub cpu: u32,
    pub weight: u64,
    pub data_src: u64,
    /// User-mode R14 (`g` in Go code), when the registers were sampled.
    pub r14: Option<u64>,
    pub callchain: Vec<u64>,
    /// `PERF_SAMPLE_RAW` bytes (IBS registers).
    pub raw: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

/// Decodes one `PERF_RECORD_SAMPLE` (header included) written with `sample_type` and
/// `sample_regs_user`, fields in the order of perf_event.h.
pub fn decode_sample(
    record: &[u8],
    sample_type: u64,
    regs_user: u64,
) -> Result<MemSample, DecodeError> {
    if sample_type & !SUPPORTED != 0 {
        return Err(DecodeError::SampleType {
            sample_type,
            unwalked: sample_type & !SUPPORTED,
        });
    }
    let mut r = Reader {
        bytes: record,
        at: 0,
    };
    let kind = r.u32()?;
    let _misc = r.take(2)?;
    let size = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
    if kind != PERF_RECORD_SAMPLE {
        return Err(DecodeError::NotSample(kind));
    }
    if size > record.len() {
        return Err(DecodeError::Size {
            said: size,
            given: record.len(),
        });
    }
    r.bytes = &record[..size];
    let mut s = MemSample::default();
    let has = |bit: u64| sample_type & bit != 0;
    if has(SAMPLE_IDENTIFIER) {
        r.u64()?;
    }
    if has(SAMPLE_IP) {
        s.ip = r.u64()?;
    }
    if has(SAMPLE_TID) {
        s.pid = r.u32()?;
        s.tid = r.u32()?;
    }
    if has(SAMPLE_TIME) {
        s.time = r.u64()?;
    }
    if has(SAMPLE_ADDR) {
        s.addr = r.u64()?;
    }
    if has(SAMPLE_ID) {
        r.u64()?;
    }
    if has(SAMPLE_STREAM_ID) {
        r.u64()?;
    }
    if has(SAMPLE_CPU) {
        s.cpu = r.u32()?;
        r.u32()?;
    }
    if has(SAMPLE_PERIOD) {
        r.u64()?;
    }
    if has(SAMPLE_CALLCHAIN) {
        let n = r.u64()? as usize;
        for _ in 0..n {
            s.callchain.push(r.u64()?);
        }
    }
    if has(SAMPLE_RAW) {
        let n = r.u32()? as usize;
        s.raw = r.take(n)?.to_vec();
    }
    if has(SAMPLE_REGS_USER) {
        let abi = r.u64()?;
        if abi != 0 {
            let mut index = 0;
            for bit in 0..64 {
                if regs_user & (1 << bit) == 0 {
                    continue;
                }
                let value = r.u64()?;
                if bit == PERF_REG_X86_R14 {
                    s.r14 = Some(value);
                }
                index += 1;
            }
            debug_assert_eq!(index, regs_user.count_ones());
        }
    }
    if has(SAMPLE_WEIGHT) {
        s.weight = r.u64()?;
    }
    if has(SAMPLE_DATA_SRC) {
        s.data_src = r.u64()?;
    }
    if has(SAMPLE_PHYS_ADDR) {
        r.u64()?;
    }
    Ok(s)
}

/// Where a sampled access was served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    LocalCache,
    LocalDram,
    RemoteCache,
    RemoteDram,
    Unknown,
}

impl Served {
    pub fn is_remote(self) -> bool {
        matches!(self, Served::RemoteCache | Served::RemoteDram)
    }
}

// union perf_mem_data_src fields.
const MEM_LVL_SHIFT: u32 = 5;
const MEM_LVL_L1: u64 = 0x08;
const MEM_LVL_LFB: u64 = 0x10;
const MEM_LVL_L2: u64 = 0x20;
const MEM_LVL_L3: u64 = 0x40;
const MEM_LVL_LOC_RAM: u64 = 0x80;
const MEM_LVL_REM_RAM1: u64 = 0x100;
const MEM_LVL_REM_RAM2: u64 = 0x200;
const MEM_LVL_REM_CCE1: u64 = 0x400;
const MEM_LVL_REM_CCE2: u64 = 0x800;
const MEM_LVLNUM_SHIFT: u32 = 33;
const MEM_LVLNUM_RAM: u64 = 0x0d;
const MEM_REMOTE_SHIFT: u32 = 37;

/// Classifies a `perf_mem_data_src` (PEBS load latency, IBS through the kernel).
pub fn classify_data_src(data_src: u64) -> Served {
    let lvl = (data_src >> MEM_LVL_SHIFT) & 0x3fff;
    let lvl_num = (data_src >> MEM_LVLNUM_SHIFT) & 0xf;
    let remote = (data_src >> MEM_REMOTE_SHIFT) & 1 == 1;
    let dram = lvl_num == MEM_LVLNUM_RAM
        || lvl & (MEM_LVL_LOC_RAM | MEM_LVL_REM_RAM1 | MEM_LVL_REM_RAM2) != 0;
    if dram {
        return if remote || lvl & (MEM_LVL_REM_RAM1 | MEM_LVL_REM_RAM2) != 0 {
            Served::RemoteDram
        } else {
            Served::LocalDram
        };
    }
    if lvl & (MEM_LVL_REM_CCE1 | MEM_LVL_REM_CCE2) != 0 {
        return Served::RemoteCache;
    }
    let cache = (1..=4).contains(&lvl_num)
        || lvl_num == 0x0b
        || lvl_num == 0x0c
        || lvl & (MEM_LVL_L1 | MEM_LVL_LFB | MEM_LVL_L2 | MEM_LVL_L3) != 0;
    match (cache, remote) {
        (true, true) => Served::RemoteCache,
        (true, false) => Served::LocalCache,
        _ => Served::Unknown,
    }
}

/// One IBS op sample from its raw registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IbsOp {
    pub rip: Option<u64>,
    /// `IBS_DC_LINADDR` when `DcLinAddrValid`.
    pub addr: Option<u64>,
    pub served: Served,
}

/// Decodes the `PERF_SAMPLE_RAW` of an `ibs_op` sample: `u32 caps`, then `IBS_OP_CTL`,
/// `IBS_OP_RIP`, `IBS_OP_DATA`, `IBS_OP_DATA2`, `IBS_OP_DATA3`, `IBS_DC_LINADDR`, ...
/// (arch/x86/events/amd/ibs.c, AMD PPR MSRC001_1033..1038).
pub fn decode_ibs_op(raw: &[u8]) -> Result<IbsOp, DecodeError> {
    let mut r = Reader { bytes: raw, at: 0 };
    let _caps = r.u32()?;
    let _ctl = r.u64()?;
    let rip = r.u64()?;
    let data = r.u64()?;
    let data2 = r.u64()?;
    let data3 = r.u64()?;
    let linaddr = r.u64()?;
    const RIP_INVALID: u64 = 1 << 38; // IBS_OP_DATA
    const LIN_ADDR_VALID: u64 = 1 << 17; // IBS_OP_DATA3
    const LOAD: u64 = 1 << 0; // IBS_OP_DATA3 IbsLdOp
    const DATA_SRC_DRAM: u64 = 3; // IBS_OP_DATA2 DataSrc[2:0]
    const DATA_SRC_PEER_CACHE: u64 = 2;
    let remote = (data2 >> 4) & 1 == 1; // RmtNode
    let served = if data3 & LOAD == 0 {
        Served::Unknown
    } else {
        match (data2 & 7, remote) {
            (DATA_SRC_DRAM, true) => Served::RemoteDram,
            (DATA_SRC_DRAM, false) => Served::LocalDram,
            (DATA_SRC_PEER_CACHE, true) => Served::RemoteCache,
            (DATA_SRC_PEER_CACHE, false) => Served::LocalCache,
            // DataSrc 0 on a load: served by this core's own caches.
            (0, _) => Served::LocalCache,
            _ => Served::Unknown,
        }
    };
    Ok(IbsOp {
        rip: (data & RIP_INVALID == 0).then_some(rip),
        addr: (data3 & LIN_ADDR_VALID != 0).then_some(linaddr),
        served,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PERF_RECORD_SAMPLE built field by field as the kernel's perf_output_sample writes
    /// it.
    fn record(fields: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = fields.concat();
        let mut out = Vec::new();
        out.extend_from_slice(&PERF_RECORD_SAMPLE.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes()); // PERF_RECORD_MISC_USER
        out.extend_from_slice(&((8 + body.len()) as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn data_src(lvl: u64, lvl_num: u64, remote: bool) -> u64 {
        let load = 0x02; // PERF_MEM_OP_LOAD
        load | (lvl << MEM_LVL_SHIFT) | (lvl_num << MEM_LVLNUM_SHIFT) | ((remote as u64) << 37)
    }

    #[test]
    fn pebs_remote_dram_sample_decodes_with_r14() {
        let sample_type = SAMPLE_IDENTIFIER
            | SAMPLE_IP
            | SAMPLE_TID
            | SAMPLE_TIME
            | SAMPLE_ADDR
            | SAMPLE_CPU
            | SAMPLE_PERIOD
            | SAMPLE_REGS_USER
            | SAMPLE_WEIGHT
            | SAMPLE_DATA_SRC;
        // sample_regs_user: BP, SP, IP, R14 (bits 6, 7, 8, 22).
        let regs_mask = (1 << 6) | (1 << 7) | (1 << 8) | (1 << PERF_REG_X86_R14);
        let ds = data_src(MEM_LVL_MISS_REM_RAM1, MEM_LVLNUM_RAM, true);
        let rec = record(&[
            &7u64.to_le_bytes(),                 // identifier
            &0x4a1234u64.to_le_bytes(),          // ip
            &100u32.to_le_bytes(),               // pid
            &101u32.to_le_bytes(),               // tid
            &5_000u64.to_le_bytes(),             // time
            &0x7f00_0000_1040u64.to_le_bytes(),  // addr
            &1u32.to_le_bytes(),                 // cpu
            &0u32.to_le_bytes(),                 // res
            &1000u64.to_le_bytes(),              // period
            &2u64.to_le_bytes(),                 // abi: PERF_SAMPLE_REGS_ABI_64
            &0x7ffc_0000_0100u64.to_le_bytes(),  // bp
            &0x7ffc_0000_00f0u64.to_le_bytes(),  // sp
            &0x4a1234u64.to_le_bytes(),          // ip
            &0x00c0_0000_21c0_u64.to_le_bytes(), // r14 = g
            &312u64.to_le_bytes(),               // weight (cycles)
            &ds.to_le_bytes(),                   // data_src
        ]);
        let s = decode_sample(&rec, sample_type, regs_mask).unwrap();
        assert_eq!((s.ip, s.pid, s.tid, s.cpu), (0x4a1234, 100, 101, 1));
        assert_eq!(s.addr, 0x7f00_0000_1040);
        assert_eq!(s.r14, Some(0x00c0_0000_21c0));
        assert_eq!(s.weight, 312);
        assert_eq!(classify_data_src(s.data_src), Served::RemoteDram);
        assert!(Served::RemoteDram.is_remote() && !Served::LocalDram.is_remote());
        // One byte short: refused, not misread.
        assert!(decode_sample(&rec[..rec.len() - 1], sample_type, regs_mask).is_err());
        // A field the decoder does not walk: refused.
        assert!(decode_sample(&rec, sample_type | (1 << 11), regs_mask).is_err());
    }

    const MEM_LVL_MISS_REM_RAM1: u64 = 0x04 | MEM_LVL_REM_RAM1;

    #[test]
    fn data_src_levels_classify() {
        assert_eq!(
            classify_data_src(data_src(0x02 | MEM_LVL_LOC_RAM, MEM_LVLNUM_RAM, false)),
            Served::LocalDram
        );
        assert_eq!(
            classify_data_src(data_src(0, MEM_LVLNUM_RAM, true)),
            Served::RemoteDram
        );
        assert_eq!(
            classify_data_src(data_src(0x02 | MEM_LVL_L3, 3, false)),
            Served::LocalCache
        );
        assert_eq!(
            classify_data_src(data_src(0x02 | MEM_LVL_REM_CCE1, 0, false)),
            Served::RemoteCache
        );
        assert_eq!(
            classify_data_src(data_src(0x01, 0x0f, false)),
            Served::Unknown
        );
    }

    #[test]
    fn ibs_op_registers_decode() {
        let raw = |data2: u64, data3: u64| -> Vec<u8> {
            [
                &0x1ffu32.to_le_bytes()[..], // caps
                &(1u64 << 17).to_le_bytes(), // op ctl (enabled)
                &0x4a2000u64.to_le_bytes(),  // rip
                &0u64.to_le_bytes(),         // op data: rip valid
                &data2.to_le_bytes(),
                &data3.to_le_bytes(),
                &0x00c0_0010_0008_u64.to_le_bytes(), // dc linaddr
                &0x1_2345_6000u64.to_le_bytes(),     // dc physaddr
            ]
            .concat()
        };
        let load_with_addr = 1 | (1 << 17);
        let op = decode_ibs_op(&raw(3 | (1 << 4), load_with_addr)).unwrap();
        assert_eq!(op.served, Served::RemoteDram);
        assert_eq!(op.addr, Some(0x00c0_0010_0008));
        assert_eq!(op.rip, Some(0x4a2000));
        assert_eq!(
            decode_ibs_op(&raw(3, load_with_addr)).unwrap().served,
            Served::LocalDram
        );
        assert_eq!(
            decode_ibs_op(&raw(2 | (1 << 4), 1)).unwrap(),
            IbsOp {
                rip: Some(0x4a2000),
                addr: None,
                served: Served::RemoteCache
            }
        );
        // A store: not a load sample.
        assert_eq!(
            decode_ibs_op(&raw(3 | (1 << 4), 2)).unwrap().served,
            Served::Unknown
        );
        assert!(decode_ibs_op(&raw(3, 1)[..20]).is_err());
    }

    #[test]
    fn detection_names_what_is_there() {
        let root = std::env::temp_dir().join(format!("gomemtrace-pmu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devices = root.join("sys/bus/event_source/devices");
        for (dev, ty) in [("software", "1"), ("tracepoint", "2")] {
            std::fs::create_dir_all(devices.join(dev)).unwrap();
            std::fs::write(devices.join(dev).join("type"), ty).unwrap();
        }
        let err = detect(&root).unwrap_err().to_string();
        assert!(err.contains("software, tracepoint"), "{err}");
        std::fs::create_dir_all(devices.join("cpu/format")).unwrap();
        std::fs::create_dir_all(devices.join("cpu/caps")).unwrap();
        std::fs::write(devices.join("cpu/type"), "4").unwrap();
        // An Intel core PMU without load latency: still no PEBS memory sampling.
        assert!(detect(&root).is_err());
        std::fs::write(devices.join("cpu/format/ldlat"), "config1:0-15").unwrap();
        std::fs::write(devices.join("cpu/caps/pmu_name"), "sapphire_rapids\n").unwrap();
        assert_eq!(
            detect(&root).unwrap(),
            Pmu::Pebs {
                pmu_type: 4,
                model: "sapphire_rapids".into()
            }
        );
        std::fs::create_dir_all(devices.join("ibs_op")).unwrap();
        std::fs::write(devices.join("ibs_op/type"), "11").unwrap();
        assert_eq!(detect(&root).unwrap(), Pmu::Ibs { pmu_type: 11 });
        std::fs::remove_dir_all(&root).unwrap();
    }
}
