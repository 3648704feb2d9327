/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel types memcg_iter.bpf.c touches, declared by hand with
 * preserve_access_index so that libbpf relocates every field offset and size
 * against the running kernel's BTF (CO-RE). A full vmlinux.h would tie the
 * build to the build host's kernel; these declarations tie it to nothing.
 * Member order and array sizes here are placeholders: only names and types
 * matter.
 */
#ifndef PMC_VMLINUX_MIN_H
#define PMC_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u32 __be32;
typedef __u16 __be16;
typedef __u32 __wsum;
typedef __u64 u64;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};

enum {
	BPF_F_NO_PREALLOC = (1U << 0),
	BPF_F_MMAPABLE = (1U << 10),
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

typedef struct {
	long counter;
} atomic_long_t;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct kernfs_node {
	const char *name;
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
	unsigned int flags;
} __attribute__((preserve_access_index));

#define CSS_ONLINE	(1U << 1)	/* include/linux/cgroup-defs.h, since 3.x */

/* --- pressure (PSI): include/linux/psi_types.h; BTF flattens the 2-D arrays
 * total[NR_PSI_AGGREGATORS][NR_PSI_STATES - 1] and avg[NR_PSI_STATES - 1][3] */
struct psi_group {
	bool enabled;
	__u64 total[1];
	unsigned long avg[1];
} __attribute__((preserve_access_index));

struct cgroup {
	struct cgroup_subsys_state self;
	int level;
	struct kernfs_node *kn;
	struct cgroup_subsys_state *subsys[16];
	int nr_descendants;
	int nr_dying_descendants;
	struct psi_group *psi;	/* pressure (PSI); NULL where PSI is off */
} __attribute__((preserve_access_index));

struct bpf_iter__cgroup {
	struct bpf_iter_meta *meta;
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct page_counter {
	atomic_long_t usage;
	unsigned long failcnt;
	unsigned long watermark;
	unsigned long max;
	unsigned long min;
	unsigned long low;
	unsigned long high;
} __attribute__((preserve_access_index));

struct memcg_vmstats {
	long state[1];
	unsigned long events[1];
	long state_local[1];
	unsigned long events_local[1];
} __attribute__((preserve_access_index));

/* --- NUMA: a memcg's per-node stats (include/linux/memcontrol.h). state[]
 * is hierarchical, state_local[] the memcg alone (6.2+); both laid out as
 * memcg_vmstats.state[]'s node items. The struct is reached through a
 * pointer from 6.10 or so on, and is embedded in mem_cgroup_per_node before:
 * the ___embedded flavour names the older shape. */
struct lruvec_stats {
	long state[1];
	long state_local[1];
} __attribute__((preserve_access_index));

struct mem_cgroup_per_node {
	struct lruvec_stats *lruvec_stats;
} __attribute__((preserve_access_index));

struct mem_cgroup_per_node___embedded {
	struct lruvec_stats lruvec_stats;
} __attribute__((preserve_access_index));

struct mem_cgroup {
	struct cgroup_subsys_state css;
	struct page_counter memory;
	struct page_counter swap;
	struct memcg_vmstats *vmstats;
	atomic_long_t memory_events[1];
	atomic_long_t memory_events_local[1];
	unsigned long soft_limit;	/* CONFIG_MEMCG_V1 (6.11+) */
	unsigned long zswap_max;	/* CONFIG_ZSWAP */
	bool oom_group;
	struct mem_cgroup_per_node *nodeinfo[];	/* NUMA: by node id */
} __attribute__((preserve_access_index));

enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

/* Argument types of the memcg kfuncs: libbpf checks an extern kfunc's
 * prototype against the kernel's by kind, so these must be enums. */
enum node_stat_item { PMC_NODE_STAT_PLACEHOLDER };
enum memcg_stat_item { PMC_MEMCG_STAT_PLACEHOLDER };
enum vm_event_item { PMC_VM_EVENT_PLACEHOLDER };
enum memcg_memory_event { PMC_MEMORY_EVENT_PLACEHOLDER };

#endif /* PMC_VMLINUX_MIN_H */
