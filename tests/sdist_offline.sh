#!/usr/bin/env bash
# The sdist installs offline from what it carries.
#
#   1. `make sdist` (into a temporary dist/); it carries the BPF objects and
#      skeletons of x86_64 and aarch64 and libbpf's source;
#   2. a fresh venv gets the build requirements (setuptools, cffi) while
#      online; then, in a new network namespace (unshare --net: no network at
#      all) and a private mount namespace where clang, llvm, bpftool and make
#      are unusable (tests/isolate.sh no-bpf-tools; CLANG and BPFTOOL are
#      /bin/false too), `pip install --no-index --no-build-isolation` of the
#      sdist builds the extension with the host's C compiler, libelf and zlib;
#      `pymemcg verify` then compares every stat BPF serves with the kernel's
#      own files, and one Reader.read goes through BPF;
#   3. the same with every C compiler unusable as well (isolate.sh
#      no-compiler): the install succeeds as the text backend and says so at
#      build time; Reader(backend="auto") reads memory.stat with a
#      FallbackWarning giving the reason, and backend="bpf" raises
#      ExtensionMissing (a pymemcg.Error) naming the remedy.
#
# Needs root (namespaces, BPF), a kernel that runs the BPF program, gcc and
# the libelf and zlib headers. Env: SDIST_PYTHON (default Debian's
# /usr/bin/python3), SDIST (an sdist to test instead of building one).
set -euo pipefail

. "$(dirname "$0")/checks.sh"
PY=${SDIST_PYTHON:-$DEFAULT_PY}
WORK=$(mktemp -d /tmp/pymemcg-sdist-offline.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -n "${SDIST:-}" ]; then
    cp "$SDIST" "$WORK/"
else
    echo "== make sdist"
    start=$(date +%s)
    make -s -C "$CHECKOUT" sdist DIST="$WORK" >"$WORK/sdist.log" 2>&1 || {
        cat "$WORK/sdist.log" >&2; fail "make sdist"; exit 1; }
    echo "make sdist: $(( $(date +%s) - start )) s"
fi
SDIST=$(ls "$WORK"/pymemcg-*.tar.gz)
echo "sdist: $(basename "$SDIST"), $(( $(stat -c %s "$SDIST") / 1024 )) KiB"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' >"$WORK/sdist.txt"
missing=
for f in PKG-INFO setup.py csrc/build_ffi.py csrc/build_config.py csrc/record_header.py \
         bpf_src/memcg_record.h csrc/pmc_shim.c csrc/extension.map \
         vendor/bpf/x86/memcg_iter.bpf.o vendor/bpf/x86/memcg_iter.skel.h \
         vendor/bpf/x86/memcg_fetch.skel.h vendor/bpf/x86/memcg_tables.skel.h \
         vendor/bpf/arm64/memcg_iter.bpf.o \
         vendor/bpf/arm64/memcg_iter.skel.h vendor/bpf/arm64/memcg_fetch.skel.h \
         vendor/bpf/arm64/memcg_tables.skel.h \
         vendor/libbpf/src/libbpf.c vendor/libbpf/include/uapi/linux/bpf.h \
         vendor/libbpf/headers/bpf/libbpf.h vendor/libbpf/LICENSE; do
    grep -qx "$f" "$WORK/sdist.txt" || missing="$missing $f"
done
if [ -z "$missing" ]; then ok "the sdist carries prebuilt BPF objects, skeletons and libbpf's source"
else fail "the sdist lacks:$missing"; fi
# install_in LEVEL LOG: a fresh venv, given the build requirements
# (setuptools, cffi) while online, then pip install of the sdist into it with
# no network and the tools of LEVEL unusable
install_in() {
    local level=$1 log=$2 venv="$WORK/venv-$1"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "setuptools>=77" "cffi>=1.15" >"$log" 2>&1 || return 1
    unshare --net --mount --propagation private /bin/sh "$CHECKOUT/tests/isolate.sh" "$level" \
        env -i HOME="$WORK" PATH="$venv/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        CLANG=/bin/false BPFTOOL=/bin/false PIP_NO_CACHE_DIR=1 \
        /bin/sh -c '
            set -e
            if python -c "import socket; socket.create_connection((\"192.0.2.1\", 80), timeout=2)" \
                    2>/dev/null; then echo "the network is reachable" >&2; exit 1; fi
            for tool in clang clang-19 bpftool make; do
                if "$tool" --version >/dev/null 2>&1; then echo "$tool runs" >&2; exit 1; fi
            done
            cd "$1" && pip install -v --no-index --no-build-isolation --disable-pip-version-check "$2"
        ' sh "$WORK" "$SDIST" >>"$log" 2>&1
}

