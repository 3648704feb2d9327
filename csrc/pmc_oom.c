// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * OOM kill events: memcg_oom's ring buffer consumed into a growing buffer.
 * Compiled as part of pmc_shim.c (which includes this file) for its libbpf
 * log capture.
 */
#include "pmc_oom.h"
#include "memcg_oom.skel.h"

struct pmc_oom {
	struct memcg_oom *skel;
	struct ring_buffer *rb;
	char *buf;
	size_t len, cap;
	unsigned int count;	/* events in buf */
	unsigned long long dropped;	/* samples the buffer could not grow for */
	int method;		/* enum pmc_oom_method */
};

static void oom_unload(struct pmc_oom *oom)
{
	ring_buffer__free(oom->rb);
	oom->rb = NULL;
	memcg_oom__destroy(oom->skel);
	oom->skel = NULL;
}

void pmc_oom_destroy(struct pmc_oom *oom)
{
	if (!oom)
		return;
	oom_unload(oom);	/* the skeleton's destroy detaches the programs */
	free(oom->buf);
	free(oom);
}

static int oom_page_shift(unsigned long long page_size)
{
	int shift = 0;

	while ((1ULL << shift) < page_size && shift < 63)
		shift++;
	return (1ULL << shift) == page_size && shift >= 10 ? shift : -EINVAL;
}

/* A sample into the buffer. libbpf consumes a sample whatever the
 * callback returns, so one the buffer cannot grow for is counted as lost
 * (pmc_oom_lost), never dropped silently. */
static int oom_sample(void *ctx, void *data, size_t size)
{
	struct pmc_oom *oom = ctx;
	size_t need = (4 + size + 7) & ~(size_t)7;
	unsigned int len32 = (unsigned int)size;

	if (oom->len + need > oom->cap) {
		size_t cap = oom->cap ? oom->cap : 65536;
		char *p;

		while (cap < oom->len + need)
			cap *= 2;
		p = realloc(oom->buf, cap);
		if (!p) {
			oom->dropped++;
			return 0;
		}
		oom->buf = p;
		oom->cap = cap;
	}
	memcpy(oom->buf + oom->len, &len32, 4);
	memcpy(oom->buf + oom->len + 4, data, size);
	memset(oom->buf + oom->len + 4 + size, 0, need - 4 - size);
	oom->len += need;
	oom->count++;
	return 0;
}

/* the programs of each way (enum pmc_oom_method) */
static void oom_select(struct memcg_oom *skel, int method)
{
	bool kp = method == PMC_OOM_KPROBES;

	bpf_program__set_autoload(skel->progs.pmc_oom_begin, kp);
	bpf_program__set_autoload(skel->progs.pmc_oom_kill_enter, kp);
	bpf_program__set_autoload(skel->progs.pmc_oom_kill_exit, kp);
	bpf_program__set_autoload(skel->progs.pmc_oom_victim, kp);
	bpf_program__set_autoload(skel->progs.pmc_oom_victim_tp, !kp);
	bpf_program__set_autoload(skel->progs.pmc_oom_signal_tp, !kp);
}

/* Whether the oom:mark_victim tracepoint passes the task (its BTF
 * prototype: ctx, task, uid), as the tracepoint program reads it. */
static int mark_victim_takes_task(void)
{
	const struct btf_type *t;
	struct btf *btf = btf__load_vmlinux_btf();
	int id, ok = 0;

	if (!btf)
		return 0;
	id = btf__find_by_name_kind(btf, "btf_trace_mark_victim", BTF_KIND_TYPEDEF);
	if (id > 0) {
		t = btf__type_by_id(btf, id);
		t = t ? btf__type_by_id(btf, t->type) : NULL;	/* pointer */
		t = t && btf_is_ptr(t) ? btf__type_by_id(btf, t->type) : NULL;
		if (t && btf_is_func_proto(t) && btf_vlen(t) == 3) {
			const struct btf_param *p = btf_params(t);
			const struct btf_type *arg = btf__type_by_id(btf, p[1].type);

			arg = arg && btf_is_ptr(arg) ? btf__type_by_id(btf, arg->type) : NULL;
			ok = arg && btf_is_struct(arg) &&
			     strcmp(btf__name_by_offset(btf, arg->name_off), "task_struct") == 0;
		}
	}
	btf__free(btf);
	return ok;
}

