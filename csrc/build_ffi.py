"""cffi build module (API mode) for pymemcg._pymemcg.

The cdef below mirrors csrc/pmc_shim.h and the record format of
bpf_src/memcg_record.h; keep them together (the compiler checks them). libbpf is linked
statically, and the BPF objects go in through their skeletons. Where the
inputs are depends on what is being built (see setup.py):

- "checkout": `make bpf` writes the skeletons and libbpf.a into build/; the
  host's libelf and zlib are linked dynamically;
- "cross" (make wheels): PYMEMCG_BUILD_DIR is one architecture's build tree
  (build/cross/<arch>: skeletons, libbpf.a) and PYMEMCG_STATIC_DEPS holds
  libelf.a and libz.a, linked in with their symbols hidden;
- "sdist": vendor/ holds the skeletons of each architecture and libbpf's
  source, compiled here with the extension;
- "sanitize" (make test-sanitize): PYMEMCG_SANITIZE names a directory with
  a libbpf.a built with the sanitizers (its libbpf/); the checkout's
  skeletons go in, and running this file writes the extension into that
  directory (CFLAGS and LDFLAGS carry the sanitizer flags), leaving the
  checkout's own build alone.
"""

import os
import platform
from cffi import FFI

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


def cannot_build_reason():
    """Why the extension cannot be built here at all, or None."""
    if build_mode() != "sdist":
        return None
    bpf = sdist_bpf_dir()
    if bpf is None or not os.path.isdir(bpf):
        return (f"this sdist has no prebuilt BPF object for {platform.machine()} "
                f"(it has {sorted(os.listdir(os.path.join(VENDOR, 'bpf')))})")
    return None


CDEF = """
/* bpf_src/memcg_record.h: the values come from the header when the
 * extension is compiled (API mode), and the compiler checks these field
 * lists against it; pymemcg/wire.py builds the record format from them. */
#define PMC_FORMAT_VERSION ...
#define PMC_MAX_STATS ...
#define PMC_SEQ_BUF_SIZE ...
#define PMC_TRAILER_MAGIC ...
#define PMC_SELECTION_WORDS ...
#define PMC_REC_NO_MEMCG ...
#define PMC_REC_NO_VMSTATS ...
#define PMC_REC_GONE ...
#define PMC_SPEC_SIGNED ...
#define PMC_SPEC_MEMCG_ITEM ...
#define PMC_FNV_OFFSET ...
#define PMC_FNV_PRIME ...
#define PMC_NAME_MAX ...
#define PMC_PATH_MAX_DEPTH ...
#define PMC_FETCH_BATCH_MAX ...

enum pmc_stat_kind { PMC_KIND_NONE, PMC_KIND_STATE, PMC_KIND_EVENT, PMC_KIND_MEMEVENT,
                     PMC_KIND_COUNTER, ... };
enum pmc_counter { PMC_CTR_MEMORY_USAGE, PMC_CTR_MEMORY_PEAK, PMC_CTR_MEMORY_MAX,
                   PMC_CTR_MEMORY_FAILCNT, PMC_CTR_SWAP_USAGE, PMC_CTR_SWAP_PEAK,
                   PMC_CTR_SWAP_MAX, PMC_CTR_SWAP_FAILCNT, ... };
enum pmc_kfuncs { PMC_KFUNCS_NONE, PMC_KFUNCS_MEMCG, PMC_KFUNCS_RFC, ... };

struct pmc_record {
    unsigned long long cgroup_id;
    unsigned long long parent_id;
    unsigned long long name_hash;
    unsigned int level;
    unsigned int flags;
    unsigned long long valid[2];
};

struct pmc_trailer {
    unsigned long long selection[4];
    unsigned long long magic;
    unsigned long long session_id;
    unsigned long long visited;
};

struct pmc_fetch_want {
    unsigned int slot;
    unsigned int pad;
    unsigned long long cgroup_id;
    unsigned long long path_hash;
};

struct pmc_stat_spec {
    unsigned int kind;
    unsigned int slot;
    unsigned int item;
    unsigned int flags;
    unsigned long long scale;
};

struct pmc_config {
    unsigned int nr_stats;
    struct pmc_stat_spec specs[128];
    int local_stats;
    int kfuncs;
    int flush;
    unsigned long long page_size;
    unsigned int overflow_capacity;
    unsigned char selection_tree[32];
    unsigned char selection_path[32];
};

struct pmc_prog;
struct pmc_btf;

int pmc_prog_load(const struct pmc_config *cfg, struct pmc_prog **out,
                  char *log, size_t log_size);
void pmc_prog_destroy(struct pmc_prog *prog);
unsigned int pmc_prog_record_size(const struct pmc_prog *prog);
unsigned int pmc_prog_seq_budget(const struct pmc_prog *prog);
unsigned int pmc_prog_overflow_capacity(const struct pmc_prog *prog);
int pmc_prog_attach(struct pmc_prog *prog, int cgroup_fd, int order);
int pmc_link_pin(int link_fd, const char *path);

enum pmc_pin_object {
    PMC_PIN_NOT_BPF = 0,
    PMC_PIN_LINK = 1,
    PMC_PIN_PROG = 2,
    PMC_PIN_MAP = 3,
    PMC_PIN_OTHER = 4,
};
struct pmc_pin_ident {
    unsigned int on_bpffs;
    unsigned int object;
    unsigned int link_type;
    unsigned int prog_type;
    unsigned int order;
    unsigned long long cgroup_id;
    char target[32];
    char prog_name[16];
};
int pmc_pin_identify(int dir_fd, const char *name, struct pmc_pin_ident *out);
const void *pmc_object_bytes(size_t *size);
ssize_t pmc_read_session(int link_fd, void *buf, size_t buf_size);
int pmc_copy_overflow(struct pmc_prog *prog, unsigned long long session_id,
                      void *dst, unsigned long long n);

struct pmc_fetch;
int pmc_fetch_load(const struct pmc_config *cfg, unsigned int nr_slots,
                   struct pmc_fetch **out, char *log, size_t log_size);
void pmc_fetch_destroy(struct pmc_fetch *fetch);
const void *pmc_fetch_record(const struct pmc_fetch *fetch);
int pmc_fetch_stash(struct pmc_fetch *fetch, int cgroup_fd, unsigned int slot,
                    unsigned long long *cgroup_id);
int pmc_fetch_clear(struct pmc_fetch *fetch, unsigned int slot);
int pmc_fetch_run(struct pmc_fetch *fetch, unsigned int slot);
int pmc_fetch_run_many(struct pmc_fetch *fetch, const void *wants, unsigned int n);
const void *pmc_fetch_batch(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_capacity(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_stride(const struct pmc_fetch *fetch);

int pmc_read_kernel_tables(int cgroup_fd, unsigned int state_n, unsigned int events_n,
                           unsigned int *state_out, unsigned int *events_out,
                           unsigned int *got_state, unsigned int *got_events);

int pmc_btf_open(const char *path, struct pmc_btf **out);
void pmc_btf_close(struct pmc_btf *btf);
int pmc_btf_enum(struct pmc_btf *btf, const char *enum_name, char *out, size_t out_size);
long pmc_btf_member_size(struct pmc_btf *btf, const char *struct_name, const char *member);
int pmc_btf_has_func(struct pmc_btf *btf, const char *name);
"""


