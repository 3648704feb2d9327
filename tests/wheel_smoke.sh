#!/usr/bin/env bash
# Wheel smoke test: each release wheel installs alone and works on a host
# without the build tools.
#
#   1. `make wheels` (into a temporary dist/, or the wheels in SMOKE_DIST):
#      the x86_64 and aarch64 manylinux_2_28 wheels; packaging/check_wheel.py
#      checks each (machine, NEEDED, glibc symbol versions, `auditwheel show`);
#   2. a fresh venv gets the wheel of this host's architecture and nothing
#      from the checkout;
#   3. from a directory outside the checkout, with PATH holding only the venv,
#      and (as root, with unshare) in a mount namespace where clang*, llvm*,
#      bpftool, gcc, cc, make, libbpf, /usr/include, kernel headers and the
#      host's libelf are hidden (tests/isolate.sh bare):
#      `python -m pymemcg snapshot --backend bpf`, one Reader.read through BPF
#      with no libelf mapped, `pymemcg doctor`, `pymemcg bench`,
#      `pymemcg --version`, and a scrape of `pymemcg export`;
#   4. the same wheel under every CPython it claims (3.9 to 3.13), each in a
#      fresh venv holding only the wheel and its pinned runtime dependencies,
#      offline, build tools hidden: `pymemcg verify` must find every stat
#      exact, and a read goes through BPF (tests/wheel_pythons.py; its
#      downloads are kept in build/wheelhouse/);
#   5. the aarch64 wheel on an x86_64 host with qemu-aarch64-static: under
#      qemu-user, in Debian's arm64 Python (`make arm64-userland`), its
#      extension imports and a text-backend read works. Its BPF test runs in
#      the kernel matrix's arm64 guests.
#
# Needs root and a kernel that runs the BPF program (like the BPF tests).
# Step 4 needs pyenv's CPython 3.9 to 3.13 (PYENV_ROOT, default /root/.pyenv).
# Env: SMOKE_PYTHON (the venv's interpreter; default Debian's /usr/bin/python3),
# SMOKE_DIST (a directory holding both wheels: no build), SMOKE_ISOLATE=0
# skips the namespaces.
set -euo pipefail

. "$(dirname "$0")/checks.sh"
PY=${SMOKE_PYTHON:-$DEFAULT_PY}
WORK=$(mktemp -d /tmp/pymemcg-wheel-smoke.XXXXXX)
EXPORTER_PID=

cleanup() {
    if [ -n "$EXPORTER_PID" ] && kill -0 "$EXPORTER_PID" 2>/dev/null; then
        kill -TERM "$EXPORTER_PID" 2>/dev/null || true
        wait "$EXPORTER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

check() {  # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

HOST_ARCH=$(uname -m)
VERSION=$("$PY" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["__version__"])' \
          "$CHECKOUT/pymemcg/_version.py")
if [ -n "${SMOKE_DIST:-}" ]; then
    DIST=$SMOKE_DIST
else
    echo "== make wheels"
    DIST=$WORK/dist
    start=$(date +%s)
    make -s -C "$CHECKOUT" wheels DIST="$DIST" >"$WORK/build.log" 2>&1 || {
        tail -40 "$WORK/build.log" >&2; fail "make wheels"; exit 1; }
    echo "make wheels: $(( $(date +%s) - start )) s"
fi
for arch in x86_64 aarch64; do
    w=$DIST/pymemcg-$VERSION-cp39-abi3-manylinux_2_28_$arch.whl
    if [ ! -e "$w" ]; then fail "no manylinux_2_28 $arch wheel in $DIST: $(ls "$DIST")"; exit 1; fi
    check "$arch wheel: machine, NEEDED, glibc symbol versions and auditwheel agree" \
        "$CHECKOUT/.venv/bin/python" "$CHECKOUT/packaging/check_wheel.py" "$w"
done
WHEEL=$DIST/pymemcg-$VERSION-cp39-abi3-manylinux_2_28_$HOST_ARCH.whl

"$PY" - "$WHEEL" >"$WORK/wheel.txt" <<'PYEOF'
import sys, zipfile
print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))
PYEOF
check "the wheel holds the extension" grep -qx 'pymemcg/_pymemcg.abi3.so' "$WORK/wheel.txt"
check "the wheel holds no vendored library (libbpf, libelf and zlib are linked in)" \
    bash -c "! grep -q '\\.libs/' '$WORK/wheel.txt'"
check "the wheel holds pymemcg.prometheus and _version" \
    grep -qx 'pymemcg/prometheus.py' "$WORK/wheel.txt"
check "the wheel holds no C or BPF source" bash -c "! grep -qE '\\.(c|h)\$|bpf_src/|csrc/' '$WORK/wheel.txt'"
check "the wheel holds the command line (pymemcg.cli)" \
    grep -qx 'pymemcg/cli/__init__.py' "$WORK/wheel.txt"
