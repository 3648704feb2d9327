// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_fetch: one cgroup's record in one bpf() call. An iterator session
 * costs three syscalls and makes and frees a file, a seq_file and a 32 KiB
 * buffer on every read; BPF_PROG_RUN of a syscall program costs one.
 *
 * pmc_stash runs once per cgroup (a SELF_ONLY iterator session at set-up)
 * and keeps a reference to the cgroup in slot `stash_slot`; that is the
 * only way to a struct cgroup that works on cgroup v1 too (cgroup-id lookups
 * search the default hierarchy only). pmc_fetch, run with BPF_PROG_RUN,
 * fills the same record as memcg_iter.bpf.c's single-cgroup program (path
 * hash included) for the slot it is given, into the mmapable `out` map.
 * Needs Linux 6.4+ (bpf_cgroup_acquire came in 6.2, RCU-protected kptrs in
 * 6.4; run on 6.12, 6.18 and 7.2, refused by 6.1); the loader falls back to
 * iterator sessions where this object does not load.
 */
#include "memcg_fill.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool flush_stats = false;	/* flush before reading (kfuncs only) */

__u32 stash_slot = 0;	/* .bss: the slot the next pmc_stash session fills */

struct pmc_cgroup_slot {
	struct cgroup __kptr *cgrp;
};

/* A reference per stashed cgroup: overwriting the element, or freeing the
 * map, drops it. Capacity is set at load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_cgroup_slot);
} slots SEC(".maps");

/* The last fetch's record (and its scratch arrays), read through mmap. One
 * caller at a time per loaded object: the loader serialises. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_scratch);
} out SEC(".maps");

extern struct cgroup *bpf_cgroup_acquire(struct cgroup *cgrp) __ksym;
extern void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;

SEC("iter/cgroup")
int pmc_stash(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cgrp = ctx->cgroup, *old;
	struct pmc_cgroup_slot *slot;
	__u32 key = stash_slot;
	__u64 id;

	if (!cgrp)
		return 0;
	slot = bpf_map_lookup_elem(&slots, &key);
	if (!slot)
		return 1;
	id = cgrp->kn->id;
	cgrp = bpf_cgroup_acquire(cgrp);
	if (!cgrp)
		return 1;
	old = bpf_kptr_xchg(&slot->cgrp, cgrp);
	if (old)
		bpf_cgroup_release(old);
	/* the loader checks that the session stashed the cgroup it meant */
	bpf_seq_write(ctx->meta->seq, &id, sizeof(id));
	return 0;
}

SEC("syscall")
int pmc_fetch(struct pmc_fetch_args *args)
{
	struct pmc_cgroup_slot *slot;
	struct pmc_scratch *s;
	struct cgroup *cgrp = 0;
	__u32 key = args->slot, zero = 0;

	slot = bpf_map_lookup_elem(&slots, &key);
	s = bpf_map_lookup_elem(&out, &zero);
	if (!slot || !s)
		return 1;
	/* a reference of our own, so that the read (which may sleep when it
	 * flushes) runs outside the RCU section */
	bpf_rcu_read_lock();
	if (slot->cgrp)
		cgrp = bpf_cgroup_acquire(slot->cgrp);
	bpf_rcu_read_unlock();
	if (!cgrp || !(cgrp->self.flags & CSS_ONLINE)) {
		s->rec.hdr.cgroup_id = cgrp ? cgrp->kn->id : 0;
		s->rec.hdr.flags = PMC_REC_GONE;
		s->rec.hdr.valid[0] = 0;
		s->rec.hdr.valid[1] = 0;
	} else {
		fill_record(&s->rec, &s->tmp, cgrp, true, flush_stats);
	}
	if (cgrp)
		bpf_cgroup_release(cgrp);
	return 0;
}
