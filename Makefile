# pymemcg: BPF object, skeleton, Python extension, tests, benchmarks.
#
#   make            build the BPF object and its skeleton into build/
#   make develop    editable install into .venv (builds everything)
#   make test       the test suite (root, real kernel, real cgroups)
#   make snapshot   a snapshot of this host's memory cgroups through BPF
#   make bench      the benchmark against memory.stat (writes docs/bench.md)
#   make deps       Debian packages needed to build (apt-get)

OUTPUT     ?= build
CLANG      ?= $(shell command -v clang-19 || command -v clang)
BPFTOOL    ?= $(shell command -v bpftool || ls /usr/sbin/bpftool 2>/dev/null)
PYTHON     ?= python3
VENV       ?= .venv
VPY        := $(VENV)/bin/python
ARCH       := $(shell uname -m | sed 's/x86_64/x86/; s/aarch64/arm64/')
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror -Wno-unused-function

APT_PACKAGES := clang-19 llvm-19 bpftool libelf-dev zlib1g-dev pkg-config make gcc curl \
                ca-certificates python3-venv python3-dev

# Debian's libbpf.a is not position independent, so it cannot go into a Python
# extension: build the same release (bookworm's 1.1.2, no Debian patches) from
# its source tarball with -fPIC. LIBBPF_TARBALL may point at a local copy.
LIBBPF_VERSION := 1.1.2
LIBBPF_SHA256  := b50ab60637fb713db78aa98e6ca911ddf13c0799d498a1f6ec03ebffc7dca588
LIBBPF_URL     := http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf_$(LIBBPF_VERSION).orig.tar.gz
LIBBPF_TARBALL ?= $(OUTPUT)/libbpf_$(LIBBPF_VERSION).orig.tar.gz
LIBBPF_SRC     := $(OUTPUT)/libbpf-$(LIBBPF_VERSION)/src
LIBBPF_A       := $(OUTPUT)/libbpf/libbpf.a
LIBBPF_INC     := $(OUTPUT)/libbpf/include

BPF_SRCS := $(wildcard bpf_src/*.bpf.c)
BPF_OBJS := $(patsubst bpf_src/%.bpf.c,$(OUTPUT)/%.bpf.o,$(BPF_SRCS))
SKELS    := $(patsubst bpf_src/%.bpf.c,$(OUTPUT)/%.skel.h,$(BPF_SRCS))

.SECONDARY:
.PHONY: all bpf deps develop test snapshot bench clean

all: bpf
bpf: $(LIBBPF_A) $(SKELS)

$(OUTPUT):
	mkdir -p $@

$(LIBBPF_TARBALL): | $(OUTPUT)
	curl -fsSL -o $@.tmp $(LIBBPF_URL)
	echo "$(LIBBPF_SHA256)  $@.tmp" | sha256sum -c --quiet
	mv $@.tmp $@

$(LIBBPF_A): $(LIBBPF_TARBALL)
	echo "$(LIBBPF_SHA256)  $<" | sha256sum -c --quiet
	rm -rf $(OUTPUT)/libbpf-$(LIBBPF_VERSION) && tar -xzf $< -C $(OUTPUT)
	$(MAKE) -C $(LIBBPF_SRC) BUILD_STATIC_ONLY=1 EXTRA_CFLAGS=-fPIC \
		OBJDIR=$(abspath $(OUTPUT)/libbpf-obj) DESTDIR=$(abspath $(OUTPUT)/libbpf) \
		INCLUDEDIR=/include LIBDIR= UAPIDIR= install >/dev/null

$(OUTPUT)/%.bpf.o: bpf_src/%.bpf.c bpf_src/memcg_record.h bpf_src/vmlinux_min.h $(LIBBPF_A) | $(OUTPUT)
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
	$(VPY) -m pytest -q tests

snapshot: develop
	$(VPY) -m pymemcg snapshot

bench: develop
	mkdir -p docs
	$(VPY) -m pymemcg.bench --out docs/bench.md

clean:
	rm -rf $(OUTPUT) $(VENV) *.egg-info pymemcg/_pymemcg*.so
