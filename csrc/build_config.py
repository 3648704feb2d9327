"""How the extension pymemcg._pymemcg is built here: the build mode, and
where its inputs are for it (csrc/build_ffi.py says what the extension
declares; setup.py and the Makefile run it). The modes:

- "checkout": `make bpf` writes the skeletons and libbpf.a into build/; the
  host's libelf and zlib are linked dynamically;
- "cross" (make wheels): PYMEMCG_BUILD_DIR is one architecture's build tree
  (build/cross/<arch>: skeletons, libbpf.a) and PYMEMCG_STATIC_DEPS holds
  libelf.a and libz.a, linked in with their symbols hidden;
- "sdist": vendor/ holds the skeletons of each architecture and libbpf's
  source, compiled here with the extension;
- "sanitize" (make test-sanitize): PYMEMCG_SANITIZE names a directory with
  a libbpf.a built with the sanitizers (its libbpf/); the checkout's
  skeletons go in, and running csrc/build_ffi.py writes the extension into that
  directory (CFLAGS and LDFLAGS carry the sanitizer flags), leaving the
  checkout's own build alone.
"""

import os
import platform

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENDOR = os.path.join(ROOT, "vendor")
# the skeletons' directory name per machine (their -D__TARGET_ARCH_*)
BPF_ARCH = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm64", "arm64": "arm64"}


def sanitize_dir():
    """The sanitizer build's directory (PYMEMCG_SANITIZE), or None."""
    return os.environ.get("PYMEMCG_SANITIZE") or None


def build_mode() -> str:
    """"sanitize", "cross", "sdist" or "checkout" (see the module docstring)."""
    if sanitize_dir():
        return "sanitize"
    if os.environ.get("PYMEMCG_BUILD_DIR"):
        return "cross"
    if os.path.exists(os.path.join(ROOT, "PKG-INFO")):
        return "sdist"
    return "checkout"


def build_dir() -> str:
    """The tree make filled: build/, or one architecture's under build/cross."""
    return os.environ.get("PYMEMCG_BUILD_DIR") or os.path.join(ROOT, "build")


def setuptools_build_base() -> str:
    """Where setuptools keeps its objects (per architecture when crossing)."""
    return os.path.join(build_dir(), "setuptools") if build_mode() != "sdist" else "build"


def sdist_bpf_dir():
    """This machine's prebuilt skeletons in an sdist, or None."""
    arch = BPF_ARCH.get(platform.machine())
    return os.path.join(VENDOR, "bpf", arch) if arch else None


#: libbpf functions whose calls the shim takes over (link with --wrap: see
#: "parsed once per process" in pmc_shim.c); the Makefile's memcg_bench rule
#: passes the same (SHIM_LDFLAGS)
WRAPPED_LIBBPF = ("btf__load_vmlinux_btf", "btf__free", "btf__find_by_name_kind")


#: the extension's own C sources: the shim, and the module that makes a
#: single read's Record in C (pymemcg._records, in the same shared object)
EXTENSION_SOURCES = ("pmc_shim.c", "pmc_records.c")


def wrap_link_args() -> list:
    """The linker flags that route WRAPPED_LIBBPF through the shim."""
    return [f"-Wl,--wrap={name}" for name in WRAPPED_LIBBPF]


def cannot_build_reason():
    """Why the extension cannot be built here at all, or None."""
    if build_mode() != "sdist":
        return None
    bpf = sdist_bpf_dir()
    if bpf is None or not os.path.isdir(bpf):
        return (f"this sdist has no prebuilt BPF object for {platform.machine()} "
                f"(it has {sorted(os.listdir(os.path.join(VENDOR, 'bpf')))})")
    return None


def extension_inputs() -> dict:
    """set_source's keyword arguments for this build mode."""
    common_include = [HERE, os.path.join(ROOT, "bpf_src")]
    if build_mode() == "sdist":
        libbpf = os.path.join(VENDOR, "libbpf")
        src = os.path.join(libbpf, "src")
        bpf = sdist_bpf_dir() or os.path.join(VENDOR, "bpf", "none")
        # libbpf's own build flags (its src/Makefile): its bundled uapi and
        # compat headers come after the shim's, which see the installed layout
        return dict(
            sources=[os.path.relpath(os.path.join(HERE, f), ROOT) for f in EXTENSION_SOURCES]
            + sorted(os.path.relpath(os.path.join(src, f), ROOT)
                     for f in os.listdir(src) if f.endswith(".c")),
            include_dirs=common_include + [bpf, os.path.join(libbpf, "headers"), src,
                                           os.path.join(libbpf, "include"),
                                           os.path.join(libbpf, "include", "uapi")],
            define_macros=[("_LARGEFILE64_SOURCE", None), ("_FILE_OFFSET_BITS", "64")],
            libraries=["elf", "z"],
        )
    build = build_dir()
    ours = [os.path.join(HERE, f) for f in EXTENSION_SOURCES]
    # `make bpf` built libbpf.a before the extension is compiled (and
    # `make test-sanitize` its sanitized twin)
    libbpf = os.path.join(sanitize_dir() or build, "libbpf")
    inputs = dict(
        # relative for setuptools; absolute where cffi compiles in another directory
        sources=[f if sanitize_dir() else os.path.relpath(f, ROOT) for f in ours],
        include_dirs=common_include + [build, os.path.join(libbpf, "include")],
        extra_objects=[os.path.join(libbpf, "libbpf.a")],
        libraries=["elf", "z"],
    )
    static = os.environ.get("PYMEMCG_STATIC_DEPS")
    if static:
        inputs["include_dirs"].append(os.path.join(static, "include"))
        inputs["extra_objects"] += [os.path.join(static, "lib", "libelf.a"),
                                    os.path.join(static, "lib", "libz.a")]
        inputs["libraries"] = []
    return inputs