echo "== offline install, clang/bpftool/make unusable, gcc and headers present"
start=$(date +%s)
if install_in no-bpf-tools "$WORK/install-bpf.log"; then
    ok "pip install of the sdist offline ($(( $(date +%s) - start )) s)"
else
    tail -40 "$WORK/install-bpf.log" >&2; fail "pip install of the sdist offline"
fi
if grep -q "WITHOUT the BPF backend" "$WORK/install-bpf.log"; then
    fail "the install with a compiler fell back to text"; grep -A3 "WITHOUT" "$WORK/install-bpf.log" >&2
fi
(cd "$WORK" && PYMEMCG_REQUIRE_BPF=1 "$WORK/venv-no-bpf-tools/bin/python" -c '
import os, pymemcg
from pymemcg.cgroupfs import own_memory_cgroup
assert "/venv-no-bpf-tools/" in pymemcg.__file__, pymemcg.__file__
with pymemcg.Reader(stats=["anon", "file", "pgfault"], backend="bpf") as r:
    rec = r.read(own_memory_cgroup())
    assert r.backend == "bpf" and rec["pgfault"] > 0, rec
    print("Reader.read through BPF:", rec.path, rec.as_dict())
') && ok "Reader.read through BPF from the sdist's install" || fail "Reader.read through BPF"
if (cd "$WORK" && "$WORK/venv-no-bpf-tools/bin/pymemcg" verify >"$WORK/verify.txt" 2>&1); then
    ok "pymemcg verify: every stat BPF serves matches the kernel's files"
    tail -3 "$WORK/verify.txt"
else
    fail "pymemcg verify"; tail -30 "$WORK/verify.txt" >&2
fi

echo "== offline install with no C compiler"
if install_in no-compiler "$WORK/install-text.log"; then ok "pip install without a compiler succeeds"
else tail -40 "$WORK/install-text.log" >&2; fail "pip install without a compiler"; fi
if grep -q "installing WITHOUT the BPF backend: the C extension failed to compile" \
        "$WORK/install-text.log"; then
    ok "the build says it installs the text backend alone"
else
    fail "no build-time notice of the text-only install"; tail -20 "$WORK/install-text.log" >&2
fi
(cd "$WORK" && env -u PYMEMCG_REQUIRE_BPF "$WORK/venv-no-compiler/bin/python" -c '
import warnings, pymemcg
from pymemcg.cgroupfs import own_memory_cgroup
from pymemcg.errors import ExtensionMissing
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with pymemcg.Reader(stats=["anon", "pgfault"], backend="auto") as r:
        assert r.backend == "text", r.backend
        rec = r.read(own_memory_cgroup())
        assert rec["pgfault"] > 0, rec
text = " ".join(str(w.message) for w in caught)
assert "no compiled part" in text and "failed to compile" in text and "libelf" in text, text
print("auto warns:", text[:160], "...")
try:
    pymemcg.Reader(stats=["anon"], backend="bpf")
except ExtensionMissing as e:
    assert isinstance(e, pymemcg.Error) and "C compiler" in str(e), e
    print("bpf raises:", type(e).__name__)
else:
    raise SystemExit("backend=bpf did not raise")
') && ok "text-only install: auto warns with the reason, bpf raises ExtensionMissing" \
  || fail "text-only install behaviour"

echo "sdist offline: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
