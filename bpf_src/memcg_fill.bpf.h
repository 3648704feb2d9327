/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * memcg_fill.bpf.h: one record of the selected memcg stats for one cgroup,
 * shared by the programs that produce records (memcg_iter.bpf.c: iterator
 * sessions; memcg_fetch.bpf.c: one cgroup per BPF_PROG_RUN). Types and
 * inline functions only: each program defines its own selection (`sel`)
 * and maps.
 */
#ifndef PMC_MEMCG_FILL_BPF_H
#define PMC_MEMCG_FILL_BPF_H

#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "memcg_record.h"

/* The selection: which stats, read how. Each program that includes this
 * defines it in its .rodata, where the loader sets it before load. */
extern const volatile struct pmc_selection sel;

#define PMC_ARRAY_MAX	128	/* longest state[]/events[] copied whole */

/* A record with room for every value: the first PMC_RECORD_SIZE(nr_stats)
 * bytes are what readers get. */
struct pmc_out {
	struct pmc_record hdr;
	__u64 values[PMC_MAX_STATS];
};

/* Where a name is copied to be hashed: sized memory, as a global
 * function's pointer argument must be. */
struct pmc_name_buf {
	__u64 words[PMC_NAME_MAX / 8];
};

/* What a fill reads the kernel's arrays and names into: not part of the
 * record, so that a record can be filled where the reader finds it. */
struct pmc_tmp {
	struct pmc_name_buf name;
	__u64 state[PMC_ARRAY_MAX];
	__u64 events[PMC_ARRAY_MAX];
	__u64 memev[PMC_ARRAY_MAX / 4];
};

struct pmc_scratch {
	struct pmc_out rec;
	struct pmc_tmp tmp;
};

/* The map type of a program's scratch space (a record is too large for the
 * BPF stack): one entry per CPU. */
struct pmc_scratch_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_scratch);
};

/* Linux 7.0+ (mm/bpf_memcontrol.c). Weak: unresolved where absent; every
 * call sits behind `sel.kfuncs`, which the loader leaves at NONE there, so the
 * verifier removes them as dead code. */
extern struct mem_cgroup *bpf_get_mem_cgroup(struct cgroup_subsys_state *css) __ksym __weak;
extern void bpf_put_mem_cgroup(struct mem_cgroup *memcg) __ksym __weak;
extern void bpf_mem_cgroup_flush_stats(struct mem_cgroup *memcg) __ksym __weak;	/* sleepable */
extern unsigned long bpf_mem_cgroup_page_state(struct mem_cgroup *memcg, int idx) __ksym __weak;
extern unsigned long bpf_mem_cgroup_vm_events(struct mem_cgroup *memcg,
					      enum vm_event_item event) __ksym __weak;
extern unsigned long bpf_mem_cgroup_memory_events(struct mem_cgroup *memcg,
						  enum memcg_memory_event event) __ksym __weak;
extern unsigned long bpf_mem_cgroup_usage(struct mem_cgroup *memcg) __ksym __weak;

/* Linux 6.2+: a pointer of any BTF type, to read (faults read as 0). Weak,
 * and called only behind sel.direct_loads. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The seed's RFC patch (mm/memcontrol.c, never merged), for kernels that
 * carry it. Same gating. */
extern void memcg_flush_stats(struct cgroup *cgrp) __ksym __weak;
extern unsigned long memcg_node_stat_fetch(struct cgroup *cgrp,
					   enum node_stat_item item) __ksym __weak;
extern unsigned long memcg_stat_fetch(struct cgroup *cgrp,
				      enum memcg_stat_item item) __ksym __weak;
extern unsigned long memcg_vm_event_fetch(struct cgroup *cgrp,
					  enum vm_event_item item) __ksym __weak;

/* direct: addr is a field of a bpf_rdonly_cast pointer, a plain load */
static __always_inline __u64 read_u64(const void *addr, bool *ok, bool direct)
{
	__u64 v = 0;

	if (direct) {
		*ok = true;
		return *(const __u64 *)addr;
	}
	*ok = bpf_probe_read_kernel(&v, sizeof(v), addr) == 0;
	return v;
}

