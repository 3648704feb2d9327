// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_tables: the kernel's own item lists (mm/memcontrol.c), copied out
 * once per process, in one BPF_PROG_RUN; and where psi_system is.
 *
 * The kernel finds each list by name (bpf_kallsyms_lookup_name, Linux 5.16+):
 * that resolves what /proc/kallsyms lists (data symbols only with
 * CONFIG_KALLSYMS_ALL), without the whole symbol table as text that reading
 * /proc/kallsyms makes the kernel write, and where that file is unreadable
 * (systemd's ProtectKernelTunables). No CO-RE
 * and no externs: libbpf loads this object without parsing vmlinux BTF.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PMC_TABLE_MAX	256	/* entries of one list copied at most */

/* set by the loader into .rodata before load: entries to copy, in u32s */
const volatile __u32 tbl_state_n = 0;
const volatile __u32 tbl_events_n = 0;

/* .bss, read by the loader after the run: entries copied of each list (0:
 * not found or unreadable), and the entries */
__u32 got_state = 0;
__u32 got_events = 0;
__u32 state_list[PMC_TABLE_MAX] = {};
__u32 events_list[PMC_TABLE_MAX] = {};
/* --- pressure (PSI) --- */
/* &psi_system (kernel/sched/psi.c): the v2 root cgroup's psi group, which
 * cgroup_psi() gives it instead of its cgroup->psi; 0: not in kallsyms */
__u64 psi_system = 0;

/* n u32 entries of the list that the kernel symbol `sym` (sym_size bytes,
 * its NUL included) names into dst; returns how many (0: none) */
static __always_inline __u32 copy_list(const char *sym, int sym_size, __u32 *dst, __u32 n)
{
	__u64 addr = 0;

	if (!n || n > PMC_TABLE_MAX)
		return 0;
	if (bpf_kallsyms_lookup_name(sym, sym_size, 0, &addr) || !addr)
		return 0;
	return bpf_probe_read_kernel(dst, n * sizeof(__u32), (const void *)addr) ? 0 : n;
}

SEC("syscall")
int pmc_kernel_tables(void *ctx)
{
	char state_sym[] = "memcg_node_stat_items";
	char events_sym[] = "memcg_vm_event_stat";

	got_state = copy_list(state_sym, sizeof(state_sym), state_list, tbl_state_n);
	got_events = copy_list(events_sym, sizeof(events_sym), events_list, tbl_events_n);
	{
		char psi_sym[] = "psi_system";
		__u64 addr = 0;

		if (!bpf_kallsyms_lookup_name(psi_sym, sizeof(psi_sym), 0, &addr))
			psi_system = addr;
	}
	return 0;
}
