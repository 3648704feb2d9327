// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * memcg_bench: the C side of pymemcg's benchmark, built on the
 * project's own loader (csrc/pmc_shim.c). It repeats the seed patch's
 * experiment, memory.stat reads against BPF iterator sessions, and times
 * tree snapshots both ways.
 *
 *   memcg_bench [-m METHODS] [-c CAPACITY] single SPECS CGROUP COUNT ROUNDS
 *   memcg_bench [-m METHODS] [-c CAPACITY] tree   SPECS ROOT   COUNT ROUNDS
 *   memcg_bench [-m METHODS] [-c SLOTS] rotation SPECS LIST COUNT ROUNDS
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
 *   bpf-fetch   Reader.read's path where the kernel loads memcg_fetch
 *               (6.4+; a "skip" line says why where it does not): one
 *               BPF_PROG_RUN on a cgroup stashed once and its path proven
 *               once (pmc_fetch_read: with no rename since, the run does
 *               not hash the path), the record copied out of the mmaped map
 *   bpf-fetch-hash  the same, each run hashing the path (pmc_fetch_run):
 *               what a read costs after a rename
 * tree methods, ROOT and every cgroup below it (COUNT snapshots):
 *   stat-walk   readdir walk, openat + read + close of every memory.stat
 *   bpf-walk    one DESCENDANTS_PRE session plus the copy of the overflow
 *               records (pmc_read_session + pmc_copy_overflow)
 *   null-walk   the kernel's floor: one DESCENDANTS_PRE session of a
 *               six-instruction iterator program that only counts the
 *               cgroups it is called for (an atomic add to a map value) and
 *               writes nothing: what the cgroup iterator's own walk costs
 *               (locking, css_next_descendant_pre, one program call per
 *               cgroup, the session's file), which no program can remove
 * rotation methods, the cgroups whose paths LIST holds (one a line), each
 * read in turn (COUNT passes over the list; a poller's rotation), with
 * SLOTS (at least the list's length; Reader's is programs.MAX_FETCH_CGROUPS)
 * in the fetch program's map:
 *   fetch-each  Reader.read's path for each: one BPF_PROG_RUN of memcg_fetch
 *               per cgroup, on a slot stashed once and its path proven once
 *               (pmc_fetch_read), the record copied out of the mmaped map
 *   fetch-many  Reader.read_many's path: one BPF_PROG_RUN of pmc_fetch_many
 *               per PMC_FETCH_BATCH_MAX cgroups (warming the caches first
 *               where a pass takes more than one run, as read_many does),
 *               the records copied out packed (pmc_fetch_batch_copy)
 *   stat-pread  pread(0) of each one's open memory.stat
 * Nothing is parsed on either side, as in the seed.
 *
 * Output, one line per method, times in seconds summed over the rounds:
 *   method=NAME count=N real=S user=S sys=S units=U bytes=B rounds=S,S,... cpu_rounds=S,S,...
 * units: cgroups per operation (1, the tree's size, or the list's length);
 * bytes: read per operation; rounds: each round's real time per operation;
 * cpu_rounds: each round's CPU time (user + system) per operation.
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

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include "pmc_shim.h"

#define BUF_SIZE	65536	/* one read of memory.stat or one session */
#define MAX_METHODS	5
#define MAX_ROUNDS	1000

struct ctx {
	int stat_fd;			/* single: the open memory.stat */
	int link_fd;			/* the iterator link */
	int root_fd;			/* tree: the root directory */
	struct pmc_prog *prog;
	struct pmc_fetch *fetch;	/* single: NULL where memcg_fetch did not load */
	unsigned long long fetch_id;	/* the cgroup stashed in it */
	struct pmc_fetch_route route;	/* its path, proven once */
	unsigned int record_size;
	char *buf;
	char *ovf;			/* tree: overflow records land here */
	size_t ovf_size;
	int null_link_fd;		/* tree: the null program's link, or -1 */
	int null_map_fd;		/* its counter: cgroups visited, all sessions */
	unsigned long long null_sessions;	/* sessions run on null_link_fd */
	/* rotation: n cgroups, a route, a batch entry and a memory.stat fd each */
	unsigned int n;
	struct pmc_fetch_route *routes;
	struct pmc_fetch_want *wants;
	int *stat_fds;
	long long units;		/* cgroups seen by the last operation */
	long long bytes;		/* bytes read by the last operation */
};

struct method {
	const char *name;
	void (*run)(struct ctx *c);
	double real, user, sys;		/* seconds, all rounds */
	double *per_op;			/* seconds per operation, each round */
	double *cpu_per_op;		/* CPU seconds (user + system) per operation, each round */
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
	int rc = pmc_fetch_read(&c->route);

	if (rc < 0)
		die("BPF_PROG_RUN of memcg_fetch", -rc);
	if (rc != PMC_READ_OK)
		die("memcg_fetch: the cgroup was removed or renamed", ENOENT);
	memcpy(c->buf, pmc_fetch_record(c->fetch), c->record_size);
	c->bytes = c->record_size;
	c->units = 1;
}

static void run_bpf_fetch_hash(struct ctx *c)
{
	const struct pmc_record *rec = pmc_fetch_record(c->fetch);
	int err = pmc_fetch_run(c->fetch, c->fetch_id);

	if (err)
		die("BPF_PROG_RUN of memcg_fetch", -err);
	if ((rec->flags & PMC_REC_GONE) || rec->name_hash != c->route.path_hash)
		die("memcg_fetch: the cgroup was removed or renamed", ENOENT);
	memcpy(c->buf, rec, c->record_size);
	c->bytes = c->record_size;
	c->units = 1;
}

/* --- rotations --- */

static void run_fetch_each(struct ctx *c)
{
	unsigned int i;
	int rc;

	for (i = 0; i < c->n; i++) {
		rc = pmc_fetch_read(&c->routes[i]);
		if (rc < 0)
			die("BPF_PROG_RUN of memcg_fetch", -rc);
		if (rc != PMC_READ_OK)
			die("memcg_fetch: a cgroup was removed or renamed", ENOENT);
		memcpy(c->buf, pmc_fetch_record(c->fetch), c->record_size);
	}
	c->bytes = (long long)c->n * c->record_size;
	c->units = c->n;
}

static void run_fetch_many(struct ctx *c)
{
	unsigned int cap = pmc_fetch_batch_capacity(c->fetch), start, m;
	unsigned int flags = c->n > cap ? PMC_MANY_WARM : 0;
	int rc;

	for (start = 0; start < c->n; start += m) {
		m = c->n - start < cap ? c->n - start : cap;
		rc = pmc_fetch_run_many(c->fetch, c->wants + start, m, flags);
		if (rc < 0)
			die("BPF_PROG_RUN of pmc_fetch_many", -rc);
		if (rc)
			die("pmc_fetch_many: a cgroup was removed or renamed", ENOENT);
		rc = pmc_fetch_batch_copy(c->fetch, c->buf, m, c->record_size);
		if (rc)
			die("copying a run's records", -rc);
	}
	c->bytes = (long long)c->n * c->record_size;
	c->units = c->n;
}

static void run_stat_pread_each(struct ctx *c)
{
	unsigned int i;
	long long bytes = 0;
	ssize_t n;

	for (i = 0; i < c->n; i++) {
		n = pread(c->stat_fds[i], c->buf, BUF_SIZE, 0);
		if (n <= 0)
			die("pread memory.stat", n < 0 ? errno : EIO);
		bytes += n;
	}
	c->bytes = bytes;
	c->units = c->n;
}

/* The cgroups LIST names: a slot and a proven route each (as Reader.read
 * proves a path: the rename count first, then the hash the run reported),
 * their batch entries, and their memory.stat open. */
static void rotation_setup(struct ctx *c, const struct pmc_config *cfg, const char *list,
			   unsigned int slots, char *log, size_t log_size)
{
	char line[4096], stat_path[4200], **paths = NULL;
	unsigned int cap = 0, i;
	FILE *f = fopen(list, "r");
	int fd, err;

	if (!f)
		die(list, errno);
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (!line[0])
			continue;
		if (c->n == cap && !(paths = realloc(paths, (cap = cap ? 2 * cap : 1024) *
								sizeof(*paths))))
			die("realloc", ENOMEM);
		if (!(paths[c->n++] = strdup(line)))
			die("strdup", ENOMEM);
	}
	fclose(f);
	if (!c->n)
		die("the list names no cgroup", EINVAL);
	err = pmc_fetch_load(cfg, slots > c->n ? slots : c->n, &c->fetch, log, log_size);
	if (!err)
		err = pmc_fetch_load_many(c->fetch, log, log_size);
	if (err) {
		fprintf(stderr, "%s\n", log);
		die("loading memcg_fetch", -err);
	}
	c->routes = calloc(c->n, sizeof(*c->routes));
	c->wants = calloc(c->n, sizeof(*c->wants));
	c->stat_fds = calloc(c->n, sizeof(*c->stat_fds));
	if (!c->routes || !c->wants || !c->stat_fds)
		die("calloc", ENOMEM);
	for (i = 0; i < c->n; i++) {
		struct pmc_fetch_route *r = &c->routes[i];

		fd = open(paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			die(paths[i], errno);
		r->renames = pmc_fetch_renames(c->fetch);
		r->fetch = c->fetch;
		err = pmc_fetch_stash(c->fetch, fd, &r->cgroup_id);
		close(fd);
		if (!err)
			err = pmc_fetch_run(c->fetch, r->cgroup_id);
		if (err)
			die("taking hold of a cgroup of the list", -err);
		r->path_hash = ((const struct pmc_record *)pmc_fetch_record(c->fetch))->name_hash;
		c->wants[i].cgroup_id = r->cgroup_id;
		c->wants[i].path_hash = r->path_hash;
		snprintf(stat_path, sizeof(stat_path), "%s/memory.stat", paths[i]);
		c->stat_fds[i] = open(stat_path, O_RDONLY | O_CLOEXEC);
		if (c->stat_fds[i] < 0)
			die(stat_path, errno);
		free(paths[i]);
	}
	free(paths);
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

/*
 * The null iterator program, as raw instructions (no object file to find):
 *	r2 = ctx->cgroup; if (r2) __sync_fetch_and_add(&counter, 1); return 0;
 * ctx is struct bpf_iter__cgroup { meta; cgroup; }: cgroup at offset 8.
 */
static int null_prog_load(int map_fd)
{
	struct bpf_insn insns[] = {
		{ .code = BPF_LDX | BPF_MEM | BPF_DW, .dst_reg = BPF_REG_2,
		  .src_reg = BPF_REG_1, .off = 8 },
		{ .code = BPF_JMP | BPF_JEQ | BPF_K, .dst_reg = BPF_REG_2, .off = 4 },
		{ .code = BPF_LD | BPF_IMM | BPF_DW, .dst_reg = BPF_REG_1,
		  .src_reg = BPF_PSEUDO_MAP_VALUE, .imm = map_fd },
		{ .imm = 0 },	/* offset into the value */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = 1 },
		{ .code = BPF_STX | BPF_ATOMIC | BPF_DW, .dst_reg = BPF_REG_1,
		  .src_reg = BPF_REG_3, .imm = BPF_ADD },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	static char log[8192];
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_ITER,
		    .log_buf = log, .log_size = sizeof(log), .log_level = 1);
	int btf_id = libbpf_find_vmlinux_btf_id("cgroup", BPF_TRACE_ITER);
	int fd;

	if (btf_id < 0)
		return btf_id;
	opts.attach_btf_id = btf_id;
	fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "pmc_null_iter", "Dual BSD/GPL", insns,
			   sizeof(insns) / sizeof(insns[0]), &opts);
	if (fd < 0) {
		fprintf(stderr, "%s\n", log);
		return -errno;
	}
	return fd;
}

/* the null program attached to the root fd (DESCENDANTS_PRE), or -errno */
static int null_attach(struct ctx *c, int root_fd)
{
	union bpf_iter_link_info linfo;
	LIBBPF_OPTS(bpf_link_create_opts, opts);
	int prog_fd, link_fd;

	c->null_map_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "pmc_null_count", 4, 8, 1, NULL);
	if (c->null_map_fd < 0)
		return -errno;
	prog_fd = null_prog_load(c->null_map_fd);
	if (prog_fd < 0)
		return prog_fd;
	memset(&linfo, 0, sizeof(linfo));
	linfo.cgroup.cgroup_fd = root_fd;
	linfo.cgroup.order = 2;
	opts.iter_info = &linfo;
	opts.iter_info_len = sizeof(linfo);
	link_fd = bpf_link_create(prog_fd, 0, BPF_TRACE_ITER, &opts);
	close(prog_fd);	/* the link holds the program */
	return link_fd < 0 ? -errno : link_fd;
}