static __always_inline __u64 read_counter(struct mem_cgroup *memcg, __u32 which, bool *ok,
					  bool direct)
{
	struct page_counter *pc;
	bool swap = (which >= PMC_CTR_SWAP_USAGE && which <= PMC_CTR_SWAP_FAILCNT) ||
		    which == PMC_CTR_SWAP_HIGH;

	pc = swap ? &memcg->swap : &memcg->memory;
	switch (which) {
	case PMC_CTR_MEMORY_USAGE:
	case PMC_CTR_SWAP_USAGE:
		return read_u64(__builtin_preserve_access_index(&pc->usage.counter), ok, direct);
	case PMC_CTR_MEMORY_PEAK:
	case PMC_CTR_SWAP_PEAK:
		return read_u64(__builtin_preserve_access_index(&pc->watermark), ok, direct);
	case PMC_CTR_MEMORY_MAX:
	case PMC_CTR_SWAP_MAX:
		return read_u64(__builtin_preserve_access_index(&pc->max), ok, direct);
	case PMC_CTR_MEMORY_FAILCNT:
	case PMC_CTR_SWAP_FAILCNT:
		return read_u64(__builtin_preserve_access_index(&pc->failcnt), ok, direct);
	/* protections and limits */
	case PMC_CTR_MEMORY_MIN:
		return read_u64(__builtin_preserve_access_index(&pc->min), ok, direct);
	case PMC_CTR_MEMORY_LOW:
		return read_u64(__builtin_preserve_access_index(&pc->low), ok, direct);
	case PMC_CTR_MEMORY_HIGH:
	case PMC_CTR_SWAP_HIGH:
		return read_u64(__builtin_preserve_access_index(&pc->high), ok, direct);
	}
	*ok = false;
	return 0;
}

/* The compiler may not move what uses var above this point: a field's
 * address computed from it stays behind the field's existence check
 * (hoisted out of the record's loop, a missing field's failed relocation
 * would run unconditionally and the program would not load). */
#define PMC_OPAQUE(var) asm volatile("" : "+r"(var))

/*
 * A scalar field of the memcg or of its cgroup (enum pmc_field), where this
 * kernel's BTF has it: soft_limit is gone where CONFIG_MEMCG_V1 is off,
 * zswap_max where CONFIG_ZSWAP is. Each existence check is a constant after
 * relocation, so a missing field's failed relocation is dead code.
 */
static __always_inline __u64 read_field(struct cgroup *cgrp, struct mem_cgroup *memcg,
					__u32 which, bool *ok, bool direct)
{
	*ok = false;
	switch (which) {
	case PMC_FIELD_SOFT_LIMIT:
		if (!bpf_core_field_exists(memcg->soft_limit))
			return 0;
		PMC_OPAQUE(memcg);
		return read_u64(__builtin_preserve_access_index(&memcg->soft_limit), ok, direct);
	case PMC_FIELD_ZSWAP_MAX:
		if (!bpf_core_field_exists(memcg->zswap_max))
			return 0;
		PMC_OPAQUE(memcg);
		return read_u64(__builtin_preserve_access_index(&memcg->zswap_max), ok, direct);
	case PMC_FIELD_OOM_GROUP: {
		bool group = false;

		if (!bpf_core_field_exists(memcg->oom_group))
			return 0;
		PMC_OPAQUE(memcg);
		if (direct) {
			*ok = true;
			return memcg->oom_group;
		}
		*ok = bpf_core_read(&group, sizeof(group), &memcg->oom_group) == 0;
		return group;
	}
	/* cgrp is a BTF pointer in every program: plain loads */
	case PMC_FIELD_NR_DESCENDANTS:
		if (!bpf_core_field_exists(cgrp->nr_descendants))
			return 0;
		PMC_OPAQUE(cgrp);
		*ok = true;
		return (__u32)cgrp->nr_descendants;
	case PMC_FIELD_NR_DYING_DESCENDANTS:
		if (!bpf_core_field_exists(cgrp->nr_dying_descendants))
			return 0;
		PMC_OPAQUE(cgrp);
		*ok = true;
		return (__u32)cgrp->nr_dying_descendants;
	}
	return 0;
}