def _extension_inputs() -> dict:
    """set_source's keyword arguments for this build mode."""
    common_include = [HERE, os.path.join(ROOT, "bpf_src")]
    if build_mode() == "sdist":
        libbpf = os.path.join(VENDOR, "libbpf")
        src = os.path.join(libbpf, "src")
        bpf = sdist_bpf_dir() or os.path.join(VENDOR, "bpf", "none")
        # libbpf's own build flags (its src/Makefile): its bundled uapi and
        # compat headers come after the shim's, which see the installed layout
        return dict(
            sources=[os.path.relpath(os.path.join(HERE, "pmc_shim.c"), ROOT)]
            + sorted(os.path.relpath(os.path.join(src, f), ROOT)
                     for f in os.listdir(src) if f.endswith(".c")),
            include_dirs=common_include + [bpf, os.path.join(libbpf, "headers"), src,
                                           os.path.join(libbpf, "include"),
                                           os.path.join(libbpf, "include", "uapi")],
            define_macros=[("_LARGEFILE64_SOURCE", None), ("_FILE_OFFSET_BITS", "64")],
            libraries=["elf", "z"],
        )
    build = build_dir()
    shim = os.path.join(HERE, "pmc_shim.c")
    # `make bpf` built libbpf.a before the extension is compiled (and
    # `make test-sanitize` its sanitized twin)
    libbpf = os.path.join(sanitize_dir() or build, "libbpf")
    inputs = dict(
        # relative for setuptools; absolute where cffi compiles in another directory
        sources=[shim if sanitize_dir() else os.path.relpath(shim, ROOT)],
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


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pymemcg._pymemcg",
    '#include "pmc_shim.h"\n',
    extra_compile_args=["-O2", "-Wall"],
    extra_link_args=[f"-Wl,--version-script={os.path.join(HERE, 'extension.map')}"],
    **_extension_inputs(),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=sanitize_dir() or ".", verbose=True)
