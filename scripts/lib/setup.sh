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

# Installs the Debian packages whose witness (a command on PATH, or an
# absolute path to a file the build reads) is missing. Arguments are
# WITNESS=PACKAGE pairs, so each caller names only what it uses.
ensure_debian_packages() {
    local missing=() pair witness package
    for pair in "$@"; do
        witness=${pair%%=*}
        package=${pair#*=}
        if [[ $witness == /* ]]; then
            [ -e "$witness" ] && continue
        else
            command -v "$witness" >/dev/null && continue
        fi
        missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# What `cargo build` needs: a C toolchain (rustup installs none); tonic/prost code generation runs `protoc`, and
# etcd-client's protos import the well-known types, which Debian ships in
# libprotobuf-dev, not with the compiler (a fresh machine has protoc
# without them and the build fails on google/protobuf/descriptor.proto).
BUILD_PACKAGES=(
    cc=gcc                          # rustc links through cc; ring and zstd build C
    /usr/include/stdio.h=libc6-dev
    protoc=protobuf-compiler
    /usr/include/google/protobuf/descriptor.proto=libprotobuf-dev
)

# What the demo runs besides the workspace's own binaries.
DEMO_PACKAGES=(
    etcd=etcd-server                # the fleet's etcd
    setpriv=util-linux              # daemons die with the demo script
    curl=curl                       # the demo checks what each host serves
    python3=python3                 # the demo's client (standard library only)
)

# What the test command runs besides the demo's packages.
TEST_PACKAGES=(
    etcdctl=etcd-client             # benchmarks compare against `etcdctl lock`
    systemd-socket-activate=systemd # LISTEN_FDS tests; systemd-analyze verify
    debootstrap=debootstrap         # the packages' test: a Debian 12 root …
    systemd-nspawn=systemd-container # … booted with systemd as PID 1
    prometheus=prometheus           # metrics tests: a real Prometheus, and promtool
    ip=iproute2                     # fault tests: nodes in network namespaces …
    nft=nftables                    # … partitioned by dropping their packets
    chromium=chromium               # the web view's browser test (headless) …
    chromedriver=chromium-driver    # … driven over WebDriver
)

ensure_cargo() {
    command -v cargo >/dev/null || {
        echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
        return 1
    }
}

# rustfmt, clippy and cargo-nextest: the test command's tools, which the
# demo never runs (nextest alone is minutes of compiling on a fresh machine).
ensure_test_tools() {
    ensure_cargo
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

# cargo-deb, for scripts/package.
ensure_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "==> installing cargo-deb"
        cargo install --locked cargo-deb
    fi
}