/* --- pressure (PSI) --- */
/*
 * One value of the cgroup's psi group as memory.pressure prints it
 * (kernel/sched/psi.c psi_show): field PMC_PSI_TOTAL is total[] item idx,
 * ns -> us; PMC_PSI_AVG is avg[] item idx, fixed point -> hundredths of a
 * percent, LOAD_INT * 100 + LOAD_FRAC. Both as of the group's last
 * aggregation (its averaging work, about every 2 s while the group is
 * active, or a read of one of its pressure files): the program does not
 * aggregate. No group (PSI off; or the root where the loader found no
 * psi_system) or cgroup.pressure 0 (group->enabled, the file hidden):
 * unavailable, and the record says PMC_REC_NO_PSI.
 */
#define PMC_PSI_FSHIFT	11	/* include/linux/sched/loadavg.h FSHIFT */
static __always_inline __u64 read_pressure(struct pmc_out *rec, struct cgroup *cgrp,
					   __u32 field, __u32 idx, bool *ok)
{
	struct psi_group *psi;
	__u8 enabled = 0;
	__u64 v = 0;
	__u32 len, off;

	*ok = false;
	if (!bpf_core_field_exists(struct cgroup, psi) ||
	    !bpf_core_field_exists(struct psi_group, enabled) ||
	    !bpf_core_field_exists(struct psi_group, total) ||
	    !bpf_core_field_exists(struct psi_group, avg))
		return 0;
	/* cgroup_psi(): the root (kernfs ino 1) has the system's group; its
	 * cgroup->psi stays NULL. (v1 roots are ino 1 too: the loader serves
	 * pressure on cgroup v2 only.) */
	if (cgrp->kn->id == 1)
		psi = (struct psi_group *)sel.psi_system;
	else
		psi = BPF_CORE_READ(cgrp, psi);
	if (!psi || bpf_core_read(&enabled, sizeof(enabled), &psi->enabled) || !enabled) {
		rec->hdr.flags |= PMC_REC_NO_PSI;
		return 0;
	}
	if (field == PMC_PSI_TOTAL) {
		len = bpf_core_field_size(struct psi_group, total) / sizeof(__u64);
		off = bpf_core_field_offset(struct psi_group, total);
	} else {
		len = bpf_core_field_size(struct psi_group, avg) / sizeof(unsigned long);
		off = bpf_core_field_offset(struct psi_group, avg);
	}
	if (idx >= len || bpf_probe_read_kernel(&v, sizeof(v), (void *)psi + off + idx * 8))
		return 0;
	*ok = true;
	if (field == PMC_PSI_TOTAL)
		return v / 1000;
	return (v >> PMC_PSI_FSHIFT) * 100 +
	       (((v & ((1 << PMC_PSI_FSHIFT) - 1)) * 100) >> PMC_PSI_FSHIFT);
}

/* --- NUMA --- */
/*
 * One memory.numa_stat value of the memcg (passed as an address: a trusted,
 * a read-only cast or a probe-read pointer alike): the per-node stats of
 * node `node` (memcg->nodeinfo[node]->lruvec_stats), state[slot] or with
 * local state_local[slot], summed over `run` slots from slot (cgroup v1's
 * sums of LRU lists). Each slot is clamped at 0 before the sum, as the
 * kernel's lruvec_page_state() does. The loader gives only nodes with
 * memory (each has its nodeinfo), and slots its resolution proved; a slot
 * past this kernel's array reads nothing.
 */
