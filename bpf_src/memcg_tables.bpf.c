// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_tables: the kernel's own item lists, copied out once per process.
 *
 * An object of its own: its typeless __ksym externs make libbpf read all of
 * /proc/kallsyms at every load of the object that declares them, which the
 * record programs (memcg_iter.bpf.c), loaded by every Reader, do not need.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PMC_TABLE_MAX	256	/* entries of one list copied at most */

/* set by the loader into .rodata before load: entries to copy, in u32s */
const volatile __u32 tbl_state_n = 0;
const volatile __u32 tbl_events_n = 0;

struct pmc_tables_buf {
	__u32 state[PMC_TABLE_MAX];
	__u32 events[PMC_TABLE_MAX];
};

/* the copies (too large for the BPF stack) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_tables_buf);
} tables_buf SEC(".maps");

/* The kernel's own item lists (mm/memcontrol.c). Typeless and weak: they
 * resolve through kallsyms where the kernel lists data symbols
 * (CONFIG_KALLSYMS_ALL) and are NULL elsewhere. */
extern const void memcg_node_stat_items __ksym __weak;
extern const void memcg_vm_event_stat __ksym __weak;

/*
 * Copies the kernel's item lists out, once: a header of two u32 counts
 * (entries read of memcg_node_stat_items[], of memcg_vm_event_stat[]; 0 when
 * absent or unreadable), then the entries. The loader attaches it SELF_ONLY
 * to the hierarchy root, reads one session and unloads it.
 */
SEC("iter/cgroup")
int pmc_kernel_tables(struct bpf_iter__cgroup *ctx)
{
	struct pmc_tables_buf *s;
	__u32 counts[2] = {};
	__u32 zero = 0;
	__u32 sn = tbl_state_n, en = tbl_events_n;

	if (!ctx->cgroup)
		return 0;
	s = bpf_map_lookup_elem(&tables_buf, &zero);
	if (!s)
		return 1;
	if (sn > PMC_TABLE_MAX)
		sn = 0;
	if (en > PMC_TABLE_MAX)
		en = 0;
	if (sn && &memcg_node_stat_items &&
	    !bpf_probe_read_kernel(s->state, sn * sizeof(__u32), &memcg_node_stat_items))
		counts[0] = sn;
	if (en && &memcg_vm_event_stat &&
	    !bpf_probe_read_kernel(s->events, en * sizeof(__u32), &memcg_vm_event_stat))
		counts[1] = en;
	bpf_seq_write(ctx->meta->seq, counts, sizeof(counts));
	if (counts[0])
		bpf_seq_write(ctx->meta->seq, s->state, sn * sizeof(__u32));
	if (counts[1])
		bpf_seq_write(ctx->meta->seq, s->events, en * sizeof(__u32));
	return 1;
}
