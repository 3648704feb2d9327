// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_bench: the C side of pymemcg's benchmark (issue 4), built on the
 * project's own loader (csrc/pmc_shim.c). It repeats the seed patch's
 * experiment, memory.stat reads against BPF iterator sessions, and times
 * tree snapshots both ways.
 *
 *   memcg_bench [-m METHODS] [-c CAPACITY] single SPECS CGROUP COUNT ROUNDS
 *   memcg_bench [-m METHODS] [-c CAPACITY] tree   SPECS ROOT   COUNT ROUNDS
 *
 * SPECS is a file of the selected stats, one per line, "name kind slot item
 * flags scale" (python -m pymemcg_bench specs writes it; '#' lines are
 * comments). COUNT operations per method in all, split into ROUNDS chunks
 * that the methods take in turn (a noisy spell of the machine then falls on
 * every method alike). -m picks methods by name, comma-separated (for
 * profiling one of them alone).
 *
 * single methods, one cgroup (COUNT reads):
 *   stat-seek   lseek(0) + read of an open memory.stat (the seed's control)
 *   stat-pread  pread(0) of an open memory.stat (one syscall fewer)
 *   bpf         one iterator session on a SELF_ONLY link made once:
 *               bpf_iter_create + read + close (pmc_read_session)
 *   bpf-fetch   one BPF_PROG_RUN of memcg_fetch on a cgroup stashed once
 *               (pmc_fetch_run), the record copied out of the mmaped map:
 *               Reader.read's path where the kernel loads it (6.4+); a
 *               "skip" line says why where it does not
 * tree methods, ROOT and every cgroup below it (COUNT snapshots):
 *   stat-walk   readdir walk, openat + read + close of every memory.stat
 *   bpf-walk    one DESCENDANTS_PRE session plus the copy of the overflow
 *               records (pmc_read_session + pmc_copy_overflow)
 * Nothing is parsed on either side, as in the seed.
 *
 * Output, one line per method, times in seconds summed over the rounds:
 *   method=NAME count=N real=S user=S sys=S units=U bytes=B rounds=S,S,...
 * units: cgroups per operation (1, or the tree's size); bytes: read per
 * operation; rounds: each round's real time per operation.
 * A line "record ..." gives the first BPF record's header and values.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "pmc_shim.h"

#define BUF_SIZE	65536	/* one read of memory.stat or one session */
#define MAX_METHODS	4
#define MAX_ROUNDS	1000

struct ctx {
	int stat_fd;			/* single: the open memory.stat */
	int link_fd;			/* the iterator link */
	int root_fd;			/* tree: the root directory */
	struct pmc_prog *prog;
	struct pmc_fetch *fetch;	/* single: NULL where memcg_fetch did not load */
	unsigned int record_size;
	char *buf;
	char *ovf;			/* tree: overflow records land here */
	size_t ovf_size;
	long long units;		/* cgroups seen by the last operation */
	long long bytes;		/* bytes read by the last operation */
};

struct method {
	const char *name;
	void (*run)(struct ctx *c);
	double real, user, sys;		/* seconds, all rounds */
	double *per_op;			/* seconds per operation, each round */
};

static void die(const char *what, int err)
{
	fprintf(stderr, "memcg_bench: %s: %s\n", what, strerror(err));
	exit(1);
}

/* --- one cgroup --- */

static void run_stat_seek(struct ctx *c)
{
	ssize_t n;

	if (lseek(c->stat_fd, 0, SEEK_SET) < 0)
		die("lseek memory.stat", errno);
	n = read(c->stat_fd, c->buf, BUF_SIZE);
	if (n <= 0)
		die("read memory.stat", n < 0 ? errno : EIO);
	c->bytes = n;
	c->units = 1;
}

static void run_stat_pread(struct ctx *c)
{
	ssize_t n = pread(c->stat_fd, c->buf, BUF_SIZE, 0);

	if (n <= 0)
		die("pread memory.stat", n < 0 ? errno : EIO);
	c->bytes = n;
	c->units = 1;
}

/* Records in buf[0..n) and how many the walk produced; dies on a bad trailer. */
static unsigned long long trailer(struct ctx *c, ssize_t n, unsigned long long *session,
				  unsigned long long *visited)
{
	struct pmc_trailer t;

	if (n < (ssize_t)sizeof(t) || (n - sizeof(t)) % c->record_size)
		die("iterator output is not whole records and a trailer", EPROTO);
	memcpy(&t, c->buf + n - sizeof(t), sizeof(t));
	if (t.magic != PMC_TRAILER_MAGIC)
		die("iterator output has no trailer", EPROTO);
	*session = t.session_id;
	*visited = t.visited;
	return (n - sizeof(t)) / c->record_size;
}

static void run_bpf(struct ctx *c)
{
	ssize_t n = pmc_read_session(c->link_fd, c->buf, BUF_SIZE);

	if (n < 0)
		die("iterator session", (int)-n);
	if ((size_t)n != c->record_size + sizeof(struct pmc_trailer))
		die("iterator session did not return one record", EPROTO);
	c->bytes = n;
	c->units = 1;
}

static void run_bpf_fetch(struct ctx *c)
{
	int err = pmc_fetch_run(c->fetch, 0);

	if (err)
		die("BPF_PROG_RUN of memcg_fetch", -err);
	memcpy(c->buf, pmc_fetch_record(c->fetch), c->record_size);
	if (((struct pmc_record *)c->buf)->flags & PMC_REC_GONE)
		die("memcg_fetch: the cgroup was removed", ENOENT);
	c->bytes = c->record_size;
	c->units = 1;
}

/* --- trees --- */

/* memory.stat of the directory dfd and of every cgroup below it; takes dfd */
static long long walk(struct ctx *c, int dfd)
{
	struct dirent *e;
	long long count = 1;
	ssize_t n;
	DIR *d;
	int fd;

	fd = openat(dfd, "memory.stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open memory.stat", errno);
	n = read(fd, c->buf, BUF_SIZE);
	if (n <= 0)
		die("read memory.stat", n < 0 ? errno : EIO);
	c->bytes += n;
	close(fd);

	d = fdopendir(dfd);
	if (!d)
		die("fdopendir", errno);
	while ((e = readdir(d))) {
		if (e->d_type != DT_DIR || !strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		fd = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			die("open a cgroup directory", errno);
		count += walk(c, fd);
	}
	closedir(d);
	return count;
}

static void run_stat_walk(struct ctx *c)
{
	int fd = openat(c->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		die("open the root", errno);
	c->bytes = 0;
	c->units = walk(c, fd);
}

static void run_bpf_walk(struct ctx *c)
{
	unsigned long long count, session, visited, extra;
	ssize_t n;
	int tries, rc;

	for (tries = 0; tries < 8; tries++) {
		n = pmc_read_session(c->link_fd, c->buf, BUF_SIZE);
		if (n < 0)
			die("iterator session", (int)-n);
		count = trailer(c, n, &session, &visited);
		if (visited == ~0ULL)
			continue;	/* another session took the bookkeeping */
		extra = visited - count;
		if (extra * c->record_size > c->ovf_size)
			die("tree larger than the overflow map (raise -c)", E2BIG);
		rc = extra ? pmc_copy_overflow(c->prog, session, c->ovf, extra) : 0;
		if (rc == -EAGAIN)
			continue;
		if (rc < 0)
			die("copy of the overflow records", -rc);
		c->units = visited;
		c->bytes = n + extra * c->record_size;
		return;
	}
	die("iterator session", EAGAIN);
}

/* --- timing --- */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void cpu(double *user, double *sys)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	*user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6;
	*sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* COUNT operations of each method in ROUNDS chunks, methods taking turns. */
static void measure(struct ctx *c, struct method *m, int nm, long long count, int rounds)
{
	long long chunk = count / rounds, i;
	double t0, u0, s0, t1, u1, s1;
	int r, k;

	for (k = 0; k < nm; k++) {
		m[k].run(c);	/* warm up: dentries, the seq buffer, caches */
		m[k].per_op = calloc(rounds, sizeof(double));
		if (!m[k].per_op)
			die("calloc", ENOMEM);
	}
	for (r = 0; r < rounds; r++) {
		for (k = 0; k < nm; k++) {
			cpu(&u0, &s0);
			t0 = now();
			for (i = 0; i < chunk; i++)
				m[k].run(c);
			t1 = now();
			cpu(&u1, &s1);
			m[k].real += t1 - t0;
			m[k].user += u1 - u0;
			m[k].sys += s1 - s0;
			m[k].per_op[r] = (t1 - t0) / chunk;
		}
	}
	for (k = 0; k < nm; k++) {
		m[k].run(c);	/* what one operation sees, for the report */
		printf("method=%s count=%lld real=%.6f user=%.6f sys=%.6f units=%lld bytes=%lld "
		       "rounds=", m[k].name, chunk * rounds, m[k].real, m[k].user, m[k].sys,
		       c->units, c->bytes);
		for (r = 0; r < rounds; r++)
			printf("%s%.9g", r ? "," : "", m[k].per_op[r]);
		printf("\n");
		free(m[k].per_op);
	}
}

/* --- set-up --- */

static void read_specs(const char *path, struct pmc_config *cfg)
{
	char line[512], name[128];
	struct pmc_stat_spec s;
	FILE *f = fopen(path, "r");

	if (!f)
		die(path, errno);
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%127s %u %u %u %u %llu", name, &s.kind, &s.slot, &s.item,
			   &s.flags, &s.scale) != 6 || cfg->nr_stats >= PMC_MAX_STATS)
			die("a line of the specs file", EINVAL);
		cfg->specs[cfg->nr_stats++] = s;
	}
	fclose(f);
	if (!cfg->nr_stats)
		die("the specs file names no stat", EINVAL);
}

static void print_record(struct ctx *c, unsigned int nr_stats)
{
	struct pmc_record h;
	unsigned long long v;
	unsigned int i;

	memcpy(&h, c->buf, sizeof(h));
	printf("record id=%llu level=%u flags=%u valid=%llu values=", h.cgroup_id, h.level,
	       h.flags, h.valid[0]);
	for (i = 0; i < nr_stats; i++) {
		memcpy(&v, c->buf + sizeof(h) + i * sizeof(v), sizeof(v));
		printf("%s%llu", i ? "," : "", v);
	}
	printf("\n");
}

static int selected(const char *list, const char *name)
{
	size_t len = strlen(name);
	const char *p = list;

	if (!list)
		return 1;
	while ((p = strstr(p, name))) {
		if ((p == list || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
			return 1;
		p += len;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct method single[] = {
		{ "stat-seek", run_stat_seek }, { "stat-pread", run_stat_pread }, { "bpf", run_bpf },
		{ "bpf-fetch", run_bpf_fetch },
	};
	static struct method tree[] = {
		{ "stat-walk", run_stat_walk }, { "bpf-walk", run_bpf_walk },
	};
	static struct pmc_config cfg;
	static char log[1 << 16];
	struct method chosen[MAX_METHODS], *all;
	const char *only = NULL, *mode, *path;
	unsigned int capacity = 16384;
	struct ctx c = { .stat_fd = -1, .root_fd = -1 };
	long long count;
	int opt, cg_fd, is_tree, nall, nm = 0, rounds, k, err;
	char stat_path[4096];

	while ((opt = getopt(argc, argv, "m:c:")) != -1) {
		if (opt == 'm')
			only = optarg;
		else if (opt == 'c')
			capacity = strtoul(optarg, NULL, 10);
		else
			goto usage;
	}
	if (argc - optind != 5)
		goto usage;
	mode = argv[optind];
	path = argv[optind + 2];
	count = atoll(argv[optind + 3]);
	rounds = atoi(argv[optind + 4]);
	is_tree = !strcmp(mode, "tree");
	if ((!is_tree && strcmp(mode, "single")) || count < 1 || rounds < 1 ||
	    rounds > count || rounds > MAX_ROUNDS)
		goto usage;
	all = is_tree ? tree : single;
	nall = is_tree ? 2 : 4;
	for (k = 0; k < nall; k++)
		if (selected(only, all[k].name))
			chosen[nm++] = all[k];
	if (!nm)
		goto usage;

	read_specs(argv[optind + 1], &cfg);
	cfg.page_size = sysconf(_SC_PAGESIZE);
	cfg.overflow_capacity = is_tree ? capacity : 1;
	err = pmc_prog_load(&cfg, &c.prog, log, sizeof(log));
	if (err) {
		fprintf(stderr, "%s\n%s\n", log, log + sizeof(log) / 2);
		die("loading the BPF program", -err);
	}
	c.record_size = pmc_prog_record_size(c.prog);
	c.buf = malloc(BUF_SIZE);
	c.ovf_size = (size_t)pmc_prog_overflow_capacity(c.prog) * c.record_size;
	c.ovf = is_tree ? malloc(c.ovf_size) : NULL;
	if (!c.buf || (is_tree && !c.ovf))
		die("malloc", ENOMEM);

	cg_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg_fd < 0)
		die(path, errno);
	/* the link is made once; every operation runs a new session on it */
	c.link_fd = pmc_prog_attach(c.prog, cg_fd, is_tree ? 2 : 1);
	if (c.link_fd < 0)
		die("attaching the iterator", -c.link_fd);
	if (is_tree) {
		c.root_fd = cg_fd;
	} else {
		unsigned long long id;

		err = pmc_fetch_load(&cfg, 1, &c.fetch, log, sizeof(log));
		if (!err)
			err = pmc_fetch_stash(c.fetch, cg_fd, 0, &id);
		if (err) {
			printf("skip method=bpf-fetch reason=%s\n", strerror(-err));
			pmc_fetch_destroy(c.fetch);
			c.fetch = NULL;
			for (k = 0; k < nm; k++)
				if (chosen[k].run == run_bpf_fetch)
					chosen[k--] = chosen[--nm];
		}
		close(cg_fd);
		snprintf(stat_path, sizeof(stat_path), "%s/memory.stat", path);
		c.stat_fd = open(stat_path, O_RDONLY | O_CLOEXEC);
		if (c.stat_fd < 0)
			die(stat_path, errno);
	}

	if (is_tree) {
		run_bpf_walk(&c);
	} else {
		run_bpf(&c);
		print_record(&c, cfg.nr_stats);
	}
	measure(&c, chosen, nm, count, rounds);
	fflush(stdout);

	close(c.link_fd);
	pmc_fetch_destroy(c.fetch);
	pmc_prog_destroy(c.prog);
	return 0;
usage:
	fprintf(stderr, "usage: memcg_bench [-m METHODS] [-c CAPACITY] single|tree SPECS PATH "
			"COUNT ROUNDS\n");
	return 2;
}
