#!/usr/bin/env bash
# Builds and tests edge-runtime on arm64 (aarch64) on an x86-64 host: a Debian bookworm arm64 chroot
# run under qemu-user-static. See deploy/arm/README.md. Needs root. Reuses the chroot on later runs.
#
#   deploy/arm/run-arm-tests.sh [--root DIR] [--bundle DIR] [--store DIR] [--cpu QEMU_CPU]
#                               [--skip-tests] [--skip-smoke]
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="${ARM_ROOT:-/var/tmp/edge-runtime-arm64}"
STORE="${EDGE_RUNTIME_HOME:-$REPO/.edge-runtime}"   # where the trusted keys (and default bundle) live
BUNDLE=""
DEFAULT_MODEL="clinc150-minilm-int8"
RUN_TESTS=1
RUN_SMOKE=1
SUITE="bookworm"
# the emulated CPU matches the fake /proc/cpuinfo (Cortex-A76, as on a Raspberry Pi 5). qemu's default
# "max" has SVE, and onnxruntime 1.32's optimised INT8 graph then returns wrong logits under qemu 7.2
QEMU_CPU_MODEL="${ARM_QEMU_CPU:-cortex-a76}"
VENV="/opt/edge-venv"          # inside the chroot
BUILD_DIR="/build/edge-runtime" # inside the chroot: a copy of the repo, so the host's x86 .so files stay put
SRC_MOUNT="/src"                # inside the chroot: the repo, bind-mounted read-only
TESTS=(tests/test_kernels_numeric.py tests/test_pii.py tests/test_redaction.py tests/test_router.py)
PY_PACKAGES=(numpy Cython setuptools wheel tokenizers onnxruntime cryptography platformdirs click rich
             paho-mqtt prometheus-client aiohttp psutil pytest pytest-timeout hypothesis faker)
DEB_PACKAGES=(ca-certificates python3 python3-venv python3-dev gcc)

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run-arm-tests: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --bundle) BUNDLE="${2:?--bundle needs a directory}"; shift 2 ;;
        --store) STORE="${2:?--store needs a directory}"; shift 2 ;;
        --cpu) QEMU_CPU_MODEL="${2:?--cpu needs a qemu CPU model}"; shift 2 ;;
        --skip-tests) RUN_TESTS=0; shift ;;
        --skip-smoke) RUN_SMOKE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"
[ "$(uname -m)" = x86_64 ] || echo "run-arm-tests: note: host is $(uname -m), not x86_64"
ROOT="$(realpath -m "$ROOT")"
[ "$ROOT" != / ] || die "--root must not be /"

# ---- bookkeeping: one line per stage in the summary -----------------------------------------------
STAGES=(); FAILED=0
record() { STAGES+=("$(printf '%-6s %6ss  %s' "$1" "$2" "$3")"); }
stage() {  # stage required|optional NAME FUNCTION
    local kind="$1" name="$2" func="$3" start status
    echo; echo "=== $name"
    start=$(date +%s)
    if "$func"; then status=ok; else status=FAIL; FAILED=1; fi
    record "$status" "$(( $(date +%s) - start ))" "$name${NOTE:+ ($NOTE)}"
    NOTE=""
    if [ "$status" = FAIL ] && [ "$kind" = required ]; then summary; exit 1; fi
}
NOTE=""
summary() {
    echo; echo "=== summary (chroot: $ROOT)"
    printf '%s\n' "${STAGES[@]}"
    [ "$FAILED" = 0 ] && echo "ARM check: all passed" || echo "ARM check: FAILED"
}

# ---- mounts, undone on exit -------------------------------------------------------------------------
MOUNTED=()
mount_once() {  # mount_once TARGET mount-args...
    local target="$1"; shift
    if mountpoint -q "$target"; then return 0; fi
    mount "$@" "$target" && MOUNTED+=("$target")
}
cleanup() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null \
            || echo "run-arm-tests: could not unmount ${MOUNTED[i]}" >&2
    done
    MOUNTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_chroot() {  # in_chroot 'shell commands' -- a clean environment, the venv first on PATH
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PYTHONDONTWRITEBYTECODE=1 \
        HF_HUB_OFFLINE=1 DEBIAN_FRONTEND=noninteractive QEMU_CPU="$QEMU_CPU_MODEL" \
        ${CHROOT_ENV:-} /bin/bash -ec "$1"
}

