/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The OOM kill event (memcg_oom.bpf.c -> BPF ring buffer -> pymemcg.oom).
 * Included by the BPF program and the C shim; Python unpacks it with the
 * struct format in pymemcg/oom.py, which its tests check against this
 * layout through the binding's cdef (offsetof, sizeof).
 *
 * One event per process the OOM killer kills: a fixed header, then the
 * names of the victim's memory cgroup and of the memory cgroup whose limit
 * was hit, each as its components leaf first, every one NUL-terminated
 * (victim_names_len bytes, then oom_names_len bytes). Only the bytes used
 * are sent.
 */
#ifndef PMC_MEMCG_OOM_H
#define PMC_MEMCG_OOM_H

#define PMC_OOM_FORMAT_VERSION	1
/* names of one path: up to PMC_PATH_MAX_DEPTH components (memcg_record.h) */
#define PMC_OOM_NAMES_MAX	4096
/* one component at most (NAME_MAX + its NUL) */
#define PMC_OOM_NAME_MAX	256
#define PMC_OOM_RING_BYTES	(256 * 1024)	/* the ring buffer map's default size */
#define PMC_OOM_RING_BYTES_MAX	(1ULL << 30)	/* the largest a caller may choose */

/* pmc_oom_event.flags */
#define PMC_OOM_VICTIM_PATH	(1U << 0)	/* the victim's cgroup path is whole */
#define PMC_OOM_OOM_PATH	(1U << 1)	/* the OOM cgroup's path is whole */
#define PMC_OOM_MEMCG		(1U << 2)	/* a memory cgroup's limit was hit (else global) */
#define PMC_OOM_HAS_MM		(1U << 3)	/* the mm figures were read */
#define PMC_OOM_RSS_EXACT	(1U << 4)	/* rss read as an exact sum (else the shared count) */
#define PMC_OOM_OOM_COUNTER	(1U << 5)	/* oom_usage_kb .. oom_failcnt were read */
#define PMC_OOM_OOM_KNOWN	(1U << 6)	/* the OOM's side was read (else where the
						 * kernel gives no hook: unknown) */

struct pmc_oom_event {
	unsigned long long seq;		/* 1, 2, ...: kills seen since load */
	unsigned long long boot_ns;	/* CLOCK_BOOTTIME at the kill */
	unsigned long long victim_cgroup_id;	/* kernfs id of the victim's memory cgroup */
	unsigned long long oom_cgroup_id;	/* that of the cgroup whose limit was hit; 0: global */
	unsigned long long total_vm_kb;
	unsigned long long anon_rss_kb;
	unsigned long long file_rss_kb;
	unsigned long long shmem_rss_kb;
	unsigned long long pgtables_kb;
	unsigned long long oom_usage_kb;	/* the OOM cgroup's memory.usage at the kill */
	unsigned long long oom_limit_kb;	/* its limit */
	unsigned long long oom_failcnt;
	unsigned long long totalpages;	/* pages the OOM killer weighed the victim against */
	unsigned int pid;		/* the killed thread as the kernel logs it */
	unsigned int tgid;
	unsigned int uid;		/* in the initial user namespace */
	unsigned int flags;
	unsigned int constraint;	/* enum oom_constraint's value */
	unsigned int oom_score_adj;	/* a signed short, sign-extended */
	unsigned int victim_level;	/* depth below the hierarchy root */
	unsigned int oom_level;
	unsigned int victim_names_len;
	unsigned int oom_names_len;
	unsigned int format;		/* PMC_OOM_FORMAT_VERSION */
	unsigned int pad;
	unsigned long long comm[2];	/* the victim's comm, 16 bytes, NUL-padded */
};

/* Writer bookkeeping in .bss, read by the shim through the mmaped map. */
struct pmc_oom_state {
	unsigned long long seen;	/* kills seen (seq of the last) */
	unsigned long long lost;	/* kills whose event did not fit the ring */
};

#endif /* PMC_MEMCG_OOM_H */