check "the wheel holds no benchmark of the checkout (bench/)" \
    bash -c "! grep -qE '^bench/|pymemcg_bench|^pymemcg/bench\.py\$' '$WORK/wheel.txt'"

echo "== a fresh venv with only the wheel ($PY)"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL[prometheus]" \
    >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "pip install the wheel"; exit 1; }
ok "pip install $(basename "$WHEEL")[prometheus]"

# the smoke itself, run below with the build tools out of reach
mkdir -p "$WORK/outside"
cat >"$WORK/smoke.sh" <<'EOF'
#!/bin/sh
# runs with PATH=<venv>/bin only, in a directory outside the checkout
set -u
checkout=$1 version=$2 out=$3
n_ok=0 n_fail=0
ok() { n_ok=$((n_ok + 1)); echo "ok: $*"; }
fail() { n_fail=$((n_fail + 1)); echo "FAIL: $*" >&2; }

for tool in clang clang-19 clang-14 llc bpftool gcc cc make ld; do
    if command -v "$tool" >/dev/null 2>&1; then fail "$tool is reachable: $(command -v "$tool")"; fi
done
ok "no build tool on PATH ($PATH)"
if [ "${PYMEMCG_SMOKE_ISOLATED:-0}" = 1 ]; then
    hidden=1
    for f in /usr/bin/clang-19 /usr/bin/clang /usr/sbin/bpftool /usr/bin/gcc /usr/bin/make; do
        if [ -e "$f" ] && "$f" --version >/dev/null 2>&1; then hidden=0; fail "$f still runs"; fi
    done
    if [ -e /usr/include/linux/bpf.h ] || [ -e /usr/include/bpf/libbpf.h ]; then
        hidden=0; fail "headers still visible"
    fi
    if [ "$hidden" = 1 ]; then ok "compilers, bpftool, make and headers hidden"; fi
fi

if python -c '
import os, sys
import pymemcg
checkout = sys.argv[1]
assert not os.path.realpath(pymemcg.__file__).startswith(checkout + "/"), pymemcg.__file__
assert pymemcg.__version__ == sys.argv[2], pymemcg.__version__
print("pymemcg", pymemcg.__version__, "from", os.path.dirname(pymemcg.__file__))
' "$checkout" "$version"; then ok "pymemcg imports from the venv"; else fail "import pymemcg"; fi

v1=$(pymemcg --version) ; v2=$(python -m pymemcg --version)
if [ "$v1" = "pymemcg $version" ] && [ "$v2" = "$v1" ]; then ok "--version: $v1"
else fail "--version: '$v1' / '$v2', expected 'pymemcg $version'"; fi

if python -m pymemcg snapshot --backend bpf >"$out/snapshot.txt" 2>"$out/snapshot.err" \
        && head -1 "$out/snapshot.txt" | grep -q '^backend bpf, '; then
    ok "python -m pymemcg snapshot --backend bpf"; head -4 "$out/snapshot.txt"
else
    fail "python -m pymemcg snapshot --backend bpf"; cat "$out/snapshot.txt" "$out/snapshot.err" >&2
fi

if python -c '
import pymemcg
from pymemcg.cgroupfs import own_memory_cgroup
with pymemcg.Reader(stats=["anon", "file", "usage", "pgfault"], backend="bpf") as r:
    rec = r.read(own_memory_cgroup())
    assert r.backend == "bpf", r.backend
    assert all(type(rec[n]) is int and rec[n] >= 0 for n in rec.keys()), rec
    assert rec["pgfault"] > 0, rec
    print("Reader.read:", rec.path, rec.as_dict())
# libelf and libbpf are linked into the extension: neither is mapped
maps = open("/proc/self/maps").read()
libs = sorted({line.split()[-1] for line in maps.splitlines() if "libelf" in line or "libbpf" in line})
assert not libs, libs
'; then ok "Reader.read through BPF (no libelf or libbpf mapped)"; else fail "Reader.read through BPF"; fi

if pymemcg doctor >"$out/doctor.txt" 2>&1; then ok "pymemcg doctor: BPF works"
else fail "pymemcg doctor exited $?"; cat "$out/doctor.txt" >&2; fi

# the user's benchmark needs nothing but the installed package
if pymemcg bench "$(python -c 'from pymemcg.cgroupfs import own_memory_cgroup as o; print(o())')" \
        --backend bpf --seconds 0.05 --rounds 2 >"$out/bench.txt" 2>&1 \
        && grep -q '^  -> Reader.read_tree .*x faster' "$out/bench.txt"; then
    ok "pymemcg bench"; grep -- '->' "$out/bench.txt"
else
    fail "pymemcg bench"; cat "$out/bench.txt" >&2
fi

pymemcg export --listen 127.0.0.1:0 --stats anon,usage,pgfault 2>"$out/export.err" &
pid=$!
if python -c '
import re, sys, time, urllib.request
from prometheus_client.parser import text_string_to_metric_families
err = sys.argv[1]
for _ in range(100):
    m = re.search(r"http://[^ ]+/metrics", open(err).read())
    if m:
        break
    time.sleep(0.1)
