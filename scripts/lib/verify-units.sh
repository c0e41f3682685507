#!/usr/bin/env bash
# Checks systemd/ the way systemd reads it, on a machine where systemd need
# not be PID 1 (a CI container): only the `systemd` package is required.
#
#   units     `systemd-analyze verify` on a copy whose ExecStart= points at
#             the workspace's own binary of that name (built here if needed):
#             every directive must parse and the binary must exist. verify
#             only warns about an unknown key or a bad value and still exits
#             0, so any output from it fails this script. Then
#             `systemd-analyze security --offline` must stay under the
#             unit's exposure ceiling.
#   sysusers  systemd-sysusers into a scratch root: the accounts are created.
#   tmpfiles  systemd-tmpfiles --create into the same root: every entry
#             parses, names only accounts sysusers.d creates (or root), and
#             is created with its mode (and owners, when run as root).
#
# Usage: scripts/lib/verify-units.sh [DIR]   (DIR defaults to systemd/)
set -euo pipefail
cd "$(dirname "$0")/../.."
units_dir=${1:-systemd}

# Highest `systemd-analyze security` exposure (x10: 20 = 2.0) per unit. The
# agent's children inherit its sandbox, so it keeps only what apps can live
# with (see the comments in its unit); the coordinator is locked down.
declare -A max_exposure=(
    [lockstep-agent.service]=80
    [lockstep-coordinator.service]=20
)

# systemd's own tools take these from the environment; pin them so that a
# developer's settings neither add output (which fails verify here) nor hide it.
export SYSTEMD_LOG_LEVEL=warning SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_COLOR=0
export SYSTEMD_PAGER=cat

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

fail() {
    echo "error: $*" >&2
    exit 1
}

# The path of workspace binary $1, built if needed; empty when no package
# has a binary of that name. A build that fails for any other reason fails.
workspace_bin() {
    local name=$1 out err
    err=$scratch/cargo-$name.err
    if out=$(cargo build --locked --quiet --bin "$name" --message-format=json 2>"$err"); then
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<<"$out" | tail -n 1
    elif grep -q "no bin target named" "$err"; then
        echo ""
    else
        cat "$err" >&2
        fail "cannot build $name"
    fi
}

echo "units in $units_dir/:"
shopt -s nullglob
units=("$units_dir"/*.service)
[ ${#units[@]} -gt 0 ] || fail "no unit files in $units_dir/"
mkdir "$scratch/units"
for unit in "${units[@]}"; do
    name=$(basename "$unit")
    execs=$(sed -n 's|^ExecStart=/usr/bin/\([^ ]*\).*|\1|p' "$unit")
    [ "$(wc -w <<<"$execs")" -eq 1 ] ||
        fail "$unit: expected one ExecStart=/usr/bin/<binary>, found: ${execs:-none}"
    bin=$(workspace_bin "$execs")
    [ -n "$bin" ] || fail "$unit: ExecStart= names $execs, which no workspace package builds"
    echo "  $name: ExecStart $execs -> $bin"
    sed "s|^ExecStart=/usr/bin/$execs|ExecStart=$bin|" "$unit" >"$scratch/units/$name"
done

# --man=no: no man pages are installed. --recursive-errors=no: report our
# units, not whatever the host's own units (network-online.target) contain.
if ! output=$(systemd-analyze verify --man=no --recursive-errors=no "$scratch"/units/*.service 2>&1) ||
    [ -n "$output" ]; then
    echo "$output" | sed "s|$scratch/units/|$units_dir/|g" >&2
    fail "systemd-analyze verify found problems in $units_dir/"
fi
echo "  systemd-analyze verify: no warnings"

for unit in "$scratch"/units/*.service; do
    name=$(basename "$unit")
    ceiling=${max_exposure[$name]:-}
    [ -n "$ceiling" ] || fail "$units_dir/$name: no exposure ceiling in max_exposure in $0"
    report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
    summary=$(grep "Overall exposure level" <<<"$report" || true)
    [ -n "$summary" ] || {
        echo "$report" >&2
        fail "systemd-analyze security could not rate $name"
    }
    if ! systemd-analyze security --offline=true --threshold="$ceiling" --no-pager "$unit" >/dev/null 2>&1; then
        grep "✗" <<<"$report" >&2 || true
        fail "$name: ${summary#→ }; the ceiling is $((ceiling / 10)).$((ceiling % 10))"
    fi
    echo "  ${summary#→ } (ceiling $((ceiling / 10)).$((ceiling % 10)))"
done

# sysusers.d and tmpfiles.d read their files by name from the root they
# operate on; lay them out as the packages install them.
root=$scratch/root
mkdir -p "$root/etc" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp "$units_dir"/sysusers.d/*.conf "$root/usr/lib/sysusers.d/"
cp "$units_dir"/tmpfiles.d/*.conf "$root/usr/lib/tmpfiles.d/"

for conf in "$units_dir"/sysusers.d/*.conf; do
    conf=${conf##*/}
    echo "sysusers.d/$conf:"
    output=$(systemd-sysusers --root="$root" "$conf" 2>&1) && [ -z "$output" ] || {
        echo "$output" | sed "s|$root/usr/lib/|$units_dir/|g" >&2
        fail "systemd-sysusers refused $units_dir/sysusers.d/$conf"
    }
done
awk -F: '{ print "  group " $1 " (gid " $3 "): created" }' "$root/etc/group"
awk -F: '{ print "  user " $1 " (uid " $3 ", home " $6 "): created" }' "$root/etc/passwd"

for conf in "$units_dir"/tmpfiles.d/*.conf; do
    conf=${conf##*/}
    echo "tmpfiles.d/$conf:"
    # The scratch root holds only the accounts sysusers.d made (and root), so
    # an entry naming any other account fails to resolve. Without root,
    # creating works but giving the directories their owners cannot: that
    # error alone is expected then.
    status=0
    output=$(systemd-tmpfiles --root="$root" --create "$conf" 2>&1) || status=$?
    if [ "$(id -u)" -ne 0 ]; then
        output=$(grep -v "fchownat() of .* failed: Operation not permitted" <<<"$output" || true)
        [ -n "$output" ] || status=0
        echo "  (not root: owners not applied)"
    fi
    if [ "$status" -ne 0 ] || [ -n "$output" ]; then
        echo "$output" | sed "s|$root/usr/lib/|$units_dir/|g" >&2
        fail "systemd-tmpfiles refused $units_dir/tmpfiles.d/$conf"
    fi
    while read -r type path mode user group _; do
        case $type in '' | \#*) continue ;; esac
        actual=$(stat -c %a "$root$path")
        [ "$actual" = "${mode#0}" ] || fail "$path: mode $actual, tmpfiles.d says $mode"
        echo "  $type $path $mode $user:$group: created"
    done <"$units_dir/tmpfiles.d/$conf"
done
