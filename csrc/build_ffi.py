"""cffi build module (API mode) for pymemcg._pymemcg: what the extension
declares, and its sources.

The cdef has two parts: the record format, made at build time from
bpf_src/memcg_record.h (csrc/record_header.py), and the shim's functions,
which mirror csrc/pmc_shim.h. In API mode the compiler checks both against
the headers. Where the inputs are (skeletons, libbpf, static libraries,
sanitizers) is csrc/build_config.py's business.
"""

import os
import sys

from cffi import FFI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_config  # noqa: E402
import record_header  # noqa: E402

SHIM_CDEF = """
struct pmc_config {
    unsigned int nr_stats;
    struct pmc_stat_spec specs[128];
    int local_stats;
    int kfuncs;
    int flush;
    unsigned long long page_size;
    unsigned int overflow_capacity;
    unsigned int programs;
    unsigned char selection_tree[32];
    unsigned char selection_path[32];
    unsigned long long psi_system;
};

struct pmc_prog;
struct pmc_btf;
enum pmc_iter_programs {
    PMC_PROGRAMS_TREE = 1,
    PMC_PROGRAMS_PATH = 2,
};

int pmc_prog_load(const struct pmc_config *cfg, struct pmc_prog **out,
                  char *log, size_t log_size);
void pmc_prog_destroy(struct pmc_prog *prog);
unsigned int pmc_prog_record_size(const struct pmc_prog *prog);
unsigned int pmc_prog_seq_budget(const struct pmc_prog *prog);
unsigned int pmc_prog_overflow_capacity(const struct pmc_prog *prog);
int pmc_prog_attach(struct pmc_prog *prog, int cgroup_fd, int order);
int pmc_prog_serves(const struct pmc_prog *prog, int order);
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
struct pmc_gone;
int pmc_fetch_load(const struct pmc_config *cfg, unsigned int nr_slots,
                   struct pmc_fetch **out, char *log, size_t log_size);
int pmc_fetch_load_many(struct pmc_fetch *fetch, char *log, size_t log_size);
int pmc_fetch_has_many(const struct pmc_fetch *fetch);
void pmc_fetch_destroy(struct pmc_fetch *fetch);
const void *pmc_fetch_record(const struct pmc_fetch *fetch);
int pmc_fetch_stash(struct pmc_fetch *fetch, int cgroup_fd, unsigned long long *cgroup_id);
int pmc_fetch_clear(struct pmc_fetch *fetch, unsigned long long cgroup_id);
int pmc_fetch_run(struct pmc_fetch *fetch, unsigned long long cgroup_id);
unsigned long long pmc_fetch_renames(const struct pmc_fetch *fetch);
struct pmc_fetch_route {
    unsigned long long cgroup_id;
    unsigned long long path_hash;
    unsigned long long renames;
    struct pmc_fetch *fetch;
    unsigned long long used;
};
int pmc_fetch_read(struct pmc_fetch_route *route);
void pmc_fetch_watch(struct pmc_fetch *fetch, const struct pmc_gone *gone);
int pmc_fetch_run_many(struct pmc_fetch *fetch, const void *wants, unsigned int n,
                       unsigned int flags);
const void *pmc_fetch_batch(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_capacity(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_stride(const struct pmc_fetch *fetch);
int pmc_fetch_batch_copy(const struct pmc_fetch *fetch, void *dst, unsigned int n,
                         unsigned int size);

int pmc_gone_load(struct pmc_gone **out, char *log, size_t log_size);
void pmc_gone_destroy(struct pmc_gone *gone);
const void *pmc_gone_ring(const struct pmc_gone *gone);
unsigned long long *pmc_gone_seen(struct pmc_gone *gone);

int pmc_read_kernel_tables(unsigned int state_n, unsigned int events_n,
                           unsigned int *state_out, unsigned int *events_out,
                           unsigned int *got_state, unsigned int *got_events,
                           unsigned long long *psi_system);

int pmc_btf_open(const char *path, struct pmc_btf **out);
void pmc_btf_close(struct pmc_btf *btf);
int pmc_btf_enum(struct pmc_btf *btf, const char *enum_name, char *out, size_t out_size);
long pmc_btf_member_size(struct pmc_btf *btf, const char *struct_name, const char *member);
int pmc_btf_has_func(struct pmc_btf *btf, const char *name);
"""

# csrc/pmc_oom.h and bpf_src/memcg_oom.h (the event, checked by the compiler)
OOM_CDEF = """
struct pmc_oom_event {
    unsigned long long seq;
    unsigned long long boot_ns;
    unsigned long long victim_cgroup_id;
    unsigned long long oom_cgroup_id;
    unsigned long long total_vm_kb;
    unsigned long long anon_rss_kb;
    unsigned long long file_rss_kb;
    unsigned long long shmem_rss_kb;
    unsigned long long pgtables_kb;
    unsigned long long oom_usage_kb;
    unsigned long long oom_limit_kb;
    unsigned long long oom_failcnt;
    unsigned long long totalpages;
    unsigned int pid;
    unsigned int tgid;
    unsigned int uid;
    unsigned int flags;
    unsigned int constraint;
    unsigned int oom_score_adj;
    unsigned int victim_level;
    unsigned int oom_level;
    unsigned int victim_names_len;
    unsigned int oom_names_len;
    unsigned int format;
    unsigned int pad;
    unsigned long long comm[2];
};
#define PMC_OOM_FORMAT_VERSION 1
#define PMC_OOM_RING_BYTES ...
#define PMC_OOM_RING_BYTES_MAX ...
#define PMC_OOM_VICTIM_PATH ...
#define PMC_OOM_OOM_PATH ...
#define PMC_OOM_MEMCG ...
#define PMC_OOM_HAS_MM ...
#define PMC_OOM_RSS_EXACT ...
#define PMC_OOM_OOM_COUNTER ...
#define PMC_OOM_OOM_KNOWN ...
struct pmc_oom;
enum pmc_oom_method {
    PMC_OOM_KPROBES = 1,
    PMC_OOM_TRACEPOINT = 2,
};
int pmc_oom_method(const struct pmc_oom *oom);
int pmc_oom_load(unsigned long long page_size, unsigned long long ring_bytes,
                 struct pmc_oom **out, char *log, size_t log_size);
void pmc_oom_destroy(struct pmc_oom *oom);
int pmc_oom_fd(const struct pmc_oom *oom);
int pmc_oom_consume(struct pmc_oom *oom);
const void *pmc_oom_buffer(const struct pmc_oom *oom, size_t *len);
void pmc_oom_clear(struct pmc_oom *oom);
unsigned long long pmc_oom_seen(const struct pmc_oom *oom);
unsigned long long pmc_oom_lost(const struct pmc_oom *oom);
"""

ffibuilder = FFI()
ffibuilder.cdef(record_header.cdef(record_header.read_header()) + SHIM_CDEF + OOM_CDEF)
ffibuilder.set_source(
    "pymemcg._pymemcg",
    '#include "pmc_shim.h"\n',
    extra_compile_args=["-O2", "-Wall"],
    extra_link_args=[f"-Wl,--version-script={os.path.join(build_config.HERE, 'extension.map')}"]
    + build_config.wrap_link_args(),
    **build_config.extension_inputs(),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=build_config.sanitize_dir() or ".", verbose=True)