static __always_inline __u64 read_numa(__u64 memcg, __u32 node, __u32 slot, __u32 run,
				       bool local, bool *ok)
{
	__u64 pn = 0, stats = 0, sum = 0;
	__u32 len, off, j;

	*ok = false;
	if (run == 0)
		run = 1;
	if (node >= 1024 || bpf_probe_read_kernel(&pn, sizeof(pn), (void *)(memcg +
			bpf_core_field_offset(struct mem_cgroup, nodeinfo) + node * 8)) || !pn)
		return 0;
	if (bpf_core_field_exists(struct mem_cgroup_per_node, lruvec_stats)) {
		PMC_OPAQUE(pn);
		if (bpf_probe_read_kernel(&stats, sizeof(stats), (void *)(pn +
				bpf_core_field_offset(struct mem_cgroup_per_node, lruvec_stats))))
			return 0;
	} else if (bpf_core_field_exists(struct mem_cgroup_per_node___embedded, lruvec_stats)) {
		PMC_OPAQUE(pn);
		stats = pn + bpf_core_field_offset(struct mem_cgroup_per_node___embedded, lruvec_stats);
	}
	if (!stats)
		return 0;
	if (local) {
		if (!bpf_core_field_exists(struct lruvec_stats, state_local))
			return 0;
		PMC_OPAQUE(stats);
		off = bpf_core_field_offset(struct lruvec_stats, state_local);
		len = bpf_core_field_size(struct lruvec_stats, state_local) / sizeof(long);
	} else {
		off = bpf_core_field_offset(struct lruvec_stats, state);
		len = bpf_core_field_size(struct lruvec_stats, state) / sizeof(long);
	}
	if (slot >= len || run > len - slot)
		return 0;
	for (j = 0; j < PMC_SPEC_RUN_MASK; j++) {
		long v = 0;

		if (j >= run)
			break;
		if (bpf_probe_read_kernel(&v, sizeof(v), (void *)(stats + off + (slot + j) * 8)))
			return 0;
		if (v > 0)
			sum += v;
	}
	*ok = true;
	return sum;
}

/* --- pressure (PSI) --- */
/* The pressure values of a cgroup without a memory css: a psi group is the
 * cgroup's own (cgroup core), whichever controllers it has. */
static __always_inline void fill_pressure_only(struct pmc_out *rec, struct cgroup *cgrp)
{
	__u32 i;

	for (i = 0; i < PMC_MAX_STATS; i++) {
		bool ok = false;
		__u64 v;

		if (i >= sel.nr_stats)
			break;
		if (sel.specs[i].kind != PMC_KIND_PRESSURE)
			continue;
		v = read_pressure(rec, cgrp, sel.specs[i].slot, sel.specs[i].item, &ok);
		if (!ok)
			continue;
		rec->values[i & (PMC_MAX_STATS - 1)] = v;
		rec->hdr.valid[(i >> 6) & 1] |= 1ULL << (i & 63);
	}
}

/*
 * Copy len longs at src into dst (at most max): one helper call for a whole
 * kernel array instead of one per stat. Returns how many longs were copied.
 */
static __always_inline __u32 copy_array(__u64 *dst, __u32 max, const void *src, __u32 len)
{
	__u32 size = (len < max ? len : max) * sizeof(__u64);

	if (!src || !size || size > max * sizeof(__u64))
		return 0;
	return bpf_probe_read_kernel(dst, size, src) ? 0 : size / sizeof(__u64);
}

/* State and events through the RFC kfuncs: memory.stat's own unit. */
static __always_inline __u64 rfc_fetch(struct cgroup *cgrp, __u32 kind, __u32 item, __u32 flags)
{
	if (kind == PMC_KIND_EVENT)
		return memcg_vm_event_fetch(cgrp, item);
	if (flags & PMC_SPEC_MEMCG_ITEM)
		return memcg_stat_fetch(cgrp, item);
	return memcg_node_stat_fetch(cgrp, item);
}

/*
 * Fill rec->values for one memcg through CO-RE reads of struct mem_cgroup
 * (on kernels with the RFC kfuncs, state and events come from those):
 * each kernel array copied whole into tmp, or with sel.direct_loads each value
 * loaded where it is.
 */
