// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * PROTOTYPE driver (see README.md): one cgroup read three ways, in rounds
 * that take turns, COUNT reads each:
 *   stat-pread  pread(0) of an open memory.stat (no parsing)
 *   iter        pymemcg's iterator session (csrc/pmc_shim.c, SELF_ONLY link)
 *   sysprog     BPF_PROG_RUN of memcg_sysprog.bpf.c's `fetch` (one bpf() call)
 * and checks that the iterator and the syscall program return the same
 * cgroup and the same valid stats.
 *
 *   memcg_sysprog SPECS CGROUP COUNT ROUNDS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "pmc_shim.h"
#include "memcg_sysprog.skel.h"

#define MAX_STATS 16

struct pmc_sys_args {
	unsigned int slot, flags;
	unsigned long long cgroup_id, valid, values[MAX_STATS];
};

static char buf[65536];
static int stat_fd, link_fd, fetch_fd;
static struct pmc_sys_args args;

static void die(const char *what, int err)
{
	fprintf(stderr, "memcg_sysprog: %s: %s\n", what, strerror(err));
	exit(1);
}

static void run_stat(void)
{
	if (pread(stat_fd, buf, sizeof(buf), 0) <= 0)
		die("pread memory.stat", errno);
}

static void run_iter(void)
{
	if (pmc_read_session(link_fd, buf, sizeof(buf)) <= 0)
		die("iterator session", EIO);
}

static void run_sysprog(void)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .ctx_in = &args, .ctx_size_in = sizeof(args));

	if (bpf_prog_test_run_opts(fetch_fd, &o) || o.retval)
		die("BPF_PROG_RUN", errno);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_sys(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static const char *names[] = { "stat-pread", "iter", "sysprog" };
	static void (*runs[])(void) = { run_stat, run_iter, run_sysprog };
	static struct pmc_config cfg;
	static char log[1 << 16];
	double per[3][1000], sys[3] = {0}, t0, s0;
	char line[512], name[128], path[4096];
	struct memcg_sysprog *skel;
	struct pmc_prog *prog;
	struct pmc_record rec;
	long long count, chunk, i;
	int rounds, r, k, cg_fd, it;
	FILE *f;

	if (argc != 5)
		return fprintf(stderr, "usage: memcg_sysprog SPECS CGROUP COUNT ROUNDS\n"), 2;
	count = atoll(argv[3]);
	rounds = atoi(argv[4]);
	if (rounds < 1 || rounds > 1000 || count < rounds)
		die("COUNT or ROUNDS", EINVAL);
	chunk = count / rounds;

	f = fopen(argv[1], "r");
	if (!f)
		die(argv[1], errno);
	while (fgets(line, sizeof(line), f)) {
		struct pmc_stat_spec *s = &cfg.specs[cfg.nr_stats];

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (cfg.nr_stats >= MAX_STATS || sscanf(line, "%127s %u %u %u %u %llu", name,
				&s->kind, &s->slot, &s->item, &s->flags, &s->scale) != 6)
			die("specs file", EINVAL);
		cfg.nr_stats++;
	}
	fclose(f);
	cfg.page_size = sysconf(_SC_PAGESIZE);
	cfg.overflow_capacity = 1;

	/* the project's iterator, as bench/memcg_bench.c uses it */
	if (pmc_prog_load(&cfg, &prog, log, sizeof(log)))
		die("pmc_prog_load", EINVAL);
	cg_fd = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg_fd < 0)
		die(argv[2], errno);
	link_fd = pmc_prog_attach(prog, cg_fd, 1);
	if (link_fd < 0)
		die("pmc_prog_attach", -link_fd);
	snprintf(path, sizeof(path), "%s/memory.stat", argv[2]);
	stat_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (stat_fd < 0)
		die(path, errno);

	/* the prototype: same selection, stash the cgroup in slot 0 */
	skel = memcg_sysprog__open();
	if (!skel)
		die("open the prototype", errno);
	skel->rodata->nr_stats = cfg.nr_stats;
	memcpy((void *)skel->rodata->specs, cfg.specs, cfg.nr_stats * sizeof(cfg.specs[0]));
	if (memcg_sysprog__load(skel))
		die("load the prototype (see the verifier log above)", errno);
	{
		union bpf_iter_link_info li = { .cgroup = { .cgroup_fd = cg_fd, .order = 1 } };
		LIBBPF_OPTS(bpf_iter_attach_opts, ao, .link_info = &li, .link_info_len = sizeof(li));
		struct bpf_link *l = bpf_program__attach_iter(skel->progs.stash, &ao);

		if (!l)
			die("attach stash", errno);
		it = bpf_iter_create(bpf_link__fd(l));
		while (it >= 0 && read(it, buf, sizeof(buf)) > 0)
			;
		close(it);
		bpf_link__destroy(l);
	}
	fetch_fd = bpf_program__fd(skel->progs.fetch);

	/* same cgroup, same valid stats; values read microseconds apart */
	run_iter();
	memcpy(&rec, buf, sizeof(rec));
	run_sysprog();
	printf("iter:    id=%llu valid=%llu values=", rec.cgroup_id, rec.valid[0]);
	for (k = 0; k < (int)cfg.nr_stats; k++)
		printf("%s%llu", k ? "," : "", ((unsigned long long *)(buf + sizeof(rec)))[k]);
	printf("\nsysprog: id=%llu valid=%llu values=", args.cgroup_id, args.valid);
	for (k = 0; k < (int)cfg.nr_stats; k++)
		printf("%s%llu", k ? "," : "", args.values[k]);
	printf(" flags=%u\n", args.flags);
	if (rec.cgroup_id != args.cgroup_id || rec.valid[0] != args.valid || args.flags)
		die("the prototype disagrees with the iterator", EPROTO);

	for (k = 0; k < 3; k++)
		runs[k]();
	for (r = 0; r < rounds; r++) {
		for (k = 0; k < 3; k++) {
			s0 = cpu_sys();
			t0 = now();
			for (i = 0; i < chunk; i++)
				runs[k]();
			per[k][r] = (now() - t0) / chunk;
			sys[k] += cpu_sys() - s0;
		}
	}
	for (k = 0; k < 3; k++) {
		qsort(per[k], rounds, sizeof(double), cmp);
		printf("%-10s median %.3f us/read, best %.3f us/read, sys %.3f us/read\n", names[k],
		       per[k][rounds / 2] * 1e6, per[k][0] * 1e6, sys[k] / (chunk * rounds) * 1e6);
	}
	return 0;
}
