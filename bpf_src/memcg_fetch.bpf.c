// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_fetch: one cgroup's record in one bpf() call. An iterator session
 * costs three syscalls and makes and frees a file, a seq_file and a 32 KiB
 * buffer on every read; BPF_PROG_RUN of a syscall program costs one.
 *
 * pmc_stash runs once per cgroup (a SELF_ONLY iterator session at set-up)
 * and keeps a reference to the cgroup in the `slots` hash map under its
 * cgroup id; an iterator session is the only way to a struct cgroup that
 * works on cgroup v1 too (cgroup-id lookups search the default hierarchy
 * only). pmc_rmdir, on the cgroup_rmdir tracepoint, deletes a removed
 * cgroup's element at once, so that a reference held here never keeps a
 * removed cgroup in the kernel. pmc_fetch, run with BPF_PROG_RUN, fills the
 * same record as memcg_iter.bpf.c's single-cgroup program (path hash
 * included, unless the caller says it proved the path otherwise) for the
 * cgroup id the loader wrote into `fetch_args`, into the mmapable `out` map.
 * pmc_rename, on the cgroup_rename tracepoint, counts renames: while the
 * count has not moved, no path has changed its cgroup by a rename, and a
 * caller that proved a path at that count need not hash it again.
 * pmc_fetch_many does the same for a list of ids in one run, a record per
 * element of the mmapable `batch` map, and counts the records that are not
 * of the cgroup and path the caller proved each entry to name.
 * Needs Linux 6.4+ (bpf_cgroup_acquire came in 6.2, RCU-protected kptrs in
 * 6.4; run on 6.12, 6.18 and 7.2, refused by 6.1); the loader falls back to
 * iterator sessions where this object does not load.
 */
#include "memcg_fill.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* set by the loader into .rodata before load */
const volatile struct pmc_selection sel = {};
const volatile bool flush_stats = false;	/* flush before reading (kfuncs only) */

struct pmc_cgroup_slot {
	struct cgroup __kptr *cgrp;
};

/* cgroup id (kernfs id) -> a reference to that cgroup: deleting the
 * element (pmc_rmdir, or the loader letting go of it), or freeing the map,
 * drops it. Elements are allocated as cgroups are stashed, not up front;
 * capacity is set at load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct pmc_cgroup_slot);
} slots SEC(".maps");

/* The record being filled and what it is filled from, per CPU. */
struct pmc_scratch_map scratch SEC(".maps");

/* The last fetch's record (and its scratch arrays), read through mmap. One
 * caller at a time per loaded object: the loader serialises. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_scratch);
} out SEC(".maps");

/* What the next pmc_fetch run reads, written through the mmaped .bss: a
 * run with no context costs less (the kernel allocates a context, copies it
 * in and back out on every run). */
struct pmc_fetch_args fetch_args = {};

/* Renames of cgroups (of any hierarchy) since load, read through the mmaped
 * .bss. The tracepoint fires inside the rename, after the new name is set
 * and before the rename returns or the VFS shows the new name (the renamer
 * holds the parent directory's lock throughout): a count read unchanged
 * since a path was proven means that no lookup of any path can have seen a
 * rename since. */
__u64 renames = 0;

extern struct cgroup *bpf_cgroup_acquire(struct cgroup *cgrp) __ksym;
extern void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;

SEC("iter/cgroup")
int pmc_stash(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cgrp = ctx->cgroup, *old;
	struct pmc_cgroup_slot empty = {}, *slot;
	__u64 id, none = 0;

	if (!cgrp)
		return 0;
	id = cgrp->kn->id;
	/* The walk holds cgroup_mutex, and so does rmdir up to and including
	 * its tracepoint: a cgroup stashed here is live, and its removal, which
	 * comes after, deletes this element. */
	bpf_map_update_elem(&slots, &id, &empty, BPF_NOEXIST);
	slot = bpf_map_lookup_elem(&slots, &id);
	if (!slot) {
		/* the map is full: id 0 (no kernfs node has it) says so */
		bpf_seq_write(ctx->meta->seq, &none, sizeof(none));
		return 1;
	}
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

/* A removed cgroup's element goes at once, and with it the reference that
 * would keep the cgroup (and its memcg) in the kernel until the next read
 * of its path. */
SEC("tp_btf/cgroup_rmdir")
int pmc_rmdir(__u64 *ctx)
{
	/* the tracepoint's arguments: (struct cgroup *cgrp, const char *path);
	 * the verifier types ctx[0] from the tracepoint's BTF */
	struct cgroup *cgrp = (struct cgroup *)ctx[0];
	__u64 id = cgrp->kn->id;

	bpf_map_delete_elem(&slots, &id);
	return 0;
}

SEC("tp_btf/cgroup_rename")
int pmc_rename(__u64 *ctx)
{
	__sync_fetch_and_add(&renames, 1);
	return 0;
}

/* Records of a pmc_fetch_many run, one per element, filled in place.
 * Capacity is set at load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_out);
} batch SEC(".maps");

/* The run's list, copied out of the context (the verifier lets a program
 * index its context with constant offsets only), and its counts. */
struct pmc_batch_list {
	__u32 done;		/* records written */
	__u32 mismatched;	/* records that are not what want[] says */
	struct pmc_fetch_want want[PMC_FETCH_BATCH_MAX];
	struct pmc_name_cache names;	/* of this run */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_batch_list);
} batch_list SEC(".maps");

