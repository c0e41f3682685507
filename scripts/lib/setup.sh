# shellcheck shell=bash
# Shared by scripts/test and scripts/demo: install what a fresh Debian 12
# machine with only the Rust toolchain lacks. Idempotent: each tool is
# installed only when absent.

step() {
    local name=$1
    shift
    echo "==> $name: $*"
    "$@"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# command -> Debian package that provides it
ensure_system_packages() {
    local -A provider=(
        [protoc]=protobuf-compiler      # tonic/prost code generation
        [etcd]=etcd-server              # the real etcd every integration test runs
        [etcdctl]=etcd-client           # benchmarks compare against `etcdctl lock`
        [setpriv]=util-linux            # harness children die with the test process
        [systemd-socket-activate]=systemd # LISTEN_FDS tests; systemd-analyze verify
        [curl]=curl                     # the demo checks what each host serves
        [python3]=python3               # the demo's client (standard library only)
    )
    local missing=()
    for cmd in "${!provider[@]}"; do
        command -v "$cmd" >/dev/null || missing+=("${provider[$cmd]}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

ensure_rust_tools() {
    command -v cargo >/dev/null || {
        echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
        return 1
    }
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            rustup component add "$component"
        fi
    done
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "==> installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}
