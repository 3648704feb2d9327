/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * pmc_shim: the small C side of pymemcg. It loads the memcg_iter skeleton
 * with a selection, attaches the iterator to a cgroup, runs sessions, and
 * answers questions about the running kernel's BTF. Python (cffi, API mode)
 * calls only what is declared here; csrc/build_ffi.py mirrors it as cdef.
 *
 * Every function returns a negative errno on failure and leaves nothing
 * behind: no fds, links or maps.
 */
#ifndef PMC_SHIM_H
#define PMC_SHIM_H

#include <stddef.h>
#include <sys/types.h>
#include "memcg_record.h"

struct pmc_config {
	unsigned int nr_stats;
	struct pmc_stat_spec specs[PMC_MAX_STATS];
	int local_stats;
	int kfuncs;			/* enum pmc_kfuncs */
	int flush;			/* flush before reading (needs kfuncs) */
	unsigned long long page_size;
	unsigned int overflow_capacity;	/* records the overflow map can hold */
	/* which iterator programs pmc_prog_load loads (enum pmc_iter_programs);
	 * 0: both */
	unsigned int programs;
	/* pmc_trailer.selection of the tree and the single-cgroup program */
	unsigned char selection_tree[PMC_SELECTION_WORDS * 8];
	unsigned char selection_path[PMC_SELECTION_WORDS * 8];
	/* --- pressure (PSI) --- */
	unsigned long long psi_system;	/* pmc_selection.psi_system */
};

struct pmc_prog;

/* The iterator programs of a selection: each loaded only by a process that
 * runs it, as the verifier's time and memory are most of a load's. */
enum pmc_iter_programs {
	PMC_PROGRAMS_TREE = 1,	/* walks: records with name hashes */
	PMC_PROGRAMS_PATH = 2,	/* one cgroup: the record with its path's hash */
};

/* Load the program with this selection. On failure, log holds what libbpf
 * said (NUL-terminated; the newest text where it does not all fit), the
 * kernel's verifier log of a rejected program among it. */
int pmc_prog_load(const struct pmc_config *cfg, struct pmc_prog **out,
		  char *log, size_t log_size);
void pmc_prog_destroy(struct pmc_prog *prog);
unsigned int pmc_prog_record_size(const struct pmc_prog *prog);
unsigned int pmc_prog_seq_budget(const struct pmc_prog *prog);
unsigned int pmc_prog_overflow_capacity(const struct pmc_prog *prog);

/* A new iterator link on the cgroup behind cgroup_fd, walking in `order`
 * (enum bpf_cgroup_iter_order); returns the link fd. BPF_CGROUP_ITER_SELF_ONLY
 * links run the program whose records carry the path hash; a program
 * loaded with flush runs the flushing (sleepable) variants. */
int pmc_prog_attach(struct pmc_prog *prog, int cgroup_fd, int order);
/* Whether the program that attach() uses for `order` was loaded. */
int pmc_prog_serves(const struct pmc_prog *prog, int order);

int pmc_link_pin(int link_fd, const char *path);

/* What the file `name` in the directory dir_fd is, as far as removing it
 * safely needs to know: whether that directory is on bpffs, and for a BPF
 * object pinned there, its kind and, for a link, what it iterates and which
 * program runs. Looks at the name itself, never through a symlink; takes no
 * reference beyond the call. Returns 0 or -errno. */
enum pmc_pin_object {
	PMC_PIN_NOT_BPF = 0,	/* not a BPF object (or not on bpffs) */
	PMC_PIN_LINK = 1,
	PMC_PIN_PROG = 2,
	PMC_PIN_MAP = 3,
	PMC_PIN_OTHER = 4,	/* a BPF object of another kind (BTF, ...) */
};

struct pmc_pin_ident {
	unsigned int on_bpffs;
	unsigned int object;		/* enum pmc_pin_object */
	unsigned int link_type;		/* enum bpf_link_type, for a link */
	unsigned int prog_type;		/* enum bpf_prog_type of the link's program */
	unsigned int order;		/* cgroup iterator links: the walk's order */
	unsigned long long cgroup_id;	/* cgroup iterator links: the cgroup */
	char target[32];		/* iterator links: "cgroup", "task", ... */
	char prog_name[16];		/* the program's name, as the kernel keeps it */
};
int pmc_pin_identify(int dir_fd, const char *name, struct pmc_pin_ident *out);