static __always_inline void mark_gone(struct pmc_out *rec, __u64 cgroup_id)
{
	rec->hdr.cgroup_id = cgroup_id;
	rec->hdr.flags = PMC_REC_GONE;
	rec->hdr.valid[0] = 0;
	rec->hdr.valid[1] = 0;
}

/* The record of the stashed cgroup with this id into rec: one not stashed
 * (or let go of), or removed since, gives a PMC_REC_GONE record. */
static __always_inline void fetch_one(__u64 key, struct pmc_out *rec, struct pmc_tmp *tmp,
				      struct pmc_name_cache *names, enum pmc_hash_of hash_of)
{
	struct pmc_cgroup_slot *slot = bpf_map_lookup_elem(&slots, &key);
	struct cgroup *cgrp = 0;

	if (!slot) {
		mark_gone(rec, 0);
		return;
	}
	if (!flush_stats) {
		/* a read that does not flush does not sleep: the slot's own
		 * reference keeps the cgroup, and the RCU section the pointer
		 * to it, valid throughout, with no reference of our own to
		 * take and drop (an atomic pair per record) */
		bpf_rcu_read_lock();
		cgrp = slot->cgrp;
		if (!cgrp || !(cgrp->self.flags & CSS_ONLINE))
			mark_gone(rec, cgrp ? cgrp->kn->id : 0);
		else
			fill_record(rec, tmp, names, cgrp, hash_of, false);
		bpf_rcu_read_unlock();
		return;
	}
	/* a reference of our own, so that the read (which may sleep when it
	 * flushes) runs outside the RCU section */
	bpf_rcu_read_lock();
	if (slot->cgrp)
		cgrp = bpf_cgroup_acquire(slot->cgrp);
	bpf_rcu_read_unlock();
	if (!cgrp || !(cgrp->self.flags & CSS_ONLINE))
		mark_gone(rec, cgrp ? cgrp->kn->id : 0);
	else
		fill_record(rec, tmp, names, cgrp, hash_of, flush_stats);
	if (cgrp)
		bpf_cgroup_release(cgrp);
}

SEC("syscall")
int pmc_fetch(void *ctx)
{
	struct pmc_scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&out, &zero);
	if (!s)
		return 1;
	if (fetch_args.with_path) {
		fetch_one(fetch_args.cgroup_id, &s->rec, &s->tmp, 0, PMC_HASH_PATH);
	} else {
		fetch_one(fetch_args.cgroup_id, &s->rec, &s->tmp, 0, PMC_HASH_NONE);
		/* the hash the caller proved the path to have, as a hashing
		 * run would have put it */
		s->rec.hdr.name_hash = fetch_args.path_hash;
	}
	return 0;
}

/* One record of a pmc_fetch_many run. A global function, run by a bpf_loop
 * callback: the verifier checks the (large) record fill once, rather than
 * once per iteration of a loop over up to PMC_FETCH_BATCH_MAX cgroups, or
 * once per pass over the callback (newer kernels walk a callback until its
 * states converge). */
__noinline int pmc_fetch_nth(__u32 i)
{
	struct pmc_fetch_want *want;
	struct pmc_batch_list *list;
	struct pmc_scratch *s;
	struct pmc_out *rec;
	__u32 zero = 0;

	list = bpf_map_lookup_elem(&batch_list, &zero);
	s = bpf_map_lookup_elem(&scratch, &zero);
	rec = bpf_map_lookup_elem(&batch, &i);
	if (!list || !s || !rec)
		return 1;
	want = &list->want[i & (PMC_FETCH_BATCH_MAX - 1)];
	fetch_one(want->cgroup_id, rec, &s->tmp, &list->names, PMC_HASH_PATH);
	/* the check a reader makes of each record (pymemcg/backends/bpf.py) */
	if (rec->hdr.cgroup_id != want->cgroup_id || rec->hdr.name_hash != want->path_hash ||
	    (rec->hdr.flags & PMC_REC_GONE))
		list->mismatched++;
	list->done++;
	return 0;
}

static long fetch_nth(__u32 i, void *unused)
{
	long stop = pmc_fetch_nth(i);

	/* bpf_loop takes 0 or 1: a barrier, so that clang (which sees
	 * that pmc_fetch_nth returns no other value) keeps the test that
	 * shows the verifier so */
	asm volatile("" : "+r"(stop));
	return stop ? 1 : 0;
}

/* A record per listed cgroup, in order, in one BPF_PROG_RUN. Returns how
 * many records are not what the list says; more than count: the run
 * failed. */
SEC("syscall")
int pmc_fetch_many(struct pmc_fetch_many_args *args)
{
	struct pmc_batch_list *list;
	__u32 zero = 0, n = args->count;

	list = bpf_map_lookup_elem(&batch_list, &zero);
	if (!list || n > PMC_FETCH_BATCH_MAX)
		return PMC_FETCH_BATCH_MAX + 1;
	if (bpf_probe_read_kernel(list->want, n * sizeof(list->want[0]), args->want))
		return PMC_FETCH_BATCH_MAX + 1;
	list->done = 0;
	list->mismatched = 0;
	for (__u32 i = 0; i < PMC_PATH_MAX_DEPTH; i++)
		list->names.id[i] = 0;	/* no kernfs node has id 0 */
	bpf_loop(n, fetch_nth, 0, 0);
	return list->done == n ? list->mismatched : PMC_FETCH_BATCH_MAX + 1;
}