static __always_inline void fill_core(struct pmc_out *rec, struct pmc_tmp *tmp,
				      struct cgroup *cgrp, struct mem_cgroup *memcg, bool is_root)
{
	bool direct = sel.direct_loads;
	struct memcg_vmstats *vmstats;
	__u32 state_len = bpf_core_field_size(struct memcg_vmstats, state) / sizeof(long);
	__u32 events_len = bpf_core_field_size(struct memcg_vmstats, events) / sizeof(long);
	__u32 memev_len = bpf_core_field_size(struct mem_cgroup, memory_events) / sizeof(long);
	__u32 state_n = 0, events_n = 0, memev_n = 0;
	__u32 state_off, events_off, memev_off;
	__u32 i;

	if (direct) {
		memcg = bpf_rdonly_cast(memcg, bpf_core_type_id_kernel(struct mem_cgroup));
		vmstats = memcg->vmstats;
	} else {
		vmstats = BPF_CORE_READ(memcg, vmstats);
	}
	if (!vmstats)
		rec->hdr.flags |= PMC_REC_NO_VMSTATS;
	if (sel.local_stats) {
		/* state_local[]/events_local[] came in 6.2; before, local values
		 * were per-CPU sums and the loader marks them unavailable. The
		 * offsets sit behind the existence check so that their failed
		 * relocations are dead code on such kernels. */
		if (bpf_core_field_exists(struct memcg_vmstats, state_local)) {
			state_off = bpf_core_field_offset(struct memcg_vmstats, state_local);
			events_off = bpf_core_field_offset(struct memcg_vmstats, events_local);
		} else {
			vmstats = 0;
			state_off = events_off = 0;
		}
		memev_off = bpf_core_field_offset(struct mem_cgroup, memory_events_local);
	} else {
		state_off = bpf_core_field_offset(struct memcg_vmstats, state);
		events_off = bpf_core_field_offset(struct memcg_vmstats, events);
		memev_off = bpf_core_field_offset(struct mem_cgroup, memory_events);
	}
	if (direct) {
		state_n = vmstats ? state_len : 0;
		events_n = vmstats ? events_len : 0;
		memev_n = memev_len;
	} else {
		if (sel.need_state && vmstats)
			state_n = copy_array(tmp->state, PMC_ARRAY_MAX, (void *)vmstats + state_off,
					     state_len);
		if (sel.need_events && vmstats)
			events_n = copy_array(tmp->events, PMC_ARRAY_MAX,
					      (void *)vmstats + events_off, events_len);
		if (sel.need_memev)
			memev_n = copy_array(tmp->memev, PMC_ARRAY_MAX / 4, (void *)memcg + memev_off,
					     memev_len);
	}

