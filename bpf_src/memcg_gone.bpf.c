// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_gone: the ids of removed cgroups, for a reader that holds iterator
 * links (each keeps its cgroup alive in the kernel until closed). On the
 * cgroup_rmdir tracepoint the program writes the removed cgroup's id into a
 * ring in the mmapable `gone` map and then counts it in `gen`; the reader
 * compares `gen` with what it saw last (one memory read when nothing
 * changed) and closes the links of the ids written since, or all its links
 * when more were written than the ring holds. Loads where tp_btf and cgroup
 * iterators do (Linux 6.1+), unlike memcg_fetch.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include "memcg_record.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_gone_ring);
} gone SEC(".maps");

SEC("tp_btf/cgroup_rmdir")
int pmc_gone(__u64 *ctx)
{
	/* the tracepoint's arguments: (struct cgroup *cgrp, const char *path);
	 * the verifier types ctx[0] from the tracepoint's BTF */
	struct cgroup *cgrp = (struct cgroup *)ctx[0];
	struct pmc_gone_ring *ring;
	__u32 zero = 0;
	__u64 gen;

	ring = bpf_map_lookup_elem(&gone, &zero);
	if (!ring)
		return 0;
	/* rmdir runs under cgroup_mutex: one writer at a time. The id is
	 * stored before the atomic add (a full barrier) publishes it. */
	gen = ring->gen;
	ring->ids[gen & (PMC_GONE_RING - 1)] = cgrp->kn->id;
	__sync_fetch_and_add(&ring->gen, 1);
	return 0;
}
