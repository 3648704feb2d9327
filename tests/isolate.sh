#!/bin/sh
# isolate.sh LEVEL COMMAND...: runs COMMAND with build tools made unusable,
# for the packaging tests. Run it in a private mount namespace
# (unshare --mount --propagation private): files are hidden by bind-mounting
# /dev/null over them (running one fails with "Permission denied") and
# directories by an empty tmpfs, which the namespace's end undoes.
#
# LEVEL is one of
#   no-bpf-tools  clang, llc, llvm-*, bpftool and make hidden: a host with a
#                 C compiler and headers only
#   no-compiler   also every C compiler (gcc, cc, c89/c99, the cross ones)
#   bare          also /usr/include, kernel headers, libbpf and the host's
#                 libelf: a production host that installs a wheel
set -eu
level=$1; shift
case "$level" in no-bpf-tools | no-compiler | bare) ;; *) echo "isolate.sh: bad level $level" >&2; exit 2 ;; esac

hide_dir() { if [ -d "$1" ]; then mount -t tmpfs -o size=1m tmpfs "$1"; fi; }
hide_file() { if [ -e "$1" ] && [ ! -d "$1" ]; then mount --bind /dev/null "$1"; fi; }

for f in /usr/bin/clang* /usr/bin/llc* /usr/bin/llvm-* /usr/sbin/bpftool /usr/bin/bpftool \
         /usr/bin/make /usr/bin/gmake /usr/lib/llvm-*/bin/*; do
    hide_file "$f"
done
if [ "$level" != no-bpf-tools ]; then
    for f in /usr/bin/gcc* /usr/bin/cc /usr/bin/c89* /usr/bin/c99* /usr/bin/*-linux-gnu-gcc* \
             /usr/bin/tcc /usr/bin/cpp* /usr/lib/gcc/*/*/cc1 /usr/local/bin/gcc* /usr/local/bin/cc; do
        hide_file "$f"
    done
fi
if [ "$level" = bare ]; then
    hide_dir /usr/include
    hide_dir /usr/src
    for d in /usr/lib/llvm-*; do hide_dir "$d"; done
    for d in /lib/modules/*/build /lib/modules/*/source; do
        if [ -e "$d" ]; then hide_dir "$(readlink -f "$d")"; fi
    done
    for f in /usr/lib/*-linux-gnu/libbpf.so* /usr/lib/*-linux-gnu/libbpf.a \
             /usr/lib/*-linux-gnu/libelf.so* /usr/lib/*-linux-gnu/libelf-*.so; do
        hide_file "$f"
    done
fi
exec "$@"