else:
    sys.exit("the exporter did not start: " + open(err).read())
text = urllib.request.urlopen(m.group(0), timeout=10).read().decode()
names = {f.name for f in text_string_to_metric_families(text)}
need = {"container_memory_rss", "container_memory_working_set_bytes", "memcg_anon", "memcg_pgfault"}
assert need <= names, need - names
print("scraped", m.group(0), len(text), "bytes")
' "$out/export.err"; then ok "pymemcg export serves metrics"; else fail "pymemcg export"; fi
kill -TERM "$pid"; wait "$pid"; rc=$?
if [ "$rc" = 0 ]; then ok "pymemcg export stops on SIGTERM with 0"; else fail "export exit status $rc"; fi
if ls /sys/fs/bpf/pymemcg 2>/dev/null | grep -q -- "-$pid\$"; then fail "pins of pid $pid left"
else ok "the exporter left no pin"; fi

echo "smoke: $n_ok passed, $n_fail failed"
[ "$n_fail" = 0 ]
EOF
chmod +x "$WORK/smoke.sh"

echo "== smoke from $WORK/outside, build tools out of reach"
mkdir -p "$WORK/out" "$WORK/bin"
for tool in cat grep head ls sleep; do  # what smoke.sh itself uses, nothing more
    ln -s "$(command -v "$tool")" "$WORK/bin/$tool"
done
RUN=(env -i HOME="$WORK" PATH="$WORK/venv/bin:$WORK/bin" LANG=C.UTF-8 PYMEMCG_REQUIRE_BPF=1
     /bin/sh "$WORK/smoke.sh" "$CHECKOUT" "$VERSION" "$WORK/out")
if [ "${SMOKE_ISOLATE:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null \
        && unshare --mount --propagation private true 2>/dev/null; then
    echo "(in a mount namespace: compilers, bpftool, make, libbpf, headers and the host's libelf hidden)"
    RUN=(unshare --mount --propagation private /bin/sh "$CHECKOUT/tests/isolate.sh" bare "${RUN[@]:0:5}"
         PYMEMCG_SMOKE_ISOLATED=1 "${RUN[@]:5}")
fi
if (cd "$WORK/outside" && "${RUN[@]}"); then ok "smoke in a bare environment"
else fail "smoke in a bare environment"; fi

echo "== the wheel under every CPython it claims"
start=$(date +%s)
if WHEEL_PYTHONS_ISOLATE=${SMOKE_ISOLATE:-1} \
        "$CHECKOUT/.venv/bin/python" "$CHECKOUT/tests/wheel_pythons.py" "$WHEEL"; then
    ok "every CPython the wheel claims: installed alone, pymemcg verify exact, a BPF read"
else
    fail "the wheel under the CPython versions it claims"
fi
echo "wheel under every CPython: $(( $(date +%s) - start )) s"

# the aarch64 wheel on this x86_64 host: its extension under qemu-user, in
# Debian's arm64 Python (unpacked, not installed); the wheel is unpacked as
# pip would install it
if [ "$HOST_ARCH" = x86_64 ] && command -v qemu-aarch64-static >/dev/null; then
    echo "== the aarch64 wheel under qemu-aarch64-static"
    if make -s -C "$CHECKOUT" arm64-userland >"$WORK/userland.log" 2>&1; then
        root=$(tail -n 1 "$WORK/userland.log")
        mkdir -p "$WORK/aarch64-site"
        "$PY" -m zipfile -e "$DIST/pymemcg-$VERSION-cp39-abi3-manylinux_2_28_aarch64.whl" \
            "$WORK/aarch64-site"
        if (cd "$WORK/outside" && env -i PYTHONPATH="$WORK/aarch64-site:$root/usr/lib/python3/dist-packages" \
                qemu-aarch64-static -L "$root" "$root/usr/bin/python3.11" -c '
import platform, pymemcg
from pymemcg import _pymemcg
from pymemcg.cgroupfs import own_memory_cgroup
assert platform.machine() == "aarch64", platform.machine()
with pymemcg.Reader(stats=["anon", "file", "pgfault"], backend="text") as r:
    rec = r.read(own_memory_cgroup())
    assert rec["pgfault"] > 0, rec
print("aarch64:", _pymemcg.__file__, _pymemcg.ffi.sizeof("struct pmc_config"), rec.as_dict())
'); then ok "aarch64 wheel: the extension imports and a text read works under qemu-user"
        else fail "aarch64 wheel under qemu-user"; fi
    else
        tail -20 "$WORK/userland.log" >&2; fail "make arm64-userland"
    fi
else
    echo "(no qemu-aarch64-static here: the aarch64 wheel is checked by check_wheel.py only)"
fi

echo "wheel smoke: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