	for (i = 0; i < PMC_MAX_STATS; i++) {
		__u32 kind, slot, flags;
		__u64 scale, v = 0;
		bool ok = false;

		if (i >= sel.nr_stats)
			break;
		kind = sel.specs[i].kind;
		slot = sel.specs[i].slot;
		flags = sel.specs[i].flags;
		scale = sel.specs[i].scale;

		switch (kind) {
		case PMC_KIND_STATE:
		case PMC_KIND_EVENT:
			if (sel.kfuncs == PMC_KFUNCS_RFC && !sel.local_stats) {
				v = rfc_fetch(cgrp, kind, sel.specs[i].item, flags);
				ok = true;
				break;
			}
			/* direct: slot is a constant of .rodata to the verifier, so
			 * each load is at a fixed offset it can check */
			if (kind == PMC_KIND_EVENT) {
				ok = slot < events_n;
				if (ok && direct)
					v = *(const __u64 *)((void *)vmstats + events_off + slot * 8);
				else
					v = tmp->events[slot & (PMC_ARRAY_MAX - 1)];
				break;
			}
			ok = slot < state_n;
			if (ok && direct)
				v = *(const __u64 *)((void *)vmstats + state_off + slot * 8);
			else
				v = tmp->state[slot & (PMC_ARRAY_MAX - 1)];
			break;
		case PMC_KIND_MEMEVENT:
			ok = slot < memev_n;
			if (ok && direct)
				v = *(const __u64 *)((void *)memcg + memev_off + slot * 8);
			else
				v = tmp->memev[slot & (PMC_ARRAY_MAX / 4 - 1)];
			break;
		case PMC_KIND_COUNTER:
			/* The root memcg's usage files show global vmstat
			 * approximations (mem_cgroup_usage), not its counter:
			 * leave them unavailable rather than different. */
			if (is_root && (slot == PMC_CTR_MEMORY_USAGE || slot == PMC_CTR_SWAP_USAGE))
				break;
			v = read_counter(memcg, slot, &ok, direct);
			break;
		case PMC_KIND_FIELD:
			v = read_field(cgrp, memcg, slot, &ok, direct);
			break;
		/* --- pressure (PSI) --- */
		case PMC_KIND_PRESSURE:
			v = read_pressure(rec, cgrp, slot, sel.specs[i].item, &ok);
			break;
		/* --- NUMA --- */
		case PMC_KIND_NUMA:
			v = read_numa((__u64)memcg, sel.specs[i].item, slot,
				      (flags >> PMC_SPEC_RUN_SHIFT) & PMC_SPEC_RUN_MASK,
				      sel.local_stats, &ok);
			break;
		}
		if (!ok) {
			rec->values[i & (PMC_MAX_STATS - 1)] = 0;
			continue;
		}
		/* memcg_page_state() reports a transiently negative sum as 0 */
		if ((flags & PMC_SPEC_SIGNED) && (long)v < 0)
			v = 0;
		rec->values[i & (PMC_MAX_STATS - 1)] = v * scale;
		rec->hdr.valid[(i >> 6) & 1] |= 1ULL << (i & 63);
	}
}

/* Fill rec->values through the Linux 7.0+ kfuncs; flush first if asked. */
static __always_inline void fill_kfunc(struct pmc_out *rec, struct cgroup *cgrp,
				       bool is_root, bool flush)
{
	struct mem_cgroup *memcg = bpf_get_mem_cgroup(&cgrp->self);
	__u32 i;

	if (!memcg) {
		rec->hdr.flags |= PMC_REC_NO_MEMCG;
		fill_pressure_only(rec, cgrp);
		return;
	}
	if (flush)
		bpf_mem_cgroup_flush_stats(memcg);
	for (i = 0; i < PMC_MAX_STATS; i++) {
		__u64 v = (unsigned long)-1;

		if (i >= sel.nr_stats)
			break;
		switch (sel.specs[i].kind) {
		case PMC_KIND_STATE:
			v = bpf_mem_cgroup_page_state(memcg, sel.specs[i].item);
			break;
		case PMC_KIND_EVENT:
			v = bpf_mem_cgroup_vm_events(memcg, sel.specs[i].item);
			break;
		case PMC_KIND_MEMEVENT:
			v = bpf_mem_cgroup_memory_events(memcg, sel.specs[i].item);
			break;
		case PMC_KIND_COUNTER: {
			__u32 slot = sel.specs[i].slot;
			bool ok;

			/* the root's usage is a global approximation, as in fill_core */
			if (is_root && (slot == PMC_CTR_MEMORY_USAGE || slot == PMC_CTR_SWAP_USAGE))
				break;
			if (slot == PMC_CTR_MEMORY_USAGE) {
				v = bpf_mem_cgroup_usage(memcg);
				break;
			}
			/* no kfunc for the other page-counter fields: CO-RE */
			v = read_counter(memcg, slot, &ok, false);
			if (!ok)
				v = (unsigned long)-1;
			break;
		}
		case PMC_KIND_FIELD: {
			bool ok;

			/* no kfunc serves these either: CO-RE */
			v = read_field(cgrp, memcg, sel.specs[i].slot, &ok, false);
			if (!ok)
				v = (unsigned long)-1;
			break;
		}
		/* --- pressure (PSI): no kfunc reads it; CO-RE as in fill_core --- */
		case PMC_KIND_PRESSURE: {
			bool ok;

			v = read_pressure(rec, cgrp, sel.specs[i].slot, sel.specs[i].item, &ok);
			if (!ok)
				v = (unsigned long)-1;
			break;
		}
		/* --- NUMA: no kfunc reads per-node stats; CO-RE as in fill_core --- */
		case PMC_KIND_NUMA: {
			bool ok;

			v = read_numa((__u64)memcg, sel.specs[i].item, sel.specs[i].slot,
				      (sel.specs[i].flags >> PMC_SPEC_RUN_SHIFT) & PMC_SPEC_RUN_MASK,
				      false, &ok);
			if (!ok)
				v = (unsigned long)-1;
			break;
		}
		}
		/* (unsigned long)-1: the kernel does not track this item */
		if (v == (unsigned long)-1)
			continue;
		rec->values[i & (PMC_MAX_STATS - 1)] = v * sel.specs[i].scale;
		rec->hdr.valid[(i >> 6) & 1] |= 1ULL << (i & 63);
	}
	bpf_put_mem_cgroup(memcg);
}

