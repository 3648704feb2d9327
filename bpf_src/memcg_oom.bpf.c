// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_oom: one event per process the OOM killer kills, into a BPF ring
 * buffer, with what the kernel logs for it ("Killed process ...") and the
 * paths of the victim's memory cgroup and of the one whose limit was hit,
 * read here at the kill: the cgroup may be removed before userspace reads.
 *
 * mm/oom_kill.c, the same on 6.1 to 7.3 (each function is in the BTF of
 * Debian's 6.1, 6.12, 6.18 and 7.3 kernels, none inlined):
 *
 *   oom_kill_process(oc, message)        oom_lock held: one at a time
 *     __oom_kill_process(victim, ...)    the chosen task, then, for
 *                                        memory.oom.group, each member
 *       find_lock_task_mm(); no mm: "already exiting", nothing killed
 *       count OOM_KILL (vmstat and memory.events), SIGKILL
 *       mark_oom_victim(victim)          the thread that has the mm, locked
 *       pr_err("Killed process ...")
 *
 * mark_oom_victim also runs where nothing is killed (a task that is
 * exiting anyway), so an event is sent only from a mark_oom_victim called
 * inside __oom_kill_process of the oom_kill_process this thread entered:
 * then the kill happened, and exactly one event per kill is sent. The
 * oom:mark_victim tracepoint fires at the same point but its arguments
 * changed in 6.8 (6.1 passes only a pid); oom_kill_process is where
 * struct oom_control (the memcg whose limit was hit, NULL for a global
 * OOM) is at hand.
 *
 * kprobes, not fentry: fentry needs BPF trampolines, which some kernels
 * refuse (this project's CI host: EPERM at load, kprobes fine), and an OOM
 * kill is rare enough that a kprobe's cost does not matter. Every kernel
 * read is therefore a probe read (BPF_CORE_READ).
 */
#include "vmlinux_min.h"

/* the kprobe context bpf_tracing.h reads the arguments from, in the
 * kernel's own layout (and names: bpf_tracing.h takes the kernel's where
 * __VMLINUX_H__ is defined) */
#define __VMLINUX_H__
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
struct pt_regs {
	struct user_pt_regs user_regs;
} __attribute__((preserve_access_index));
#else
#error "memcg_oom.bpf.c: pt_regs of this architecture not declared"
#endif

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "memcg_record.h"
#include "memcg_oom.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum {
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* the kernel types touched here, beyond vmlinux_min.h (CO-RE relocated) */
/* CO-RE matches a field's kind: an enum in the kernel is an enum here */
enum oom_constraint { PMC_OOM_CONSTRAINT_PLACEHOLDER };

struct oom_control {
	struct mem_cgroup *memcg;
	unsigned long totalpages;
	struct task_struct *chosen;
	enum oom_constraint constraint;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup_subsys_state *subsys[16];
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct signal_struct {
	short oom_score_adj;
} __attribute__((preserve_access_index));

struct percpu_counter {
	__s64 count;
} __attribute__((preserve_access_index));

/* 6.2 on: one percpu_counter per MM_* counter */
struct mm_struct {
	unsigned long total_vm;
	atomic_long_t pgtables_bytes;
	struct percpu_counter rss_stat[4];
} __attribute__((preserve_access_index));

/* before 6.2 (6.1): atomic counters in struct mm_rss_stat */
struct mm_rss_stat {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

struct mm_struct___61 {
	struct mm_rss_stat rss_stat;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct mm_struct *mm;
	struct css_set *cgroups;
	struct signal_struct *signal;
	const struct cred *real_cred;
} __attribute__((preserve_access_index));

/* enum oom_constraint / MM_* counters: stable values on every kernel here */
#define PMC_MM_FILEPAGES	0
#define PMC_MM_ANONPAGES	1
#define PMC_MM_SHMEMPAGES	3

const volatile unsigned int page_shift = 12;

struct pmc_oom_state state;

/* The memory cgroup whose limit was hit, read when this thread entered
 * oom_kill_process (oom_lock held: one entry serves every CPU). */
struct pmc_oom_pending {
	__u64 tid;			/* bpf_get_current_pid_tgid() of that thread */
	__u32 killing;			/* inside its __oom_kill_process */
	__u32 flags;			/* PMC_OOM_MEMCG, _OOM_PATH, _OOM_COUNTER */
	__u64 cgroup_id;
	__u64 usage_kb;
	__u64 limit_kb;
	__u64 failcnt;
	__u64 totalpages;
	__u32 constraint;
	__u32 level;
	__u32 names_len;
	__u32 pad;
	char names[PMC_OOM_NAMES_MAX + PMC_OOM_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_oom_pending);
} pending SEC(".maps");

/* where an event is put together before it goes to the ring */
struct pmc_oom_scratch {
	struct pmc_oom_event ev;
	char names[2 * PMC_OOM_NAMES_MAX + PMC_OOM_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_oom_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PMC_OOM_RING_BYTES);
} events SEC(".maps");

/*
 * The names of cgrp and its ancestors below the hierarchy root, leaf first,
 * each NUL-terminated, into buf (PMC_OOM_NAMES_MAX + PMC_OOM_NAME_MAX
 * bytes). Returns the bytes written; *whole: every name up to the root
 * was read (else the path is unknown: too deep, too long, unreadable).
 * Walks css parents, as path_hash() in memcg_fill.bpf.h does.
 */
static __always_inline __u32 cgroup_names(char *buf, struct cgroup *cgrp, bool *whole)
{
	__u32 off = 0, depth;

	*whole = false;
	for (depth = 0; depth < PMC_PATH_MAX_DEPTH + 1; depth++) {
		struct cgroup_subsys_state *parent;
		const char *name;
		long n;

		if (!cgrp)
			return off;
		parent = BPF_CORE_READ(cgrp, self.parent);
		if (!parent) {
			*whole = true;
			return off;
		}
		if (off > PMC_OOM_NAMES_MAX - PMC_OOM_NAME_MAX)
			return off;
		name = BPF_CORE_READ(cgrp, kn, name);
		n = bpf_probe_read_kernel_str(buf + off, PMC_OOM_NAME_MAX, name);
		if (n <= 0)
			return off;
		off += n;
		cgrp = BPF_CORE_READ(parent, cgroup);
	}
	return off;
}

static __always_inline struct cgroup *memcg_cgroup(struct mem_cgroup *memcg)
{
	return BPF_CORE_READ(memcg, css.cgroup);
}

static __always_inline __u64 kb(__u64 pages)
{
	return pages << (page_shift - 10);
}

SEC("kprobe/oom_kill_process")
int BPF_KPROBE(pmc_oom_begin, struct oom_control *oc, const char *message)
{
	struct pmc_oom_pending *p;
	struct mem_cgroup *memcg;
	struct cgroup *cgrp;
	__u32 zero = 0;
	bool whole;

	p = bpf_map_lookup_elem(&pending, &zero);
	if (!p)
		return 0;
	p->tid = bpf_get_current_pid_tgid();
	p->killing = 0;
	p->flags = 0;
	p->cgroup_id = 0;
	p->usage_kb = p->limit_kb = p->failcnt = 0;
	p->level = 0;
	p->names_len = 0;
	p->totalpages = BPF_CORE_READ(oc, totalpages);
	p->constraint = BPF_CORE_READ(oc, constraint);
	memcg = BPF_CORE_READ(oc, memcg);
	if (!memcg)
		return 0;
	p->flags |= PMC_OOM_MEMCG;
	cgrp = memcg_cgroup(memcg);
	if (cgrp) {
		p->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
		p->level = BPF_CORE_READ(cgrp, level);
		p->names_len = cgroup_names(p->names, cgrp, &whole);
		if (whole)
			p->flags |= PMC_OOM_OOM_PATH;
	}
	/* what mem_cgroup_print_oom_meminfo logs: "memory: usage, limit, failcnt" */
	p->usage_kb = kb(BPF_CORE_READ(memcg, memory.usage.counter));
	p->limit_kb = kb(BPF_CORE_READ(memcg, memory.max));
	p->failcnt = BPF_CORE_READ(memcg, memory.failcnt);
	p->flags |= PMC_OOM_OOM_COUNTER;
	return 0;
}

static __always_inline struct pmc_oom_pending *this_threads(void)
{
	struct pmc_oom_pending *p;
	__u32 zero = 0;

	p = bpf_map_lookup_elem(&pending, &zero);
	if (!p || p->tid != bpf_get_current_pid_tgid())
		return 0;
	return p;
}

SEC("kprobe/__oom_kill_process")
int BPF_KPROBE(pmc_oom_kill_enter)
{
	struct pmc_oom_pending *p = this_threads();

	if (p)
		p->killing = 1;
	return 0;
}

SEC("kretprobe/__oom_kill_process")
int BPF_KRETPROBE(pmc_oom_kill_exit)
{
	struct pmc_oom_pending *p = this_threads();

	if (p)
		p->killing = 0;
	return 0;
}

/* an MM_* counter in pages, as get_mm_counter() reads it: before 6.2 (6.1)
 * an atomic count, exact; from 6.2 the percpu_counter's shared count,
 * without the per-CPU deltas not yet folded into it (CO-RE accessors
 * take constant indices, hence macros) */
#define RSS_PAGES_61(mm, item) \
	BPF_CORE_READ((struct mm_struct___61 *)(mm), rss_stat.count[item].counter)
#define RSS_PAGES(mm, item) BPF_CORE_READ(mm, rss_stat[item].count)
#define RSS_KB(mm, item, old) ({ __s64 __v = (old) ? RSS_PAGES_61(mm, item) : RSS_PAGES(mm, item); \
				 kb(__v > 0 ? __v : 0); })

/* The event of the kill of tsk into the ring; p: what oom_kill_process
 * said of the OOM (NULL where it is not known, the tracepoint's way). */
static __always_inline int emit(struct task_struct *tsk, struct pmc_oom_pending *p)
{
	struct pmc_oom_scratch *s;
	struct pmc_oom_event *ev;
	struct cgroup_subsys_state *css;
	struct css_set *cset;
	struct mm_struct *mm;
	__u32 zero = 0, vlen = 0, olen, size;
	bool whole, old;

	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	ev = &s->ev;
	ev->seq = __sync_fetch_and_add(&state.seen, 1) + 1;
	ev->boot_ns = bpf_ktime_get_boot_ns();
	ev->format = PMC_OOM_FORMAT_VERSION;
	ev->flags = 0;
	ev->oom_cgroup_id = ev->oom_level = ev->oom_usage_kb = ev->oom_limit_kb = 0;
	ev->oom_failcnt = ev->totalpages = ev->constraint = 0;
	olen = 0;
	if (p) {
		ev->flags = p->flags | PMC_OOM_OOM_KNOWN;
		ev->oom_cgroup_id = p->cgroup_id;
		ev->oom_level = p->level;
		ev->oom_usage_kb = p->usage_kb;
		ev->oom_limit_kb = p->limit_kb;
		ev->oom_failcnt = p->failcnt;
		ev->totalpages = p->totalpages;
		ev->constraint = p->constraint;
		olen = p->names_len;
	}
	ev->pid = BPF_CORE_READ(tsk, pid);
	ev->tgid = BPF_CORE_READ(tsk, tgid);
	ev->uid = BPF_CORE_READ(tsk, real_cred, uid.val);
	ev->oom_score_adj = (__s32)BPF_CORE_READ(tsk, signal, oom_score_adj);
	ev->comm[0] = ev->comm[1] = 0;
	bpf_probe_read_kernel_str(ev->comm, sizeof(ev->comm), &tsk->comm);

	mm = BPF_CORE_READ(tsk, mm);
	ev->total_vm_kb = ev->anon_rss_kb = ev->file_rss_kb = ev->shmem_rss_kb = 0;
	ev->pgtables_kb = 0;
	if (mm) {
		ev->flags |= PMC_OOM_HAS_MM;
		ev->total_vm_kb = kb(BPF_CORE_READ(mm, total_vm));
		old = bpf_core_type_exists(struct mm_rss_stat);
		ev->anon_rss_kb = RSS_KB(mm, PMC_MM_ANONPAGES, old);
		ev->file_rss_kb = RSS_KB(mm, PMC_MM_FILEPAGES, old);
		ev->shmem_rss_kb = RSS_KB(mm, PMC_MM_SHMEMPAGES, old);
		if (old)
			ev->flags |= PMC_OOM_RSS_EXACT;
		ev->pgtables_kb = (__u64)BPF_CORE_READ(mm, pgtables_bytes.counter) >> 10;
	}

	/* the victim's memory cgroup, as the kernel's "task_memcg=" names it */
	ev->victim_cgroup_id = 0;
	ev->victim_level = 0;
	cset = BPF_CORE_READ(tsk, cgroups);
	css = 0;
	if (cset)
		bpf_probe_read_kernel(&css, sizeof(css),
				      &cset->subsys[bpf_core_enum_value(enum cgroup_subsys_id,
									memory_cgrp_id)]);
	if (css) {
		struct cgroup *cgrp = BPF_CORE_READ(css, cgroup);

		ev->victim_cgroup_id = BPF_CORE_READ(cgrp, kn, id);
		ev->victim_level = BPF_CORE_READ(cgrp, level);
		vlen = cgroup_names(s->names, cgrp, &whole);
		if (whole)
			ev->flags |= PMC_OOM_VICTIM_PATH;
	}
	if (vlen > PMC_OOM_NAMES_MAX)
		vlen = PMC_OOM_NAMES_MAX;
	if (olen > PMC_OOM_NAMES_MAX)
		olen = PMC_OOM_NAMES_MAX;
	if (p && olen)
		bpf_probe_read_kernel(s->names + vlen, olen, p->names);
	ev->victim_names_len = vlen;
	ev->oom_names_len = olen;
	size = sizeof(*ev) + vlen + olen;
	if (size > sizeof(*s))
		size = sizeof(*s);
	if (bpf_ringbuf_output(&events, s, size, 0))
		__sync_fetch_and_add(&state.lost, 1);
	return 0;
}

SEC("kprobe/mark_oom_victim")
int BPF_KPROBE(pmc_oom_victim, struct task_struct *tsk)
{
	struct pmc_oom_pending *p = this_threads();

	if (!p || !p->killing)
		return 0;
	p->killing = 0;		/* one event per __oom_kill_process */
	return emit(tsk, p);
}

/*
 * Where kprobes do not attach (a kernel without CONFIG_KPROBES): the
 * oom:mark_victim tracepoint, (task, uid) since 6.8 and in Debian's 6.1.
 * It also fires where nothing is killed (a task that exits anyway is
 * marked); a kill is told by what __oom_kill_process does just before, in
 * the same thread with the victim's task_lock held (so on the same CPU):
 * it sends the victim SIGKILL, privately (SEND_SIG_PRIV), to its whole
 * thread group, which signal:signal_generate shows. struct oom_control is
 * out of reach here: the OOM's cgroup is unknown (PMC_OOM_OOM_KNOWN unset),
 * and mark_victim does not fire for a task marked before (a memory.oom.group
 * kill reaches the chosen victim twice; the kernel counts both, this way
 * reports one).
 */
#define PMC_SIGKILL		9
#define PMC_SEND_SIG_PRIV	1	/* (struct kernel_siginfo *)1 */

struct pmc_oom_signalled {
	__u64 tid;		/* the sender */
	__u64 task;		/* the task it sent SIGKILL to */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmc_oom_signalled);
} signalled SEC(".maps");

SEC("tp_btf/signal_generate")
int BPF_PROG(pmc_oom_signal_tp, int sig, void *info, struct task_struct *task, int group)
{
	struct pmc_oom_signalled *sg;
	__u32 zero = 0;

	if (sig != PMC_SIGKILL || (__u64)info != PMC_SEND_SIG_PRIV || !group)
		return 0;
	sg = bpf_map_lookup_elem(&signalled, &zero);
	if (sg) {
		sg->tid = bpf_get_current_pid_tgid();
		sg->task = (__u64)task;
	}
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(pmc_oom_victim_tp, struct task_struct *tsk)
{
	struct pmc_oom_signalled *sg;
	__u32 zero = 0;

	sg = bpf_map_lookup_elem(&signalled, &zero);
	if (!sg || sg->tid != bpf_get_current_pid_tgid() || sg->task != (__u64)tsk)
		return 0;	/* nothing killed: a task that exits anyway marked */
	sg->tid = sg->task = 0;
	return emit(tsk, 0);
}
