//! Version, build settings, build IDs, ELF kind and errors, checked against the Go
//! toolchain's own tools (`go version -m`, `go tool buildid`) and `readelf`.

mod support;

use std::path::Path;
use std::process::Command;

use gomemtrace_gobin::{Arch, Error, GoBinary};
use support::{Variant, go_binary, go_tool, go_version_of, go_versions};

fn each_binary(check: impl Fn(&str, Variant, &Path, &GoBinary)) {
    for version in go_versions() {
        for variant in Variant::ALL {
            let path = go_binary(version, variant);
            let binary = GoBinary::open(&path)
                .unwrap_or_else(|e| panic!("open go{version} {variant:?}: {e}"));
            check(version, variant, &path, &binary);
        }
    }
}

#[test]
fn version_matches_go_version() {
    each_binary(|version, variant, path, binary| {
        let expected = go_version_of(version, path);
        assert_eq!(binary.version_string(), expected, "go{version} {variant:?}");
        assert_eq!(
            binary.version().to_string().rsplit_once('.').unwrap().0,
            format!("go{version}")
        );
    });
}

#[test]
fn build_settings_and_main_module_match_go_version_m() {
    each_binary(|version, variant, path, binary| {
        let out = go_tool(version, &["version", "-m", path.to_str().unwrap()]);
        let build_lines: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("build\t"))
            .collect();
        assert_eq!(
            binary.build_settings().len(),
            build_lines.len(),
            "go{version} {variant:?}: {out} vs {:?}",
            binary.build_settings()
        );
        for (key, value) in binary.build_settings() {
            // `go version -m` prints values with spaces Go-quoted.
            let plain = format!("{key}={value}");
            let quoted = format!("{key}={value:?}");
            assert!(
                build_lines.iter().any(|l| *l == plain || *l == quoted),
                "go{version} {variant:?}: {plain} not in\n{out}"
            );
        }
        let settings = binary.build_settings();
        let has = |k: &str, v: &str| settings.iter().any(|(key, value)| key == k && value == v);
        assert_eq!(
            has("-ldflags", "-s -w"),
            variant.is_stripped(),
            "go{version} {variant:?}"
        );
        if version != "1.19" {
            // Go 1.19 does not record -buildmode in the module info.
            assert_eq!(
                has("-buildmode", "pie"),
                variant.is_pie(),
                "go{version} {variant:?}"
            );
        }
        let path_line = out
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("path\t"))
            .unwrap();
        assert_eq!(binary.main_module(), Some(path_line));
    });
}

#[test]
fn elf_kind_matches_variant() {
    each_binary(|version, variant, _, binary| {
        assert_eq!(
            binary.is_stripped(),
            variant.is_stripped(),
            "go{version} {variant:?}"
        );
        assert_eq!(binary.is_pie(), variant.is_pie(), "go{version} {variant:?}");
        assert_eq!(binary.arch(), Arch::Amd64);
    });
}

#[test]
fn build_ids_match_go_tool_buildid_and_readelf() {
    each_binary(|version, variant, path, binary| {
        let go_id = go_tool(version, &["tool", "buildid", path.to_str().unwrap()]);
        assert_eq!(
            binary.go_build_id().as_deref(),
            Some(go_id.trim()),
            "go{version} {variant:?}"
        );

        let Ok(readelf) = Command::new("readelf").arg("-n").arg(path).output() else {
            return; // no binutils: nothing to compare against
        };
        let notes = String::from_utf8_lossy(&readelf.stdout);
        let gnu_id = notes
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_string);
        assert_eq!(binary.gnu_build_id(), gnu_id, "go{version} {variant:?}");
    });
}