/* Fold the memcg's pending per-CPU updates into its totals, as a read of
 * memory.stat does first (only in the sleepable programs). */
static __always_inline void flush_memcg(struct cgroup *cgrp)
{
	struct mem_cgroup *memcg;

	if (sel.kfuncs == PMC_KFUNCS_RFC) {
		memcg_flush_stats(cgrp);
	} else if (sel.kfuncs == PMC_KFUNCS_MEMCG) {
		memcg = bpf_get_mem_cgroup(&cgrp->self);
		if (memcg) {
			bpf_mem_cgroup_flush_stats(memcg);
			bpf_put_mem_cgroup(memcg);
		}
	}
}

/*
 * FNV-1a of the NUL-terminated kernel string at address `name` (kernfs
 * names), copied into buf on the way; 0 if it cannot be read.
 *
 * A global function (neither static nor inlined), on purpose: the verifier
 * checks it once, on its own, instead of once at every call site, and
 * path_hash() calls it at each of up to PMC_PATH_MAX_DEPTH levels: inlined,
 * that nested loop would be walked in full at every level, and the
 * verifier's time and kernel memory go with what it walks. Hence the scalar
 * address (a global function takes no kernel pointer before 6.8's
 * __arg_trusted) and the probe read.
 */
__noinline __u64 pmc_name_hash(struct pmc_name_buf *buf, __u64 name)
{
	__u64 h = PMC_FNV_OFFSET;
	long n;
	__u32 i;

	if (!buf)
		return 0;
	n = bpf_probe_read_kernel_str(buf->words, sizeof(buf->words), (const void *)name);
	if (n <= 0)
		return 0;
	for (i = 0; i < PMC_NAME_MAX / 8; i++) {
		long left = n - i * 8;
		__u64 w;

		if (left <= 0)
			break;
		w = buf->words[i];
		if (left < 8)
			w &= (1ULL << (left * 8)) - 1;	/* bytes past the NUL are stale */
		h = (h ^ w) * PMC_FNV_PRIME;
	}
	return h;
}

static __always_inline __u64 name_hash(struct pmc_tmp *tmp, struct kernfs_node *kn)
{
	/* a probe read, not a load: a load of kn->name is a pointer to the
	 * verifier, which a global function does not take */
	return pmc_name_hash(&tmp->name, (__u64)BPF_CORE_READ(kn, name));
}

/*
 * Name hashes of the cgroups that one run has met, by level: a run that
 * reads many cgroups reads their common ancestors' names once. Keyed by
 * kernfs id, which is never reused; a run clears it first, so a hash is
 * never older than the run. (A rename during the run: the path is read
 * name by name without a lock anyway, and a record proves the path it had
 * while the run read it.)
 */
struct pmc_name_cache {
	__u64 id[PMC_PATH_MAX_DEPTH];
	__u64 hash[PMC_PATH_MAX_DEPTH];
};