# ---- the Debian mirror apt already uses on this host ----------------------------------------------
mirror_for() {  # mirror_for SUITE -> the first URI that serves SUITE in the host's apt sources
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk -v s="$1" '$1=="deb" { i=2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                        if ($(i+1)==s) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk -v s="$1" 'BEGIN { RS="" } {
                uris=""; suites=""; n=split($0, L, "\n")
                for (j=1; j<=n; j++) {
                    if (L[j] ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", L[j]); uris=L[j] }
                    if (L[j] ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", L[j]); suites=" " L[j] " " }
                }
                if (index(suites, " " s " ")) { split(uris, U, " "); print U[1]; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
}

# ---- stages -------------------------------------------------------------------------------------------
host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || return 1
    fi
    NOTE="$(/usr/bin/qemu-aarch64-static --version | head -1)"
}

binfmt() {
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || return 1
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64 || return 1
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "qemu-aarch64 binfmt is disabled"; return 1; }
    NOTE="flags: $(sed -n 's/^flags: //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
}

MIRROR=""; SECURITY=""
rootfs() {
    MIRROR="$(mirror_for "$SUITE")"; SECURITY="$(mirror_for "$SUITE-security")"
    [ -n "$MIRROR" ] || { echo "no apt source for $SUITE in /etc/apt/sources.list*"; return 1; }
    echo "mirror: $MIRROR${SECURITY:+, security: $SECURITY}"
    if [ -x "$ROOT/usr/bin/apt-get" ] && [ ! -e "$ROOT/debootstrap" ]; then
        install -m 755 /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
        NOTE="reused"; return 0
    fi
    if [ -x "$ROOT/debootstrap/debootstrap" ]; then   # an interrupted run: finish it
        chroot "$ROOT" /debootstrap/debootstrap --second-stage && return 0
        echo "second stage failed; remove $ROOT and run again"; return 1
    fi
    mkdir -p "$ROOT"
    # two stages so that binfmt registrations without the F (fix-binary) flag work too: they look
    # for qemu inside the chroot, which only exists after the first stage
    debootstrap --arch=arm64 --variant=minbase --foreign "$SUITE" "$ROOT" "$MIRROR" || return 1
    install -m 755 /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
}

fake_cpuinfo() {  # qemu-user shows the host's x86 /proc/cpuinfo; onnxruntime's cpuinfo parser needs an ARM one
    local n cpus out="$ROOT/etc/edge-runtime-fake-cpuinfo"
    cpus=$(getconf _NPROCESSORS_CONF)
    : > "$out"
    for (( n=0; n<cpus; n++ )); do sed "s/@N@/$n/" "$HERE/cpuinfo-cortex-a76.txt" >> "$out"; done
}

mounts() {
    mkdir -p "$ROOT$SRC_MOUNT"
    mount_once "$ROOT/proc" -t proc proc || return 1
    mount_once "$ROOT/sys" --bind /sys || return 1
    mount_once "$ROOT/dev" --bind /dev || return 1
    mount_once "$ROOT/dev/pts" --bind /dev/pts || return 1
    mount_once "$ROOT$SRC_MOUNT" --bind "$REPO" || return 1
    mount -o remount,bind,ro "$ROOT$SRC_MOUNT" || return 1
    fake_cpuinfo || return 1
    mount_once "$ROOT/proc/cpuinfo" --bind "$ROOT/etc/edge-runtime-fake-cpuinfo" || return 1
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    NOTE="$(chroot "$ROOT" /usr/bin/uname -m), qemu -cpu $QEMU_CPU_MODEL, $(grep -c ^processor "$ROOT/proc/cpuinfo") fake Cortex-A76 cores"
}

debian_packages() {
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ -n "$SECURITY" ] && echo "deb $SECURITY $SUITE-security main"
    } > "$ROOT/etc/apt/sources.list"
    # a TLS-intercepting proxy's CA (if the host trusts one) so pip inside reaches PyPI
    local crt new_ca=0
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        cmp -s "$crt" "$ROOT$crt" || { cp "$crt" "$ROOT$crt"; new_ca=1; }
    done
    if in_chroot "dpkg -s ${DEB_PACKAGES[*]} >/dev/null 2>&1"; then
        [ "$new_ca" = 0 ] || in_chroot "update-ca-certificates >/dev/null"
        NOTE="reused"; return 0
    fi
    in_chroot "apt-get -o Acquire::Check-Valid-Until=false update -q &&
               apt-get install -y -q --no-install-recommends ${DEB_PACKAGES[*]} &&
               apt-get clean && update-ca-certificates >/dev/null"
}

python_packages() {
    local wanted="${PY_PACKAGES[*]}"
    if [ "$(cat "$ROOT$VENV/.edge-packages" 2>/dev/null)" = "$wanted" ]; then NOTE="reused"; return 0; fi
    in_chroot "[ -x $VENV/bin/python ] || python3 -m venv $VENV
               python -m pip install -q --upgrade pip
               python -m pip install -q --only-binary=:all: $wanted" || return 1
    echo "$wanted" > "$ROOT$VENV/.edge-packages"
    NOTE="$(in_chroot "python -c 'import onnxruntime, numpy, tokenizers; print(\"onnxruntime\", onnxruntime.__version__, \"numpy\", numpy.__version__)'")"
}

build_extension() {
    # a fresh copy of the repo (the host's x86 .so and generated .c files stay out), built for aarch64
    # on every run: Cython regenerates the C, gcc compiles it (the slowest stage under emulation)
    local dest="$ROOT$BUILD_DIR"
    rm -rf "$dest" && mkdir -p "$dest" || return 1
    tar -C "$ROOT$SRC_MOUNT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./.edge-runtime \
        --exclude=./.hypothesis --exclude=./.pytest_cache --exclude='*.so' --exclude='./kernels/*.c' \
        --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$dest" -xf - || return 1
    in_chroot "cd $BUILD_DIR && python -m pip install -q --no-build-isolation --no-deps -e ."
}