/* The embedded BPF object (ELF), to fingerprint pins with. */
const void *pmc_object_bytes(size_t *size);

/* One session: create, read everything into buf, close. Returns bytes. */
ssize_t pmc_read_session(int link_fd, void *buf, size_t buf_size);

/* Copy the first n overflow records of session_id into dst. -EAGAIN when a
 * later session took the map over meanwhile: read again. */
int pmc_copy_overflow(struct pmc_prog *prog, unsigned long long session_id,
		      void *dst, unsigned long long n);

/*
 * Single reads in one bpf() call (memcg_fetch.bpf.c, Linux 6.4+): a slot
 * holds a reference to a cgroup under its id, and each run writes its record
 * (the same record as a SELF_ONLY session of pmc_prog, path hash included)
 * to memory that pmc_fetch_record() points at, or, for a list of ids, their
 * records one after the other to pmc_fetch_batch(). The slot of a removed
 * cgroup goes at its removal (a tracepoint program attached at load), so no
 * reference here keeps a removed cgroup in the kernel. Not thread-safe: one
 * run at a time.
 */
struct pmc_fetch;
/* nr_slots: how many cgroups the slots hold at most (allocated as used) */
int pmc_fetch_load(const struct pmc_config *cfg, unsigned int nr_slots,
		   struct pmc_fetch **out, char *log, size_t log_size);
/* pmc_fetch_load loads the single-read programs only; this loads the one
 * that pmc_fetch_run_many runs (once; 0 if it already is), sharing every map
 * with them. */
int pmc_fetch_load_many(struct pmc_fetch *fetch, char *log, size_t log_size);
int pmc_fetch_has_many(const struct pmc_fetch *fetch);
void pmc_fetch_destroy(struct pmc_fetch *fetch);
const void *pmc_fetch_record(const struct pmc_fetch *fetch);
/* Reference the cgroup behind cgroup_fd from the slot of its id (a slot
 * it had already is kept); *cgroup_id says which cgroup that was.
 * -ENOENT: the cgroup was removed; -ENOSPC: every slot is in use. */
int pmc_fetch_stash(struct pmc_fetch *fetch, int cgroup_fd, unsigned long long *cgroup_id);
/* Drop the reference of the slot of cgroup_id, if it has one. */
int pmc_fetch_clear(struct pmc_fetch *fetch, unsigned long long cgroup_id);
/* One BPF_PROG_RUN: the record of the stashed cgroup_id into
 * pmc_fetch_record(); a PMC_REC_GONE record where it has no slot (never
 * stashed, cleared, or removed). */
int pmc_fetch_run(struct pmc_fetch *fetch, unsigned long long cgroup_id);
/* Renames of cgroups since load (a tracepoint program counts them). A path
 * proven to name a cgroup, with the count read before the proof, names it
 * as long as the count has not moved and the cgroup is alive. */
unsigned long long pmc_fetch_renames(const struct pmc_fetch *fetch);
/* What a path was proven to name: a stashed cgroup, the hash of the path
 * that the kernel reported for it, and the rename count read before the
 * proof; the fetch program that holds the cgroup's slot (so that a read is
 * a call with one argument); and `used`, set by each PMC_READ_OK (the
 * reader's eviction sweep clears it). */
struct pmc_fetch_route {
	unsigned long long cgroup_id;
	unsigned long long path_hash;
	unsigned long long renames;
	struct pmc_fetch *fetch;
	unsigned long long used;
};
/* pmc_fetch_run for a route: PMC_READ_OK, the record at pmc_fetch_record()
 * is the route's cgroup and the path still names it (no rename since the
 * proof: the run does not hash the path, and puts path_hash in the
 * record's name_hash; renames since: the run hashed the path, it matched,
 * and route->renames is now the count read before the run); PMC_READ_GONE,
 * the cgroup was removed (or its slot let go of); PMC_READ_OTHER, the
 * record is of another cgroup or path; PMC_READ_REAP, nothing was run:
 * the removals watched (pmc_fetch_watch) moved past what the reader has
 * seen; or -errno. (PMC_READ_* are in memcg_record.h.) */