/*
 * Hash of the path from the hierarchy root: the name hashes of the cgroup and
 * its ancestors below the root, leaf first. Read in the same walk as the
 * stats (cgroup_mutex held, which rename takes too), it proves that the
 * record belongs to the path the reader asked for. 0: deeper than we walk.
 * names: a run's cache of name hashes, or NULL.
 */
static __always_inline __u64 path_hash(struct pmc_tmp *tmp, struct pmc_name_cache *names,
				       struct cgroup *cgrp)
{
	__u64 h = PMC_FNV_OFFSET, nh, id;
	__u32 depth, at;

	for (depth = 0; depth < PMC_PATH_MAX_DEPTH; depth++) {
		struct cgroup_subsys_state *parent = cgrp->self.parent;

		if (!parent)
			return h;
		if (names) {
			id = cgrp->kn->id;
			at = cgrp->level & (PMC_PATH_MAX_DEPTH - 1);
			if (names->id[at] == id) {
				nh = names->hash[at];
			} else {
				nh = name_hash(tmp, cgrp->kn);
				names->id[at] = id;
				names->hash[at] = nh;
			}
		} else {
			nh = name_hash(tmp, cgrp->kn);
		}
		h = (h ^ nh) * PMC_FNV_PRIME;
		cgrp = parent->cgroup;
	}
	return 0;
}

/*
 * The record of one cgroup into rec: header, then every selected value
 * (each one written, so a reader never sees the previous cgroup's numbers);
 * tmp is where the kernel's arrays and names are read to on the way.
 * hash_of: what name_hash holds, the cgroup's name's hash (walks), its
 * path's (single reads), or 0 (a caller that proved the path otherwise);
 * names: a run's cache of name hashes for the path's, or NULL.
 * flush: fold pending per-CPU updates in first (sleepable programs only).
 */
enum pmc_hash_of {
	PMC_HASH_NAME,
	PMC_HASH_PATH,
	PMC_HASH_NONE,
};

static __always_inline void fill_record(struct pmc_out *rec, struct pmc_tmp *tmp,
					struct pmc_name_cache *names, struct cgroup *cgrp,
					enum pmc_hash_of hash_of, bool flush)
{
	struct cgroup_subsys_state *css, *parent;

	/* cgrp is a BTF pointer: plain loads, no helper calls */
	parent = cgrp->self.parent;
	rec->hdr.flags = 0;
	rec->hdr.valid[0] = 0;
	rec->hdr.valid[1] = 0;

	for (__u32 i = 0; i < PMC_MAX_STATS; i++) {
		if (i >= sel.nr_stats)
			break;
		rec->values[i & (PMC_MAX_STATS - 1)] = 0;
	}

	/* the kfuncs answer hierarchical values only: local ones are CO-RE */
	if (sel.kfuncs == PMC_KFUNCS_MEMCG && !sel.local_stats) {
		fill_kfunc(rec, cgrp, parent == 0, flush);
	} else {
		css = cgrp->subsys[bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id)];
		if (flush && css)
			flush_memcg(cgrp);
		if (css) {
			fill_core(rec, tmp, cgrp, (struct mem_cgroup *)css, parent == 0);
		} else {
			rec->hdr.flags |= PMC_REC_NO_MEMCG;
			fill_pressure_only(rec, cgrp);
		}
	}
	rec->hdr.cgroup_id = cgrp->kn->id;
	rec->hdr.parent_id = parent ? parent->cgroup->kn->id : 0;
	rec->hdr.level = cgrp->level;
	/* The name last: its copy is a long helper call that the CPU cannot
	 * run ahead of, so loads placed after it waited for it, and their cache
	 * misses came one after another instead of overlapping. */
	if (hash_of == PMC_HASH_PATH)
		rec->hdr.name_hash = path_hash(tmp, names, cgrp);
	else if (hash_of == PMC_HASH_NAME)
		rec->hdr.name_hash = name_hash(tmp, cgrp->kn);
	else
		rec->hdr.name_hash = 0;
}

#endif /* PMC_MEMCG_FILL_BPF_H */