static int oom_load_method(struct pmc_oom *oom, int method, int shift,
			   unsigned long long ring_bytes)
{
	int err = 0;

	oom->skel = memcg_oom__open();
	if (!oom->skel)
		return -errno;
	oom_select(oom->skel, method);
	err = bpf_map__set_max_entries(oom->skel->maps.events, (__u32)ring_bytes);
	if (err)
		return err;
	oom->skel->rodata->page_shift = (unsigned int)shift;
	if (method == PMC_OOM_TRACEPOINT && !mark_victim_takes_task())
		return -ENOTSUP;
	if (!err)
		err = memcg_oom__load(oom->skel);
	if (!err)
		err = memcg_oom__attach(oom->skel);
	if (!err) {
		oom->rb = ring_buffer__new(bpf_map__fd(oom->skel->maps.events), oom_sample, oom, NULL);
		if (!oom->rb)
			err = -errno;
	}
	if (!err)
		oom->method = method;
	return err;
}

int pmc_oom_load(unsigned long long page_size, unsigned long long ring_bytes,
		 struct pmc_oom **out, char *log, size_t log_size)
{
	struct pmc_oom *oom;
	int shift = oom_page_shift(page_size);
	int err;

	*out = NULL;
	if (shift < 0)
		return shift;
	/* the kernel takes a ring of a power of two pages, and its size is a u32 */
	if (ring_bytes < page_size || (ring_bytes & (ring_bytes - 1)) ||
	    ring_bytes > PMC_OOM_RING_BYTES_MAX)
		return -EINVAL;
	oom = calloc(1, sizeof(*oom));
	if (!oom)
		return -ENOMEM;
	/* kprobes first: they also give the OOM's side (struct oom_control) */
	log_begin(log, log_size);
	err = oom_load_method(oom, PMC_OOM_KPROBES, shift, ring_bytes);
	if (err) {
		oom_unload(oom);
		static const char next[] = "\n(kprobes failed: trying the oom:mark_victim tracepoint)\n";

		log_append(next, strlen(next));
		err = oom_load_method(oom, PMC_OOM_TRACEPOINT, shift, ring_bytes);
		if (err == -ENOTSUP) {
			static const char why[] = "oom:mark_victim does not pass the task on this kernel\n";

			log_append(why, strlen(why));
		}
	}
	log_end();
	if (err) {
		pmc_oom_destroy(oom);
		return err < 0 ? err : -EINVAL;
	}
	*out = oom;
	return 0;
}

int pmc_oom_method(const struct pmc_oom *oom)
{
	return oom->method;
}

int pmc_oom_fd(const struct pmc_oom *oom)
{
	return ring_buffer__epoll_fd(oom->rb);
}

int pmc_oom_consume(struct pmc_oom *oom)
{
	int n = ring_buffer__consume(oom->rb);

	return n < 0 ? n : (int)oom->count;
}

const void *pmc_oom_buffer(const struct pmc_oom *oom, size_t *len)
{
	*len = oom->len;
	return oom->buf;
}

void pmc_oom_clear(struct pmc_oom *oom)
{
	oom->len = 0;
	oom->count = 0;
}

unsigned long long pmc_oom_seen(const struct pmc_oom *oom)
{
	return __atomic_load_n(&oom->skel->bss->state.seen, __ATOMIC_RELAXED);
}

unsigned long long pmc_oom_lost(const struct pmc_oom *oom)
{
	return __atomic_load_n(&oom->skel->bss->state.lost, __ATOMIC_RELAXED) + oom->dropped;
}
