// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_iter: a cgroup iterator that emits one fixed-layout record of the
 * selected memory-cgroup statistics per visited cgroup (see memcg_record.h).
 *
 * The selection is .rodata, set by the loader before load: which stats, at
 * which slot of which kernel array, with which scale. The verifier sees those
 * values as constants, so one object serves every selection and every kernel
 * layout the loader can resolve, and unused paths are dead code.
 */
#include "memcg_fill.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* --- set by the loader into .rodata before load --- */
const volatile struct pmc_selection sel = {};
const volatile __u32 seq_budget = 0;		/* records that fit the seq buffer */
const volatile __u32 overflow_capacity = 0;	/* entries of the overflow map */

/* pmc_trailer.selection of each program (memcg_record.h) */
const volatile __u64 selection_tree[PMC_SELECTION_WORDS] = {};
const volatile __u64 selection_path[PMC_SELECTION_WORDS] = {};

/*
 * --- writer bookkeeping, shared by every session of this program ---
 *
 * Walks run one at a time (cgroup_mutex), but the end-of-walk call runs
 * after the mutex is dropped, and the loader copies the overflow map
 * (pmc_copy_overflow) from user space, both while the next session may be
 * writing on another CPU. overflow_state.session_id is therefore the
 * sequence word of a seqlock: a session claims the bookkeeping by storing
 * its id before it touches anything else, and a reader trusts what it read
 * only if the id was its own before and after. A compiler barrier is not
 * enough for that on a weakly ordered CPU (arm64 may make plain stores
 * visible, and satisfy plain loads, out of program order). The kernel JITs
 * the BPF atomics that return a value (xchg, cmpxchg, fetch-and-op) as fully
 * ordered, like its own atomic_xchg(); plain stores and atomics without a
 * fetch are unordered. So the claim is an xchg, which nothing after it (the
 * resets, the records) can pass, and the end of walk reads the owner with a
 * fetch-or of 0, which cannot be satisfied before the read of `visited` it
 * vouches for.
 */
struct pmc_overflow_state overflow_state = {};
__u64 visited = 0;

/* The record being filled and what it is filled from, per CPU. */
struct pmc_scratch_map scratch SEC(".maps");

/* Records past the seq budget. Value size and capacity are set at load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct pmc_record));
} overflow SEC(".maps");

/*
 * End of walk: another session may already be writing the bookkeeping.
 * Read `visited` before the owner: a new session sets the owner first, so
 * an unchanged owner proves the count.
 */
static __always_inline int pmc_write_trailer(struct bpf_iter_meta *meta, bool with_path)
{
	struct pmc_trailer t = {
		.magic = PMC_TRAILER_MAGIC,
		.session_id = meta->session_id,
	};
	__u64 count = visited, owner;
	__u32 i;

	for (i = 0; i < PMC_SELECTION_WORDS; i++)
		t.selection[i] = with_path ? selection_path[i] : selection_tree[i];

	owner = __sync_fetch_and_or(&overflow_state.session_id, 0);	/* a full barrier */
	t.visited = owner == meta->session_id ? count : ~0ULL;
	bpf_seq_write(meta->seq, &t, sizeof(t));
	return 0;
}

static __always_inline int emit(struct bpf_iter__cgroup *ctx, bool with_path, bool flush)
{
	struct bpf_iter_meta *meta = ctx->meta;
	struct cgroup *cgrp = ctx->cgroup;
	struct pmc_scratch *s;
	__u32 size = PMC_RECORD_SIZE(sel.nr_stats);
	__u32 zero = 0;
	__u64 n;

	if (!cgrp)
		return pmc_write_trailer(meta, with_path);

	if (overflow_state.session_id != meta->session_id) {
		/* first cgroup of a new session: claim the bookkeeping, visibly
		 * before any of it changes (a full barrier) */
		__atomic_exchange_n(&overflow_state.session_id, meta->session_id, __ATOMIC_SEQ_CST);
		overflow_state.written = 0;
		overflow_state.dropped = 0;
		visited = 0;
	}

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || size > sizeof(s->rec))
		return 1;
	fill_record(&s->rec, &s->tmp, 0, cgrp, with_path ? PMC_HASH_PATH : PMC_HASH_NAME, flush);

	n = visited++;
	if (n < seq_budget) {
		bpf_seq_write(meta->seq, &s->rec, size);
	} else {
		__u32 idx = n - seq_budget;
		void *dst = idx < overflow_capacity ? bpf_map_lookup_elem(&overflow, &idx) : 0;

		if (dst) {
			bpf_probe_read_kernel(dst, size, &s->rec);
			overflow_state.written++;
		} else {
			overflow_state.dropped++;
		}
	}
	return 0;
}

/* Trees: each record carries its name's hash. */
SEC("iter/cgroup")
int pmc_memcg_iter(struct bpf_iter__cgroup *ctx)
{
	return emit(ctx, false, false);
}

/* Single cgroups: the record carries the hash of its whole path. */
SEC("iter/cgroup")
int pmc_memcg_iter_path(struct bpf_iter__cgroup *ctx)
{
	return emit(ctx, true, false);
}

/*
 * The same, flushing each memcg's pending per-CPU updates before reading it,
 * as a read of memory.stat does. The flush may sleep, hence iter.s; the
 * loader loads these only where the kernel has a flush kfunc.
 */
SEC("iter.s/cgroup")
int pmc_memcg_iter_flush(struct bpf_iter__cgroup *ctx)
{
	return emit(ctx, false, true);
}

SEC("iter.s/cgroup")
int pmc_memcg_iter_path_flush(struct bpf_iter__cgroup *ctx)
{
	return emit(ctx, true, true);
}
