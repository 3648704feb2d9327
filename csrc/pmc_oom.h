/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * OOM kill events (bpf_src/memcg_oom.bpf.c): four tracing programs attached
 * at load, a BPF ring buffer, and the events consumed from it into a buffer
 * that the caller reads. Not thread-safe: the caller serialises every call
 * on one struct pmc_oom. Returns a negative errno on failure and leaves
 * nothing behind.
 */
#ifndef PMC_OOM_H
#define PMC_OOM_H

#include <stddef.h>
#include "memcg_oom.h"

struct pmc_oom;

/* how the kills are seen */
enum pmc_oom_method {
	PMC_OOM_KPROBES = 1,	/* oom_kill_process & co: the OOM's cgroup too */
	PMC_OOM_TRACEPOINT = 2,	/* oom:mark_victim: the victim's side alone */
};
/* Load and attach; page_size: the kernel's page size in bytes (its kB
 * figures are pages << (page_shift - 10)); ring_bytes: the ring buffer's
 * size, a power of two pages up to PMC_OOM_RING_BYTES_MAX (else -EINVAL;
 * PMC_OOM_RING_BYTES is the default). Kprobes where they attach, else the
 * tracepoint. On failure, log holds what libbpf said of both. */
int pmc_oom_load(unsigned long long page_size, unsigned long long ring_bytes,
		 struct pmc_oom **out, char *log, size_t log_size);
void pmc_oom_destroy(struct pmc_oom *oom);
int pmc_oom_method(const struct pmc_oom *oom);
/* the ring buffer's epoll fd: readable when events wait */
int pmc_oom_fd(const struct pmc_oom *oom);
/* Move every event waiting in the ring into the buffer, without blocking;
 * returns how many events the buffer now holds (those of earlier calls
 * stay until pmc_oom_clear), or -errno. */
int pmc_oom_consume(struct pmc_oom *oom);
/* The buffer: each event as a 4-byte length (native order), the event's
 * bytes, then padding to 8 bytes; *len is its size in bytes. */
const void *pmc_oom_buffer(const struct pmc_oom *oom, size_t *len);
void pmc_oom_clear(struct pmc_oom *oom);
/* kills seen since load, and kills whose event was lost: it did not fit
 * the ring, or the buffer could not grow for it */
unsigned long long pmc_oom_seen(const struct pmc_oom *oom);
unsigned long long pmc_oom_lost(const struct pmc_oom *oom);

#endif /* PMC_OOM_H */
