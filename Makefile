# pymemcg: BPF object, skeleton, Python extension, tests, benchmarks.
#
#   make            build the BPF object and its skeleton into build/
#   make develop    editable install into .venv (builds everything)
#   make test       the test suite (root, real kernel, real cgroups)
#   make test-sanitize  the tests that drive the C shim, on a build of it (and
#                   libbpf) with AddressSanitizer and UndefinedBehaviorSanitizer
#   make snapshot   a snapshot of this host's memory cgroups through BPF
#   make bench      the benchmark against memory.stat (writes docs/bench.md)
#   make deps       Debian packages needed to build (apt-get)
#   make wheels     manylinux_2_28 wheels for x86_64 and aarch64 in dist/
#   make sdist      the sdist, which installs offline with a C compiler alone

OUTPUT     ?= build
CLANG      ?= $(shell command -v clang-19 || command -v clang)
BPFTOOL    ?= $(shell command -v bpftool || ls /usr/sbin/bpftool 2>/dev/null)
PYTHON     ?= python3
VENV       ?= .venv
VPY        := $(VENV)/bin/python
ARCH       := $(shell uname -m | sed 's/x86_64/x86/; s/aarch64/arm64/')
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror -Wno-unused-function

# for the tests only: a real Prometheus server scraping `pymemcg export`, openssl
# for a throwaway TLS certificate, systemd-analyze for the unit, strace for the
# system calls it must allow (setpriv, for its capabilities, is in util-linux);
# podman and runc to run the container image with the DaemonSet's settings,
# mmdebstrap for the Debian roots of that image and of the systemd boot test,
# systemd-container (systemd-nspawn) to boot the unit under systemd as PID 1
TEST_APT_PACKAGES := prometheus openssl systemd strace podman runc mmdebstrap systemd-container
APT_PACKAGES := clang-19 llvm-19 bpftool libelf-dev zlib1g-dev pkg-config make gcc \
                ca-certificates python3-venv python3-dev tmux qemu-user-static \
                $(TEST_APT_PACKAGES)

# Debian's libbpf.a is not position independent, so it cannot go into a Python
# extension: build the same release (bookworm's 1.1.2, no Debian patches) from
# its Debian source package, fetched by apt through the mirror this host's apt
# configuration names (tools/apt-private: a private apt state under build/,
# Release signatures checked) and checked by sha256. LIBBPF_TARBALL may point
# at a local copy.
LIBBPF_VERSION := 1.1.2
LIBBPF_DEBIAN  := $(LIBBPF_VERSION)-0+deb12u1
LIBBPF_SHA256  := b50ab60637fb713db78aa98e6ca911ddf13c0799d498a1f6ec03ebffc7dca588
LIBBPF_TARBALL ?= $(OUTPUT)/libbpf_$(LIBBPF_VERSION).orig.tar.gz
LIBBPF_SRC     := $(OUTPUT)/libbpf-$(LIBBPF_VERSION)/src
LIBBPF_A       := $(OUTPUT)/libbpf/libbpf.a
LIBBPF_INC     := $(OUTPUT)/libbpf/include
# a cross build's own libelf and zlib headers, and its flags for libbpf's
# make (packaging/wheels.mk)
LIBBPF_CFLAGS    ?=
LIBBPF_MAKEFLAGS ?=

