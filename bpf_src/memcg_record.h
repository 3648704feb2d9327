/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The wire format between the memcg iterator program and its readers.
 * Included by the BPF programs (bpf_src/) and the C shim (csrc/). Python
 * reads it at build time (csrc/record_header.py): the binding's cdef of
 * these #defines, enums and structs is made from it (and checked against
 * it by the compiler), and so is pymemcg/_record_h.py, the same as plain
 * Python for the parts with no compiled code. Keep to what that reader
 * takes: integer #defines, plain enums, structs of unsigned int, unsigned
 * long long and structs of this header. Bump PMC_FORMAT_VERSION on any
 * change.
 *
 * One iterator session writes, in this order:
 *   N records    struct pmc_record + nr_stats u64 values, fixed size
 *   1 trailer    struct pmc_trailer, written when the walk has ended
 * Records past the seq budget (the kernel's 32 KiB session buffer) go to the
 * mmapable overflow array map instead; the trailer's `visited` tells how many
 * records the walk produced in all.
 */
#ifndef PMC_MEMCG_RECORD_H
#define PMC_MEMCG_RECORD_H

#define PMC_FORMAT_VERSION	8
#define PMC_MAX_STATS		128	/* one bit each in pmc_record.valid */
#define PMC_SEQ_BUF_SIZE	32768	/* PAGE_SIZE << 3 in kernel/bpf/bpf_iter.c */
#define PMC_TRAILER_MAGIC	0x31474d434d4d50ULL	/* "PMMCMG1" */
#define PMC_SELECTION_WORDS	4	/* pmc_trailer.selection: a SHA-256 */

/* pmc_record.flags */
#define PMC_REC_NO_MEMCG	(1U << 0)	/* cgroup has no memory css */
#define PMC_REC_NO_VMSTATS	(1U << 1)	/* memcg->vmstats was NULL */
#define PMC_REC_GONE		(1U << 2)	/* fetch: not stashed, or the cgroup was removed */
/* --- pressure (PSI) --- */
#define PMC_REC_NO_PSI		(1U << 3)	/* a pressure stat was selected and the cgroup
						 * has no psi group, or its cgroup.pressure is 0 */

/* pmc_stat_spec.kind */
enum pmc_stat_kind {
	PMC_KIND_NONE = 0,	/* unavailable: never read, valid bit stays 0 */
	PMC_KIND_STATE,		/* memcg_vmstats.state[slot] / state_local[slot] */
	PMC_KIND_EVENT,		/* memcg_vmstats.events[slot] / events_local[slot] */
	PMC_KIND_MEMEVENT,	/* mem_cgroup.memory_events[slot] / _local[slot] */
	PMC_KIND_COUNTER,	/* a page_counter field, slot is enum pmc_counter */
	/* --- limits and cgroup.stat: appended --- */
	PMC_KIND_FIELD,		/* a scalar field of struct mem_cgroup or struct
				 * cgroup, slot is enum pmc_field */
	/* --- pressure (PSI) --- */
	PMC_KIND_PRESSURE,	/* the cgroup's struct psi_group: slot is enum
				 * pmc_pressure_field, item the index into that array */
	/* --- NUMA (memory.numa_stat) --- */
	PMC_KIND_NUMA,		/* mem_cgroup.nodeinfo[item]->lruvec_stats: state[slot]
				 * (state_local[slot] with local_stats), summed over
				 * PMC_SPEC_RUN(flags) slots from slot */
};

/* pmc_stat_spec.slot when kind == PMC_KIND_COUNTER */
enum pmc_counter {
	PMC_CTR_MEMORY_USAGE = 0,
	PMC_CTR_MEMORY_PEAK,
	PMC_CTR_MEMORY_MAX,
	PMC_CTR_MEMORY_FAILCNT,
	PMC_CTR_SWAP_USAGE,	/* memcg->swap on cgroup v2, memcg->memsw on v1 */
	PMC_CTR_SWAP_PEAK,
	PMC_CTR_SWAP_MAX,
	PMC_CTR_SWAP_FAILCNT,
	/* --- protections and limits (memory.min/low/high, memory.swap.high):
	 * appended --- */
	PMC_CTR_MEMORY_MIN,
	PMC_CTR_MEMORY_LOW,
	PMC_CTR_MEMORY_HIGH,
	PMC_CTR_SWAP_HIGH,
};

/* pmc_stat_spec.slot when kind == PMC_KIND_FIELD; each read only where the
 * kernel's BTF has the field (bpf_core_field_exists), else unavailable */
enum pmc_field {
	PMC_FIELD_SOFT_LIMIT = 0,	/* mem_cgroup.soft_limit, pages (v1) */
	PMC_FIELD_ZSWAP_MAX,		/* mem_cgroup.zswap_max, pages */
	PMC_FIELD_OOM_GROUP,		/* mem_cgroup.oom_group, bool */
	PMC_FIELD_NR_DESCENDANTS,	/* cgroup.nr_descendants, int */
	PMC_FIELD_NR_DYING_DESCENDANTS,	/* cgroup.nr_dying_descendants, int */
};

/* --- pressure (PSI) --- */
/* pmc_stat_spec.slot when kind == PMC_KIND_PRESSURE: which psi_group array
 * item indexes (flattened as BTF has it), and the unit the record gets. Both
 * as memory.pressure prints them (kernel/sched/psi.c psi_show). */
enum pmc_pressure_field {
	PMC_PSI_TOTAL = 0,	/* total[PSI_AVGS][state] ns -> us (total=) */
	PMC_PSI_AVG,		/* avg[state][window] fixed point (FSHIFT 11) -> hundredths
				 * of a percent (avg10=5.23 -> 523) */
};

/* pmc_stat_spec.flags */
#define PMC_SPEC_SIGNED		(1U << 0)	/* kernel keeps a long: clamp < 0 to 0 */
#define PMC_SPEC_MEMCG_ITEM	(1U << 1)	/* item is an enum memcg_stat_item (RFC kfuncs) */
/* --- NUMA --- */
#define PMC_SPEC_RUN_SHIFT	8	/* PMC_KIND_NUMA: how many slots from slot are summed */
#define PMC_SPEC_RUN_MASK	7	/* (cgroup v1's LRU sums: 1 to 5; 0 means 1) */
#define PMC_NUMA_MAX_NODES	16	/* nodes with memory a selection takes NUMA stats of */

/* how the program reads state and events (the loader's choice, in .rodata) */
enum pmc_kfuncs {
	PMC_KFUNCS_NONE = 0,	/* CO-RE reads of struct mem_cgroup */
	PMC_KFUNCS_MEMCG,	/* Linux 7.0+ bpf_mem_cgroup_*() on a struct mem_cgroup */
	PMC_KFUNCS_RFC,		/* the RFC's memcg_*_fetch() on a struct cgroup; memory
				 * events and page counters stay CO-RE */
};

struct pmc_stat_spec {
	unsigned int kind;	/* enum pmc_stat_kind */
	unsigned int slot;	/* array index (CO-RE backend) */
	unsigned int item;	/* kernel enum value (kfunc backend) */
	unsigned int flags;	/* PMC_SPEC_* */
	unsigned long long scale;	/* value = raw * scale: page size, 1024, 1 */
};

/*
 * What the programs read and how: the loader sets it in each program's
 * .rodata (`sel`, memcg_iter.bpf.c and memcg_fetch.bpf.c) before load, so
 * the verifier sees it as constants and removes what the selection does not
 * use. Flags are 0 or 1.
 */
struct pmc_selection {
	unsigned int nr_stats;		/* specs[] in use: the values of a record */
	unsigned int local_stats;	/* the cgroup alone (state_local, ...) */
	unsigned int kfuncs;		/* enum pmc_kfuncs */
	/* which kernel arrays the specs read: each is copied in one read */
	unsigned int need_state;
	unsigned int need_events;
	unsigned int need_memev;
	/* read struct mem_cgroup with plain loads (bpf_rdonly_cast, Linux
	 * 6.2+) rather than a helper call per value or array */
	unsigned int direct_loads;
	unsigned int pad;
	struct pmc_stat_spec specs[PMC_MAX_STATS];
	/* --- pressure (PSI) --- */
	unsigned long long psi_system;	/* &psi_system, the v2 root's psi group; 0: unknown */
};

struct pmc_record {
	unsigned long long cgroup_id;	/* kernfs id == st_ino of the directory */
	unsigned long long parent_id;	/* 0 for the hierarchy root */
	unsigned long long name_hash;	/* hash of the name (tree program) or of the
					 * path below the root (path program) */
	unsigned int level;		/* 0 for the hierarchy root */
	unsigned int flags;		/* PMC_REC_* */
	unsigned long long valid[PMC_MAX_STATS / 64];	/* bit i set: value i was read */
	/* followed by nr_stats unsigned long long values, bytes or counts */
};

/*
 * selection: what the records hold, as the program itself says it. The
 * loader sets it in .rodata before load (frozen after), so a reader that
 * learnt the stat order anywhere else (a pin's metadata file) can check it:
 * SHA-256 over the format version, the program (tree: name hashes, single
 * cgroup: path hashes), the local flag and the stat names in record order
 * (pymemcg/decode.py: selection_digest). It comes first so that magic stays
 * the third word from the end, where a reader that unpacks a record and the
 * trailer in one call looks for it.
 */
struct pmc_trailer {
	unsigned long long selection[PMC_SELECTION_WORDS];
	unsigned long long magic;	/* PMC_TRAILER_MAGIC */
	unsigned long long session_id;	/* bpf_iter_meta.session_id */
	unsigned long long visited;	/* records this walk produced in all */
};

/* What pmc_fetch (memcg_fetch.bpf.c) reads next, in its .bss (the run
 * takes no context): which stashed cgroup, by id, and whether to hash its
 * path. The record comes back in the mmaped `out` map. */
struct pmc_fetch_args {
	unsigned long long cgroup_id;
	unsigned long long path_hash;	/* with_path 0: the record's name_hash */
	unsigned int with_path;		/* 0: the caller proved the path otherwise */
	unsigned int pad;
};

/* What the loader's pmc_fetch_read (csrc/pmc_shim.h) says of a run */
#define PMC_READ_OK		0	/* the route's cgroup, and its path names it still */
#define PMC_READ_GONE		1	/* removed, or its slot let go of */
#define PMC_READ_OTHER		2	/* another cgroup, or another path */
#define PMC_READ_REAP		3	/* not read: cgroups were removed since the
					 * reader last closed its links to them */

/* BPF_PROG_RUN context of pmc_fetch_many: the stashed cgroups to read, in
 * order, each with what the reader proved its path to name. Record i (for
 * want[i]) comes back at index i of the mmaped `batch` map, each in an
 * element of PMC_RECORD_SIZE(PMC_MAX_STATS) bytes; the run returns how many
 * records are not of want[i].cgroup_id with want[i].path_hash (or are of a
 * removed cgroup), so that a reader checks records one by one only then.
 * The caller passes count and the first count entries only: the kernel
 * copies no more than that in. */
#define PMC_FETCH_BATCH_MAX	256
struct pmc_fetch_want {
	unsigned long long cgroup_id;	/* the stashed cgroup to read */
	unsigned long long path_hash;
};

/* pmc_fetch_many_args.flags: warm the caches first (a rotation over more
 * cgroups than the CPU's caches hold) */
#define PMC_MANY_WARM	1
struct pmc_fetch_many_args {
	unsigned int count;
	unsigned int flags;		/* PMC_MANY_* */
	struct pmc_fetch_want want[PMC_FETCH_BATCH_MAX];
};

/* The ids of removed cgroups (memcg_gone.bpf.c), read through mmap: the
 * id of the gen-th removal since load is at ids[gen % PMC_GONE_RING], and
 * gen counts removals (written after the id). */
#define PMC_GONE_RING	256	/* a power of two */
struct pmc_gone_ring {
	unsigned long long gen;
	unsigned long long ids[PMC_GONE_RING];
};

/* Writer bookkeeping in .bss, read by the shim through the mmaped map. */
struct pmc_overflow_state {
	unsigned long long session_id;	/* session whose records the map holds */
	unsigned long long written;	/* records written to the map */
	unsigned long long dropped;	/* records that did not fit the map */
};

/*
 * FNV-1a over the name's NUL-terminated bytes taken as little-endian u64
 * words, the last one zero-padded: cheap in BPF, and it tells a reader when
 * a cgroup it knows by id was renamed (cgroup v1 allows rename).
 */
#define PMC_FNV_OFFSET	0xcbf29ce484222325ULL
#define PMC_FNV_PRIME	0x100000001b3ULL
#define PMC_NAME_MAX	256
#define PMC_PATH_MAX_DEPTH	32

#define PMC_RECORD_SIZE(nr_stats) \
	(sizeof(struct pmc_record) + (nr_stats) * sizeof(unsigned long long))

#endif /* PMC_MEMCG_RECORD_H */
