// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * PROTOTYPE, not part of pymemcg: one cgroup's stats in ONE bpf() syscall
 * (BPF_PROG_RUN of a syscall program) instead of an iterator session
 * (bpf_iter_create + read + close: an anon-inode file, a seq_file and a
 * 32 KiB buffer made and freed on every read).
 *
 * `stash` runs once per cgroup (a SELF_ONLY iterator session at set-up) and
 * keeps a reference to the struct cgroup as a kptr in slot `slot_to_fill`.
 * `fetch` (SEC("syscall"), run with BPF_PROG_RUN) takes a slot in its
 * context, reads the selected stats of that cgroup's memcg exactly as
 * bpf_src/memcg_iter.bpf.c does (same pmc_stat_spec selection in .rodata,
 * same CO-RE reads) and writes them back into the context, which the kernel
 * copies back to user space. Works on cgroup v1 (no cgroup-id lookup).
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "memcg_record.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_STATS	16

const volatile __u32 nr_stats = 0;
const volatile struct pmc_stat_spec specs[MAX_STATS] = {};

__u32 slot_to_fill = 0;

struct cg_slot {
	struct cgroup __kptr *cg;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct cg_slot);
} slots SEC(".maps");

/* only the flags: CSS_ONLINE says the cgroup was not removed */
struct cgroup_subsys_state___flags {
	unsigned int flags;
} __attribute__((preserve_access_index));
#define CSS_ONLINE	(1U << 1)

extern struct cgroup *bpf_cgroup_acquire(struct cgroup *cgrp) __ksym;
extern void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;

SEC("iter/cgroup")
int stash(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cg = ctx->cgroup, *old;
	__u32 key = slot_to_fill;
	struct cg_slot *v;

	if (!cg)
		return 0;
	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return 1;
	cg = bpf_cgroup_acquire(cg);
	if (!cg)
		return 1;
	old = bpf_kptr_xchg(&v->cg, cg);
	if (old)
		bpf_cgroup_release(old);
	return 0;
}

struct pmc_sys_args {
	__u32 slot;		/* in */
	__u32 flags;		/* out: PMC_SYS_* */
	__u64 cgroup_id;	/* out */
	__u64 valid;		/* out: bit i set, values[i] was read */
	__u64 values[MAX_STATS];	/* out */
};
#define PMC_SYS_NO_CGROUP	1	/* empty slot */
#define PMC_SYS_DEAD		2	/* the cgroup was removed */

static __always_inline __u64 read_long(const void *addr, bool *ok)
{
	__u64 v = 0;

	*ok = bpf_probe_read_kernel(&v, sizeof(v), addr) == 0;
	return v;
}

SEC("syscall")
int fetch(struct pmc_sys_args *a)
{
	struct cg_slot *v;
	struct cgroup *cg;
	__u32 key = a->slot;
	__u64 valid = 0;
	int i;

	v = bpf_map_lookup_elem(&slots, &key);
	if (!v)
		return -1;
	bpf_rcu_read_lock();
	cg = v->cg;
	if (!cg) {
		a->flags = PMC_SYS_NO_CGROUP;
		goto out;
	}
	a->cgroup_id = BPF_CORE_READ(cg, kn, id);
	if (!(BPF_CORE_READ((struct cgroup_subsys_state___flags *)&cg->self, flags) & CSS_ONLINE)) {
		a->flags = PMC_SYS_DEAD;
		goto out;
	}
	{
		struct mem_cgroup *memcg = (void *)BPF_CORE_READ(cg, subsys[bpf_core_enum_value(
			enum cgroup_subsys_id, memory_cgrp_id)]);
		void *vmstats = BPF_CORE_READ(memcg, vmstats);
		__u32 state_at = bpf_core_field_offset(struct memcg_vmstats, state);
		__u32 events_at = bpf_core_field_offset(struct memcg_vmstats, events);

#pragma unroll
		for (i = 0; i < MAX_STATS; i++) {
			__u64 x = 0;
			bool ok = false;

			if (i >= nr_stats)
				break;
			switch (specs[i].kind) {
			case PMC_KIND_STATE:
				x = read_long(vmstats + state_at + specs[i].slot * 8, &ok);
				break;
			case PMC_KIND_EVENT:
				x = read_long(vmstats + events_at + specs[i].slot * 8, &ok);
				break;
			case PMC_KIND_COUNTER:
				if (specs[i].slot == PMC_CTR_MEMORY_USAGE && cg->level > 0)
					x = read_long(__builtin_preserve_access_index(
						&memcg->memory.usage.counter), &ok);
				break;
			}
			if (!ok)
				continue;
			if ((specs[i].flags & PMC_SPEC_SIGNED) && (long)x < 0)
				x = 0;
			a->values[i] = x * specs[i].scale;
			valid |= 1ULL << i;
		}
	}
out:
	bpf_rcu_read_unlock();
	a->valid = valid;
	return 0;
}