#[test]
fn non_go_files_are_rejected() {
    let err = GoBinary::open(Path::new("/bin/true")).unwrap_err();
    assert!(matches!(err, Error::NotGo { .. }), "{err}");
    assert!(err.to_string().contains("not a Go binary"), "{err}");

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let err = GoBinary::open(&manifest).unwrap_err();
    assert!(matches!(err, Error::NotElf { .. }), "{err}");

    let err = GoBinary::open(Path::new("/nonexistent/binary")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let err = GoBinary::from_bytes(b"\x7fELF garbage".to_vec()).unwrap_err();
    assert!(matches!(err, Error::NotElf { .. }), "{err}");
}

#[test]
fn from_bytes_equals_open() {
    let path = go_binary("1.25", Variant::Stripped);
    let opened = GoBinary::open(&path).unwrap();
    let from_bytes = GoBinary::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(opened.functions(), from_bytes.functions());
    assert_eq!(opened.version_string(), from_bytes.version_string());
}

#[test]
fn go_older_than_1_18_is_unsupported() {
    // Rewrite the version in a real binary's buildinfo to an older release of the same length.
    let path = go_binary("1.21", Variant::Stripped);
    let real = GoBinary::open(&path).unwrap().version_string().to_string();
    let old = format!("go1.16.{}", "1".repeat(real.len() - "go1.16.".len()));
    let mut data = std::fs::read(&path).unwrap();
    let at = data
        .windows(real.len())
        .position(|w| w == real.as_bytes())
        .unwrap();
    let buildinfo_at = data
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .unwrap();
    let at = if at < buildinfo_at {
        buildinfo_at
            + data[buildinfo_at..]
                .windows(real.len())
                .position(|w| w == real.as_bytes())
                .unwrap()
    } else {
        at
    };
    data[at..at + real.len()].copy_from_slice(old.as_bytes());
    match GoBinary::from_bytes(data) {
        Err(Error::UnsupportedVersion { version }) => assert_eq!(version, old),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// `bytes` with its `.go.buildinfo` gone as some distributed binaries ship: the section
/// renamed in the section-name table and its magic overwritten, so neither the section nor
/// a scan for the magic finds it (the program itself does not read it).
fn without_buildinfo(mut bytes: Vec<u8>) -> Vec<u8> {
    let rename = |bytes: &mut Vec<u8>, from: &[u8], to: &[u8]| {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{} not in the file", String::from_utf8_lossy(from)));
        bytes[at..at + to.len()].copy_from_slice(to);
    };
    rename(&mut bytes, b"\0.go.buildinfo\0", b"\0.go.xuildinfo\0");
    rename(
        &mut bytes,
        b"\xff Go buildinf:",
        b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    );
    bytes
}

/// A Go executable without `.go.buildinfo` is still recognised by its pclntab; the version
/// comes from the runtime's own `runtime.buildVersion` (found through `runtime.schedinit`
/// when stripped) and equals `go version`'s word on the original; the build settings are
/// unknown; the functions are the original's.
#[test]
fn a_binary_without_buildinfo_is_recognised_by_its_pclntab() {
    each_binary(|version, variant, path, original| {
        let bytes = without_buildinfo(std::fs::read(path).unwrap());
        assert!(!GoBinary::has_buildinfo(&bytes), "go{version} {variant:?}");
        assert!(GoBinary::looks_like_go(&bytes), "go{version} {variant:?}");
        let binary = GoBinary::from_bytes(bytes)
            .unwrap_or_else(|e| panic!("go{version} {variant:?} without buildinfo: {e}"));
        assert!(original.has_buildinfo_section() && !binary.has_buildinfo_section());
        assert_eq!(
            binary.version_string(),
            go_version_of(version, path),
            "go{version} {variant:?}"
        );
        assert_eq!(binary.version(), original.version());
        assert!(binary.build_settings().is_empty() && binary.main_module().is_none());
        assert_eq!(binary.functions().len(), original.functions().len());
        let main = binary.function("main.main").expect("main.main");
        assert_eq!(
            Some(main.entry),
            original.function("main.main").map(|f| f.entry)
        );
    });
}
