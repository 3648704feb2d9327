#!/usr/bin/env bash
# Wheel smoke test (issue 6): the wheel installs and works on a host without
# the build tools.
#
#   1. `make wheel` and `make sdist` (into a temporary dist/);
#   2. the sdist carries what a build needs, and (SMOKE_SDIST_BUILD=1, the
#      default) a wheel builds from it, offline (libbpf's tarball is copied in);
#   3. a fresh venv gets the wheel and nothing from the checkout;
#   4. from a directory outside the checkout, with PATH holding only the venv,
#      and (as root, with unshare) in a mount namespace where clang*, llvm*,
#      bpftool, gcc, cc, make, libbpf, /usr/include, kernel headers and the
#      host's libelf are hidden: `python -m pymemcg snapshot --backend bpf`,
#      one Reader.read through BPF, `pymemcg doctor`, `pymemcg bench`,
#      `pymemcg --version`, and a scrape of `pymemcg export`.
#
# Needs root and a kernel that runs the BPF program (like the BPF tests).
# Env: SMOKE_PYTHON (the venv's interpreter; default Debian's /usr/bin/python3),
# SMOKE_SDIST_BUILD=0 skips step 2's build, SMOKE_ISOLATE=0 skips the namespace.
set -euo pipefail

CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
if [ -x /usr/bin/python3 ]; then DEFAULT_PY=/usr/bin/python3; else DEFAULT_PY=$(command -v python3); fi
PY=${SMOKE_PYTHON:-$DEFAULT_PY}
WORK=$(mktemp -d /tmp/pymemcg-wheel-smoke.XXXXXX)
PASSED=0
FAILED=0
EXPORTER_PID=

cleanup() {
    if [ -n "$EXPORTER_PID" ] && kill -0 "$EXPORTER_PID" 2>/dev/null; then
        kill -TERM "$EXPORTER_PID" 2>/dev/null || true
        wait "$EXPORTER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

ok() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*" >&2; }
check() {  # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

echo "== building the wheel and the sdist"
make -s -C "$CHECKOUT" wheel sdist DIST="$WORK/dist" >"$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log" >&2; fail "make wheel sdist"; exit 1; }
WHEEL=$(ls "$WORK"/dist/pymemcg-*.whl)
SDIST=$(ls "$WORK"/dist/pymemcg-*.tar.gz)
VERSION=$("$PY" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["__version__"])' \
          "$CHECKOUT/pymemcg/_version.py")
echo "wheel: $(basename "$WHEEL")"
echo "sdist: $(basename "$SDIST")"

case "$(basename "$WHEEL")" in
    pymemcg-"$VERSION"-cp39-abi3-manylinux_*_x86_64.whl | pymemcg-"$VERSION"-cp39-abi3-manylinux_*_aarch64.whl)
        ok "wheel is a manylinux cp39-abi3 wheel of version $VERSION" ;;
    *) fail "unexpected wheel name $(basename "$WHEEL")" ;;
esac

"$PY" - "$WHEEL" >"$WORK/wheel.txt" <<'EOF'
import sys, zipfile
print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))
EOF
check "the wheel holds the extension" grep -qx 'pymemcg/_pymemcg.abi3.so' "$WORK/wheel.txt"
check "the wheel holds libelf (vendored by auditwheel)" grep -q '^pymemcg.libs/libelf' "$WORK/wheel.txt"
check "the wheel holds pymemcg.prometheus and _version" \
    grep -qx 'pymemcg/prometheus.py' "$WORK/wheel.txt"
check "the wheel holds no C or BPF source" bash -c "! grep -qE '\\.(c|h)\$|bpf_src/|csrc/' '$WORK/wheel.txt'"
check "the wheel holds the command line (pymemcg.cli)" \
    grep -qx 'pymemcg/cli/__init__.py' "$WORK/wheel.txt"
check "the wheel holds no benchmark of the checkout (bench/)" \
    bash -c "! grep -qE '^bench/|pymemcg_bench|^pymemcg/bench\.py\$' '$WORK/wheel.txt'"