BPF_SRCS := $(wildcard bpf_src/*.bpf.c)
BPF_OBJS := $(patsubst bpf_src/%.bpf.c,$(OUTPUT)/%.bpf.o,$(BPF_SRCS))
SKELS    := $(patsubst bpf_src/%.bpf.c,$(OUTPUT)/%.skel.h,$(BPF_SRCS))

.SECONDARY:
.PHONY: all bpf deps develop test snapshot bench clean image

all: bpf
bpf: $(LIBBPF_A) $(SKELS)

$(OUTPUT):
	mkdir -p $@

# $(call apt-source,PACKAGE=VERSION,FILE,SHA256,DEST): one file of a Debian
# source package, fetched by apt (private state under build/apt), checked by
# sha256 and moved to DEST
define apt-source
	rm -rf $(4).d && mkdir -p $(4).d
	cd $(4).d && $(CURDIR)/tools/apt-private $(abspath $(OUTPUT))/apt -- \
		source --download-only $(1) >/dev/null
	echo "$(3)  $(4).d/$(2)" | sha256sum -c --quiet
	mv $(4).d/$(2) $(4) && rm -rf $(4).d
endef

$(LIBBPF_TARBALL): | $(OUTPUT)
	$(call apt-source,libbpf=$(LIBBPF_DEBIAN),$(notdir $@),$(LIBBPF_SHA256),$@)

$(LIBBPF_A): $(LIBBPF_TARBALL) | $(OUTPUT)
	echo "$(LIBBPF_SHA256)  $<" | sha256sum -c --quiet
	rm -rf $(OUTPUT)/libbpf-$(LIBBPF_VERSION) && tar -xzf $< -C $(OUTPUT)
	$(MAKE) -C $(LIBBPF_SRC) BUILD_STATIC_ONLY=1 EXTRA_CFLAGS="-fPIC $(LIBBPF_CFLAGS)" \
		CC="$(CC)" AR="$(AR)" $(LIBBPF_MAKEFLAGS) \
		OBJDIR=$(abspath $(OUTPUT)/libbpf-obj) DESTDIR=$(abspath $(OUTPUT)/libbpf) \
		INCLUDEDIR=/include LIBDIR= UAPIDIR= install >/dev/null

$(OUTPUT)/%.bpf.o: bpf_src/%.bpf.c bpf_src/memcg_fill.bpf.h bpf_src/memcg_record.h bpf_src/memcg_oom.h bpf_src/vmlinux_min.h $(LIBBPF_A) | $(OUTPUT)
	$(CLANG) $(BPF_CFLAGS) -Ibpf_src -I$(LIBBPF_INC) -c $< -o $@

$(OUTPUT)/%.skel.h: $(OUTPUT)/%.bpf.o
	$(BPFTOOL) gen skeleton $< name $(subst -,_,$*) > $@.tmp && mv $@.tmp $@

deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

develop: bpf $(VPY)
	$(VPY) -m pip install -q -e '.[test]'

# PYMEMCG_REQUIRE_BPF=1 (set by .ci/run) makes "BPF unavailable" fail the BPF
# tests instead of skipping them
test: develop
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VPY) -m pytest -q tests

# make test-sanitize: the C shim and libbpf compiled with AddressSanitizer and
# UndefinedBehaviorSanitizer into build/sanitize (the checkout's own build is
# left alone), loaded instead of it in every Python process of the run
# (tools/sanitize/sitecustomize.py), under the tests that drive the shim:
# loads, iterator sessions, overflow copies, batched fetches, pins, errors,
# and the Records made in C (pymemcg._records).
# Any report fails the run: each process writes it to build/sanitize/reports
# and stops (a run that leaves a report fails even where the test passed).
# Leaks are not checked: CPython itself leaves memory to the exit.
SAN_DIR    := $(OUTPUT)/sanitize
SAN_CFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
SAN_TESTS  ?= tests/test_parity.py tests/test_tree.py tests/test_read_many.py tests/test_pins.py \
              tests/test_churn.py tests/test_errors.py tests/test_renames.py \
              tests/test_single_reads.py
SAN_EXT    := $(SAN_DIR)/pymemcg/_pymemcg.so
SAN_REPORTS := $(abspath $(SAN_DIR))/reports
.PHONY: test-sanitize
$(SAN_DIR)/libbpf/libbpf.a: $(LIBBPF_A)
	rm -rf $(SAN_DIR)/libbpf-obj $(SAN_DIR)/libbpf
	$(MAKE) -C $(LIBBPF_SRC) BUILD_STATIC_ONLY=1 EXTRA_CFLAGS="-fPIC $(SAN_CFLAGS)" \
		CC="$(CC)" OBJDIR=$(abspath $(SAN_DIR)/libbpf-obj) DESTDIR=$(abspath $(SAN_DIR)/libbpf) \
		INCLUDEDIR=/include LIBDIR= UAPIDIR= install >/dev/null

$(SAN_EXT): csrc/pmc_shim.c csrc/pmc_records.c csrc/pmc_shim.h csrc/build_ffi.py csrc/build_config.py \
		csrc/record_header.py csrc/extension.map \
		bpf_src/memcg_record.h $(SKELS) $(SAN_DIR)/libbpf/libbpf.a | $(VPY)
	rm -f $(SAN_DIR)/pymemcg/_pymemcg*.so
	PYMEMCG_SANITIZE=$(abspath $(SAN_DIR)) CC="$(CC)" CFLAGS="$(SAN_CFLAGS)" \
		LDFLAGS="$(SAN_CFLAGS)" $(VPY) csrc/build_ffi.py >/dev/null
	mv $(SAN_DIR)/pymemcg/_pymemcg*.so $@

SAN_ENV = LD_PRELOAD="$$($(CC) -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYMEMCG_SANITIZER_REPORTS=$(SAN_REPORTS) \
	PYTHONPATH=$(abspath tools/sanitize) PYMEMCG_SANITIZED_EXTENSION=$(abspath $(SAN_EXT)) \
	PATH="$(abspath $(VENV))/bin:$$PATH"
test-sanitize: develop $(SAN_EXT)
	rm -rf $(SAN_REPORTS) && mkdir -p $(SAN_REPORTS)
	env $(SAN_ENV) $(VPY) -c 'import sys, pymemcg._pymemcg as m; \
		sys.exit(None if m.__file__ == "$(abspath $(SAN_EXT))" else "not the sanitized build")'
	env $(SAN_ENV) $(VPY) -m pytest -q -p no:cacheprovider $(SAN_TESTS); status=$$?; \
	if [ -n "$$(ls -A $(SAN_REPORTS))" ]; then \
		cat $(SAN_REPORTS)/*; echo "test-sanitize: the sanitizers reported errors (above)"; \
		exit 1; \
	fi; exit $$status

snapshot: develop
	$(VPY) -m pymemcg snapshot

# make image: the exporter's container image (localhost/pymemcg:<version>),
# from a Debian root and this host's release wheel, with podman and no image
# registry (packaging/container/build-image; the root is cached under
# /var/cache/pymemcg-ci). Push it to a cluster's registry for the DaemonSets
# in packaging/kubernetes/ (docs/kubernetes.md).
image: $(VPY)
	$(MAKE) wheel DIST=$(OUTPUT)/image-dist
	PYTHON=$(abspath $(VPY)) packaging/container/build-image $(OUTPUT)/image-dist/pymemcg-*_$(HOST_ARCH).whl

# the full benchmark (bench/pymemcg_bench, not part of the installed package:
# it needs this checkout's C side): C and Python, one cgroup and trees of up
# to 10,000 cgroups; writes docs/bench.md, docs/bench.png (with the bench
# extra, matplotlib) and docs/profile.md. Takes a few minutes. `pymemcg
# bench` is the short one that needs only the installed package.
bench: develop bench-c
	mkdir -p docs
	$(VPY) -m pip install -q -e '.[bench]' || echo "bench: no matplotlib, no plot"
	PYTHONPATH=bench $(VPY) -m pymemcg_bench --out docs/bench.md

# the C side of the benchmark, on the project's own loader (csrc/pmc_shim.c)
.PHONY: bench-c
bench-c: $(OUTPUT)/memcg_bench
# the shim takes over these libbpf calls (csrc/build_config.py WRAPPED_LIBBPF)
SHIM_LDFLAGS := -Wl,--wrap=btf__load_vmlinux_btf -Wl,--wrap=btf__free -Wl,--wrap=btf__find_by_name_kind
$(OUTPUT)/memcg_bench: bench/memcg_bench.c csrc/pmc_shim.c csrc/pmc_shim.h bpf_src/memcg_record.h $(LIBBPF_A) $(SKELS)
	$(CC) -O2 -Wall -Werror -Icsrc -Ibpf_src -I$(OUTPUT) -I$(LIBBPF_INC) -o $@ \
		bench/memcg_bench.c csrc/pmc_shim.c $(LIBBPF_A) -lelf -lz $(SHIM_LDFLAGS)

# make wheels / make wheel: manylinux_2_28 abi3 wheels for x86_64 and aarch64
# (packaging/wheels.mk). make sdist: the source distribution, which builds
# offline with a C compiler and the libelf and zlib headers only: it carries
# the BPF objects and skeletons of both architectures and libbpf's source
# (build/sdist/vendor, added by setup.py's sdist command), so neither clang,
# bpftool nor make is needed to install it.
DIST ?= dist
include packaging/wheels.mk

SDIST_VENDOR := $(OUTPUT)/sdist/vendor
.PHONY: sdist skels
skels: $(SKELS)
sdist: bpf $(VPY)
	rm -rf $(SDIST_VENDOR) && mkdir -p $(SDIST_VENDOR)/libbpf
	for arch in x86 arm64; do \
		$(MAKE) -s skels OUTPUT=$(abspath $(OUTPUT))/sdist/bpf-$$arch ARCH=$$arch \
			LIBBPF_A=$(abspath $(LIBBPF_A)) LIBBPF_INC=$(abspath $(LIBBPF_INC)) || exit 1; \
		mkdir -p $(SDIST_VENDOR)/bpf/$$arch && \
		cp $(OUTPUT)/sdist/bpf-$$arch/*.bpf.o $(OUTPUT)/sdist/bpf-$$arch/*.skel.h \
			$(SDIST_VENDOR)/bpf/$$arch/ || exit 1; \
	done
	cp -a $(LIBBPF_SRC)/../src $(LIBBPF_SRC)/../include $(LIBBPF_SRC)/../LICENSE* \
		$(SDIST_VENDOR)/libbpf/
	rm -f $(SDIST_VENDOR)/libbpf/src/*.o $(SDIST_VENDOR)/libbpf/src/*.a
	cp -a $(LIBBPF_INC) $(SDIST_VENDOR)/libbpf/headers
	$(VPY) -m pip install -q --disable-pip-version-check build==1.6.1
	rm -f $(DIST)/pymemcg-*.tar.gz
	$(VPY) -m build -q --sdist --outdir $(DIST) . >/dev/null
	ls -l $(DIST)/pymemcg-*.tar.gz

clean:
	rm -rf $(OUTPUT) $(VENV) *.egg-info pymemcg/_pymemcg*.so

# make matrix: `pymemcg verify --format json` (every stat BPF serves against
# the kernel's own files) and the parity tests (tests/test_parity.py,
# PYMEMCG_REQUIRE_BPF=1) on the newest Debian cloud kernel of every series from
# 6.1 to 7.3 under qemu (software emulation; cgroup v2, and 6.1 on v1 too),
# each with this checkout's .venv (the host's root shared read-only over
# virtiofs), plus 6.1, 6.12 and 7.3 on aarch64 (qemu-system-aarch64, Debian's
# arm64 Python and pymemcg's aarch64 wheel in a venv: vm/userland.py), and natively on
# this host. Where a kernel lists its items in
# kallsyms, verify runs a second time with PYMEMCG_KALLSYMS=0 (built-in tables
# and enum alone) and the two slot sources must agree. Prints PASS/FAIL per
# guest and fails if any guest failed, did not boot (its console log is
# printed), or verify found a mismatch. Writes build/vm/results/*.json
# and docs/matrix.md. The kernels are pinned in
# vm/kernels.py and fetched with apt (tools/apt-private, its state in
# build/vm/apt). MATRIX_ARGS passes options to `vm/matrix.py run`; the default
# runs two guests at a time (the machines here have 2 CPUs).
# make matrix-quick: 6.1 on cgroup v1, 6.12 and 7.3 only, no native run, docs
# untouched (for development).
# make vm-deps: the Debian packages it needs besides `make deps`.
VM_APT_PACKAGES := qemu-system-x86 qemu-system-arm busybox-static e2fsprogs xz-utils zstd
.PHONY: matrix matrix-quick vm-deps
vm-deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(VM_APT_PACKAGES)

MATRIX_ARGS ?= --jobs 2
# the aarch64 guests run pymemcg's aarch64 wheel from dist/ (make wheel-aarch64)
AARCH64_WHEEL = $(wildcard dist/pymemcg-*_aarch64.whl)
matrix: develop
	$(if $(AARCH64_WHEEL),,$(MAKE) wheel-aarch64)
	$(VPY) vm/matrix.py run --python $(VPY) $(MATRIX_ARGS)

matrix-quick: develop
	$(VPY) vm/matrix.py run --python $(VPY) --guests quick --no-native $(MATRIX_ARGS)

# make soak: 10^6 single reads and 10^6 tree reads through one Reader, printing
# fds and RSS as it goes; fails if the fd set changes or RSS grows after
# warm-up. SOAK_ARGS passes options to tools/soak.py.
.PHONY: soak
soak: develop
	$(VPY) tools/soak.py $(SOAK_ARGS)