static unsigned long long null_count(struct ctx *c)
{
	unsigned long long v = 0;
	int key = 0;

	if (bpf_map_lookup_elem(c->null_map_fd, &key, &v))
		die("reading the null program's counter", errno);
	return v;
}

static void run_null_walk(struct ctx *c)
{
	ssize_t n = pmc_read_session(c->null_link_fd, c->buf, BUF_SIZE);

	if (n < 0)
		die("null iterator session", (int)-n);
	if (n != 0)
		die("the null iterator wrote output", EPROTO);
	c->null_sessions++;
	c->bytes = 0;
	c->units = -1;	/* counted at the end: the walk leaves no output to count */
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
		m[k].cpu_per_op = calloc(rounds, sizeof(double));
		if (!m[k].per_op || !m[k].cpu_per_op)
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
			m[k].cpu_per_op[r] = (u1 - u0 + s1 - s0) / chunk;
		}
	}
	for (k = 0; k < nm; k++) {
		m[k].run(c);	/* what one operation sees, for the report */
		if (m[k].run == run_null_walk) {
			/* every session saw the same tree: the counter says how big */
			unsigned long long total = null_count(c);

			if (!c->null_sessions || total % c->null_sessions)
				die("the null program's count is not whole walks", EPROTO);
			c->units = total / c->null_sessions;
		}
		printf("method=%s count=%lld real=%.6f user=%.6f sys=%.6f units=%lld bytes=%lld "
		       "rounds=", m[k].name, chunk * rounds, m[k].real, m[k].user, m[k].sys,
		       c->units, c->bytes);
		for (r = 0; r < rounds; r++)
			printf("%s%.9g", r ? "," : "", m[k].per_op[r]);
		printf(" cpu_rounds=");
		for (r = 0; r < rounds; r++)
			printf("%s%.9g", r ? "," : "", m[k].cpu_per_op[r]);
		printf("\n");
		free(m[k].per_op);
		free(m[k].cpu_per_op);
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
		{ "bpf-fetch", run_bpf_fetch }, { "bpf-fetch-hash", run_bpf_fetch_hash },
	};
	static struct method tree[] = {
		{ "stat-walk", run_stat_walk }, { "bpf-walk", run_bpf_walk },
		{ "null-walk", run_null_walk },
	};
	static struct method rotation[] = {
		{ "fetch-each", run_fetch_each }, { "fetch-many", run_fetch_many },
		{ "stat-pread", run_stat_pread_each },
	};
	static struct pmc_config cfg;
	static char log[1 << 16];
	struct method chosen[MAX_METHODS], *all;
	const char *only = NULL, *mode, *path;
	unsigned int capacity = 16384;
	int capacity_set = 0;
	struct ctx c = { .stat_fd = -1, .root_fd = -1, .null_link_fd = -1, .null_map_fd = -1 };
	long long count;
	int opt, cg_fd, is_tree, is_rotation, nall, nm = 0, rounds, k, err;
	char stat_path[4096];

	while ((opt = getopt(argc, argv, "m:c:")) != -1) {
		if (opt == 'm')
			only = optarg;
		else if (opt == 'c')
			capacity = strtoul(optarg, NULL, 10), capacity_set = 1;
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
	is_rotation = !strcmp(mode, "rotation");
	if ((!is_tree && !is_rotation && strcmp(mode, "single")) || count < 1 || rounds < 1 ||
	    rounds > count || rounds > MAX_ROUNDS)
		goto usage;
	all = is_tree ? tree : is_rotation ? rotation : single;
	nall = is_tree ? (int)(sizeof(tree) / sizeof(tree[0])) :
	       is_rotation ? (int)(sizeof(rotation) / sizeof(rotation[0])) :
	       (int)(sizeof(single) / sizeof(single[0]));
	for (k = 0; k < nall; k++)
		if (selected(only, all[k].name))
			chosen[nm++] = all[k];
	if (!nm)
		goto usage;

	read_specs(argv[optind + 1], &cfg);
	cfg.page_size = sysconf(_SC_PAGESIZE);
	if (is_rotation) {
		c.buf = malloc(BUF_SIZE);
		if (!c.buf)
			die("malloc", ENOMEM);
		cfg.overflow_capacity = 1;
		c.record_size = PMC_RECORD_SIZE(cfg.nr_stats);
		rotation_setup(&c, &cfg, path, capacity_set ? capacity : 0, log, sizeof(log));
		measure(&c, chosen, nm, count, rounds);
		fflush(stdout);
		for (k = 0; k < (int)c.n; k++)
			close(c.stat_fds[k]);
		pmc_fetch_destroy(c.fetch);
		return 0;
	}
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
		for (k = 0; k < nm; k++) {
			if (chosen[k].run != run_null_walk)
				continue;
			c.null_link_fd = null_attach(&c, cg_fd);
			if (c.null_link_fd < 0) {
				printf("skip method=null-walk reason=%s\n", strerror(-c.null_link_fd));
				chosen[k--] = chosen[--nm];
			}
		}
	} else {
		err = pmc_fetch_load(&cfg, 1, &c.fetch, log, sizeof(log));
		if (!err) {
			/* the path is proven as Reader.read proves it: the count
			 * first, then the hash; the same cgroup as the link's */
			c.route.renames = pmc_fetch_renames(c.fetch);
			err = pmc_fetch_stash(c.fetch, cg_fd, &c.fetch_id);
		}
		if (!err)
			err = pmc_fetch_run(c.fetch, c.fetch_id);
		if (!err) {
			c.route.cgroup_id = c.fetch_id;
			c.route.fetch = c.fetch;
			c.route.path_hash =
				((const struct pmc_record *)pmc_fetch_record(c.fetch))->name_hash;
		}
		if (err) {
			printf("skip method=bpf-fetch reason=%s\n", strerror(-err));
			printf("skip method=bpf-fetch-hash reason=%s\n", strerror(-err));
			pmc_fetch_destroy(c.fetch);
			c.fetch = NULL;
			for (k = 0; k < nm; k++)
				if (chosen[k].run == run_bpf_fetch || chosen[k].run == run_bpf_fetch_hash)
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
	if (c.null_link_fd >= 0)
		close(c.null_link_fd);
	if (c.null_map_fd >= 0)
		close(c.null_map_fd);
	pmc_fetch_destroy(c.fetch);
	pmc_prog_destroy(c.prog);
	return 0;
usage:
	fprintf(stderr, "usage: memcg_bench [-m METHODS] [-c CAPACITY] single|tree|rotation SPECS "
			"PATH COUNT ROUNDS\n");
	return 2;
}