check_kernels() {
    NOTE="$(in_chroot "cd / && python - <<'EOF'
import platform
import edge_runtime.kernels as k
assert platform.machine() == 'aarch64', platform.machine()
assert k.IMPLEMENTATION == 'cython', k.IMPLEMENTATION
print(platform.machine(), 'kernels', k.IMPLEMENTATION, k.compiled_module('pii').__file__.rsplit('/', 1)[1])
EOF")" || return 1
    echo "$NOTE"
}

kernel_tests() {
    local log="$ROOT/tmp/edge-arm-pytest.log"
    in_chroot "cd $BUILD_DIR && python -m pytest -q -p no:cacheprovider ${TESTS[*]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    NOTE="$(grep -E '(passed|failed|error)' "$log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')"
    return "$rc"
}

find_bundle() {  # the newest installed version of the default model in the host's store
    local dir
    dir="$(ls -d "$STORE/models/$DEFAULT_MODEL"/*/ 2>/dev/null | sort -V | tail -1)"
    [ -n "$dir" ] && [ -f "$dir/manifest.json" ] && echo "${dir%/}"
}

smoke() {
    [ -n "$BUNDLE" ] || BUNDLE="$(find_bundle)"
    if [ -z "$BUNDLE" ]; then
        NOTE="skipped: no bundle (no --bundle and nothing in $STORE/models/$DEFAULT_MODEL)"
        echo "$NOTE"; return 0
    fi
    [ -f "$BUNDLE/manifest.json" ] || { echo "$BUNDLE: not a bundle directory (no manifest.json)"; return 1; }
    ls "$STORE"/keys/trusted/*.pub >/dev/null 2>&1 || { echo "no trusted keys in $STORE/keys/trusted"; return 1; }
    # a fresh store inside the chroot that trusts the same keys; the bundle is installed like on a device
    rm -rf "$ROOT/srv/edge-bundle" "$ROOT/srv/edge-home"
    mkdir -p "$ROOT/srv/edge-home/keys/trusted"
    cp -a "$BUNDLE" "$ROOT/srv/edge-bundle"
    cp "$STORE"/keys/trusted/*.pub "$ROOT/srv/edge-home/keys/trusted/"
    CHROOT_ENV="EDGE_RUNTIME_HOME=/srv/edge-home" in_chroot '
        cd /
        edge-runtime models install /srv/edge-bundle --activate
        echo "--- predict"
        edge-runtime predict "what is my balance" "book a table for two at 7pm" "how do I say thanks in french"
        echo "--- doctor --json"
        edge-runtime doctor --json | tee /tmp/doctor.json
        echo "--- golden examples (same answers as on x86)"
        python - <<EOF
import json, os, sys
from edge_runtime.model import load
if not os.path.exists("/srv/edge-bundle/golden.jsonl"):
    sys.exit(print("golden: the bundle has no golden.jsonl, skipped"))
golden = [json.loads(line) for line in open("/srv/edge-bundle/golden.jsonl") if line.strip()]
model = load(None)
predictions = model.predict([g["text"] for g in golden])
bad = [(g["text"], g["label"], g["score"], p.label, round(p.score, 4)) for g, p in zip(golden, predictions)
       if p.label != g["label"] or abs(p.score - g["score"]) > 0.1]
assert not bad, f"{len(bad)}/{len(golden)} golden examples differ: {bad[:3]}"
print(f"golden: {len(golden)}/{len(golden)} labels match, scores within 0.1")
EOF
        python - <<EOF
import json
report = json.load(open("/tmp/doctor.json"))
assert report["machine"] == "aarch64", report["machine"]
assert report["kernels"] == "cython", report["kernels"]
assert report["cpu_features"]["neon"] and report["cpu_features"]["dotprod"], report["cpu_features"]
assert report["store"]["ok"] and not report["problems"], report["problems"]
print("doctor: aarch64, kernels cython, neon+dotprod, store ok")
EOF' || return 1
    NOTE="bundle $(basename "$(dirname "$BUNDLE")")@$(basename "$BUNDLE")"
}

# ---- run ------------------------------------------------------------------------------------------------
START=$(date +%s)
stage required "host tools (debootstrap, qemu-user-static, binfmt-support)" host_tools
stage required "binfmt_misc + qemu-aarch64" binfmt
stage required "debootstrap arm64 $SUITE" rootfs
stage required "mounts (/proc, /sys, /dev, repo ro, fake ARM /proc/cpuinfo)" mounts
stage required "apt: ${DEB_PACKAGES[*]}" debian_packages
stage required "pip: aarch64 wheels into $VENV" python_packages
stage required "build the Cython extension (copy of the repo)" build_extension
stage required "edge_runtime.kernels.IMPLEMENTATION == cython" check_kernels
[ "$RUN_TESTS" = 1 ] && stage optional "kernel tests: ${TESTS[*]}" kernel_tests
[ "$RUN_SMOKE" = 1 ] && stage optional "model smoke test (models install, predict, doctor)" smoke
record total "$(( $(date +%s) - START ))" "wall time"
summary
exit "$FAILED"