int pmc_fetch_read(struct pmc_fetch_route *route);
/* One BPF_PROG_RUN for the n struct pmc_fetch_want at wants (at most
 * pmc_fetch_batch_capacity()): the record of the i-th one's cgroup at
 * pmc_fetch_batch() + i * pmc_fetch_batch_stride(). Returns how many
 * records are not of that entry's cgroup and path hash (or are of a removed
 * cgroup), or -E2BIG (too many), -EIO (the run failed), -ENOEXEC
 * (pmc_fetch_load_many() has not loaded it). flags: PMC_MANY_WARM, for
 * each run of a call over more cgroups than one run reads (the program
 * first brings the run's cgroups into the CPU's caches, several at once). */
int pmc_fetch_run_many(struct pmc_fetch *fetch, const void *wants, unsigned int n,
		       unsigned int flags);
const void *pmc_fetch_batch(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_capacity(const struct pmc_fetch *fetch);
unsigned int pmc_fetch_batch_stride(const struct pmc_fetch *fetch);
/* The first `size` bytes of each of the first n records of the last
 * pmc_fetch_run_many() into dst, one after the other (n * size bytes): a
 * record of a few stats is a small part of its batch element, which has
 * room for every stat. 0, or -EINVAL (n past the capacity, size past the
 * stride). */
int pmc_fetch_batch_copy(const struct pmc_fetch *fetch, void *dst, unsigned int n,
			 unsigned int size);

/*
 * The ids of removed cgroups (memcg_gone.bpf.c, a cgroup_rmdir tracepoint
 * program, Linux 6.1+): pmc_gone_ring() points at a struct pmc_gone_ring,
 * read-only, that the kernel updates at each removal until destroy.
 */
struct pmc_gone;
int pmc_gone_load(struct pmc_gone **out, char *log, size_t log_size);
void pmc_gone_destroy(struct pmc_gone *gone);
const void *pmc_gone_ring(const struct pmc_gone *gone);
/* The ring's gen up to which the reader has closed its links to removed
 * cgroups: the reader's to advance. */
unsigned long long *pmc_gone_seen(struct pmc_gone *gone);
/* pmc_fetch_read answers PMC_READ_REAP while gone's gen differs from its
 * seen (gone NULL: never). gone must outlive fetch, or be unset first. */
void pmc_fetch_watch(struct pmc_fetch *fetch, const struct pmc_gone *gone);

/* The kernel's own memcg item lists through kallsyms: copies up to state_n
 * entries of memcg_node_stat_items[] and events_n of memcg_vm_event_stat[];
 * *got_* say how many were read (0: not in kallsyms or unreadable).
 * *psi_system: the address of psi_system (pressure), 0 if not in kallsyms. */
int pmc_read_kernel_tables(unsigned int state_n, unsigned int events_n,
			   unsigned int *state_out, unsigned int *events_out,
			   unsigned int *got_state, unsigned int *got_events,
			   unsigned long long *psi_system);

/* BTF of the running kernel (path NULL) or of a file. */
struct pmc_btf;
int pmc_btf_open(const char *path, struct pmc_btf **out);
void pmc_btf_close(struct pmc_btf *btf);
/* "NAME VALUE\n" per enumerator into out; bytes written, -ENOENT, -ENOSPC */
int pmc_btf_enum(struct pmc_btf *btf, const char *enum_name, char *out, size_t out_size);
/* byte size of struct_name.member, looking into anonymous members; -ENOENT */
long pmc_btf_member_size(struct pmc_btf *btf, const char *struct_name, const char *member);
/* 1 if a function (kfunc) of this name is in BTF, else 0 */
int pmc_btf_has_func(struct pmc_btf *btf, const char *name);

#include "pmc_oom.h"

#endif /* PMC_SHIM_H */