echo "== the sdist"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' >"$WORK/sdist.txt"
for f in Makefile setup.py pyproject.toml MANIFEST.in README.md pymemcg/_version.py \
         bpf_src/memcg_iter.bpf.c bpf_src/memcg_record.h bpf_src/vmlinux_min.h \
         csrc/build_ffi.py csrc/pmc_shim.c csrc/pmc_shim.h pymemcg/cli/__init__.py \
         bench/memcg_bench.c bench/pymemcg_bench/__main__.py; do
    check "sdist has $f" grep -qx "$f" "$WORK/sdist.txt"
done
check "sdist has no compiled file" bash -c "! grep -qE '\\.(so|o)\$' '$WORK/sdist.txt'"
if [ "${SMOKE_SDIST_BUILD:-1}" != 0 ]; then
    mkdir -p "$WORK/sdist-build"
    tar -xzf "$SDIST" -C "$WORK/sdist-build"
    src=$(ls -d "$WORK"/sdist-build/pymemcg-*)
    tarball=$(ls "$CHECKOUT"/build/libbpf_*.orig.tar.gz 2>/dev/null | head -1 || true)
    if [ -n "$tarball" ]; then  # offline: the Makefile checks its sha256 before use
        mkdir -p "$src/build" && cp "$tarball" "$src/build/"
    fi
    if (cd "$WORK" && "$CHECKOUT/.venv/bin/python" -m pip wheel -q --no-deps \
            -w "$WORK/sdist-wheel" "$src" >"$WORK/sdist-build.log" 2>&1) \
            && ls "$WORK"/sdist-wheel/pymemcg-"$VERSION"-*.whl >/dev/null 2>&1; then
        ok "a wheel builds from the sdist"
    else
        tail -30 "$WORK/sdist-build.log" >&2; fail "a wheel builds from the sdist"
    fi
fi

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
# the extension loaded the wheel'"'"'s own libelf, not the host'"'"'s
maps = open("/proc/self/maps").read()
libelf = sorted({line.split()[-1] for line in maps.splitlines() if "libelf" in line})
assert libelf and all("pymemcg.libs" in p for p in libelf), libelf
print("libelf:", libelf[0])
'; then ok "Reader.read through BPF (vendored libelf)"; else fail "Reader.read through BPF"; fi

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

# hide what a bare host does not have: only in a private mount namespace
cat >"$WORK/isolate.sh" <<'EOF'
#!/bin/sh
set -eu
hide_dir() { if [ -d "$1" ]; then mount -t tmpfs -o size=1m tmpfs "$1"; fi; }
hide_file() { if [ -e "$1" ]; then mount --bind /dev/null "$1"; fi; }
hide_dir /usr/include
hide_dir /usr/src
for d in /usr/lib/llvm-*; do hide_dir "$d"; done
for d in /lib/modules/*/build /lib/modules/*/source; do
    if [ -e "$d" ]; then hide_dir "$(readlink -f "$d")"; fi
done
for f in /usr/bin/clang* /usr/bin/llc* /usr/bin/llvm-* /usr/sbin/bpftool /usr/bin/bpftool \
         /usr/bin/gcc* /usr/bin/x86_64-linux-gnu-gcc* /usr/bin/cc /usr/bin/make \
         /usr/lib/x86_64-linux-gnu/libbpf.so* /usr/lib/x86_64-linux-gnu/libbpf.a \
         /usr/lib/x86_64-linux-gnu/libelf.so* /usr/lib/x86_64-linux-gnu/libelf-*.so; do
    hide_file "$f"
done
exec "$@"
EOF
chmod +x "$WORK/isolate.sh"

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
    RUN=(unshare --mount --propagation private /bin/sh "$WORK/isolate.sh" "${RUN[@]:0:5}"
         PYMEMCG_SMOKE_ISOLATED=1 "${RUN[@]:5}")
fi
if (cd "$WORK/outside" && "${RUN[@]}"); then ok "smoke in a bare environment"
else fail "smoke in a bare environment"; fi

echo "wheel smoke: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
