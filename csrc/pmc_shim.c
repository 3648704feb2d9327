// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <limits.h>
#include <linux/magic.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "pmc_shim.h"
#include "memcg_iter.skel.h"
#include "memcg_fetch.skel.h"
#include "memcg_gone.skel.h"
#include "memcg_tables.skel.h"

struct pmc_prog {
	struct memcg_iter *skel;
	void *overflow_mem;		/* mmap of the overflow map */
	size_t overflow_mem_size;
	unsigned int record_size;
	unsigned int seq_budget;
	unsigned int overflow_capacity;
	struct bpf_program *tree_prog;	/* the programs this selection loaded, */
	struct bpf_program *path_prog;	/* or NULL: not wanted */
};

/*
 * libbpf reports through a process-wide print callback. Keep what it says
 * during a load so that the caller gets it with the error instead of on
 * stderr of whatever daemon embeds us.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_dst;
static size_t log_cap, log_len;

/*
 * fork() copies the calling thread only: had another thread been inside a
 * load (holding log_lock) at that moment, the child's first load would wait
 * for it forever. So a fork takes log_lock first, waiting for a load under
 * way to end (loads serialise on it: libbpf's print callback is process-wide
 * and libelf is not known to be thread-safe), and both processes release it
 * after; the child's thread is the one that took it. No load is then under
 * way in the child, and log_dst is NULL there.
 */
static void fork_prepare(void)
{
	pthread_mutex_lock(&log_lock);
}

static void fork_release(void)
{
	pthread_mutex_unlock(&log_lock);
}

__attribute__((constructor)) static void register_fork_handlers(void)
{
	pthread_atfork(fork_prepare, fork_release, fork_release);
}

/* Append, keeping the newest text where it does not all fit: a verifier
 * log ends with its reason. */
static void log_append(const char *msg, size_t n)
{
	size_t room = log_cap - 1;

	if (n >= room) {
		memcpy(log_dst, msg + n - room, room);
		log_len = room;
	} else {
		if (log_len + n > room) {
			size_t drop = log_len + n - room;

			memmove(log_dst, log_dst + drop, log_len - drop);
			log_len -= drop;
		}
		memcpy(log_dst + log_len, msg, n);
		log_len += n;
	}
	log_dst[log_len] = '\0';
}

/* libbpf prints a failed program's verifier log through here, named by
 * the program, whichever program of the object it was. */
static int capture_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	va_list copy;
	char *msg;
	int n;

	if (level == LIBBPF_DEBUG || !log_dst || log_cap < 2)
		return 0;
	va_copy(copy, args);
	n = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (n <= 0)
		return 0;
	msg = malloc((size_t)n + 1);
	if (!msg)
		return 0;
	vsnprintf(msg, (size_t)n + 1, fmt, args);
	log_append(msg, (size_t)n);
	free(msg);
	return 0;
}

static void log_begin(char *dst, size_t cap)
{
	pthread_mutex_lock(&log_lock);
	log_dst = dst;
	log_cap = cap;
	log_len = 0;
	if (cap)
		dst[0] = '\0';
	libbpf_set_print(capture_print);
}

static void log_end(void)
{
	log_dst = NULL;
	log_cap = log_len = 0;
	pthread_mutex_unlock(&log_lock);
}

static int check_config(const struct pmc_config *cfg)
{
	if (cfg->nr_stats > PMC_MAX_STATS || cfg->page_size == 0 ||
	    cfg->kfuncs < PMC_KFUNCS_NONE || cfg->kfuncs > PMC_KFUNCS_RFC ||
	    (cfg->flush && cfg->kfuncs == PMC_KFUNCS_NONE) ||
	    (cfg->programs & ~(unsigned int)(PMC_PROGRAMS_TREE | PMC_PROGRAMS_PATH)))
		return -EINVAL;
	return 0;
}

/* The selection into a program's .rodata (struct pmc_selection, which
 * both programs define as `sel`); direct: read struct mem_cgroup with plain
 * loads (bpf_rdonly_cast) rather than probe-read copies. */
static void set_selection(struct pmc_selection *sel, const struct pmc_config *cfg, bool direct)
{
	/* the RFC kfuncs read hierarchical state and events one by one */
	bool arrays = cfg->kfuncs != PMC_KFUNCS_RFC || cfg->local_stats;
	unsigned int i;

	memset(sel, 0, sizeof(*sel));
	sel->nr_stats = cfg->nr_stats;
	sel->local_stats = !!cfg->local_stats;
	sel->kfuncs = cfg->kfuncs;
	sel->direct_loads = direct;
	sel->psi_system = cfg->psi_system;
	memcpy(sel->specs, cfg->specs, cfg->nr_stats * sizeof(cfg->specs[0]));
	for (i = 0; i < cfg->nr_stats; i++) {
		if (cfg->specs[i].kind == PMC_KIND_STATE)
			sel->need_state = arrays;
		else if (cfg->specs[i].kind == PMC_KIND_EVENT)
			sel->need_events = arrays;
		else if (cfg->specs[i].kind == PMC_KIND_MEMEVENT)
			sel->need_memev = true;
	}
}

/* A new link of the cgroup iterator program prog_fd on the cgroup behind
 * cgroup_fd, walking in `order`; returns its fd or -errno. */
static int cgroup_iter_link(int prog_fd, int cgroup_fd, enum bpf_cgroup_iter_order order)
{
	union bpf_iter_link_info linfo;
	LIBBPF_OPTS(bpf_link_create_opts, opts);
	int fd;

	memset(&linfo, 0, sizeof(linfo));
	linfo.cgroup.cgroup_fd = cgroup_fd;
	linfo.cgroup.order = order;
	opts.iter_info = &linfo;
	opts.iter_info_len = sizeof(linfo);
	fd = bpf_link_create(prog_fd, 0, BPF_TRACE_ITER, &opts);
	return fd < 0 ? -errno : fd;
}

/* A read-only mapping of an mmapable map; *mem stays NULL on failure. */
static int map_readonly(const struct bpf_map *map, size_t size, void **mem)
{
	void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, bpf_map__fd(map), 0);

	if (p == MAP_FAILED)
		return -errno;
	*mem = p;
	return 0;
}

void pmc_prog_destroy(struct pmc_prog *prog)
{
	if (!prog)
		return;
	if (prog->overflow_mem)
		munmap(prog->overflow_mem, prog->overflow_mem_size);
	memcg_iter__destroy(prog->skel);
	free(prog);
}

/* direct: read struct mem_cgroup with plain loads of the selected slots
 * (bpf_rdonly_cast, Linux 6.2+) instead of a probe-read copy of each whole
 * array: on large trees those copies dominate the walk */
static int prog_load(const struct pmc_config *cfg, bool direct, struct pmc_prog **out,
		     char *log, size_t log_size)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts);
	struct pmc_prog *prog;
	struct memcg_iter *skel;
	unsigned int capacity;
	unsigned int want = cfg->programs ? cfg->programs : PMC_PROGRAMS_TREE | PMC_PROGRAMS_PATH;
	bool tree = want & PMC_PROGRAMS_TREE, path = want & PMC_PROGRAMS_PATH;
	int err;

	*out = NULL;
	err = check_config(cfg);
	if (err)
		return err;
	capacity = cfg->overflow_capacity ? cfg->overflow_capacity : 1;

	prog = calloc(1, sizeof(*prog));
	if (!prog)
		return -ENOMEM;
	prog->record_size = PMC_RECORD_SIZE(cfg->nr_stats);
	prog->seq_budget = (PMC_SEQ_BUF_SIZE - sizeof(struct pmc_trailer)) / prog->record_size;
	prog->overflow_capacity = capacity;

	log_begin(log, log_size);
	skel = memcg_iter__open_opts(&opts);
	if (!skel) {
		err = -errno;
		goto fail;
	}
	prog->skel = skel;

	set_selection(&skel->rodata->sel, cfg, direct);
	skel->rodata->seq_budget = prog->seq_budget;
	skel->rodata->overflow_capacity = capacity;
	memcpy((void *)skel->rodata->selection_tree, cfg->selection_tree,
	       sizeof(cfg->selection_tree));
	memcpy((void *)skel->rodata->selection_path, cfg->selection_path,
	       sizeof(cfg->selection_path));

	/* load only what this selection runs, of what was asked for: the
	 * flushing variants are sleepable and need a flush kfunc, the others
	 * must not flush */
	if (tree)
		prog->tree_prog = cfg->flush ? skel->progs.pmc_memcg_iter_flush
					     : skel->progs.pmc_memcg_iter;
	if (path)
		prog->path_prog = cfg->flush ? skel->progs.pmc_memcg_iter_path_flush
					     : skel->progs.pmc_memcg_iter_path;
	bpf_program__set_autoload(skel->progs.pmc_memcg_iter, tree && !cfg->flush);
	bpf_program__set_autoload(skel->progs.pmc_memcg_iter_path, path && !cfg->flush);
	bpf_program__set_autoload(skel->progs.pmc_memcg_iter_flush, tree && cfg->flush);
	bpf_program__set_autoload(skel->progs.pmc_memcg_iter_path_flush, path && cfg->flush);

	err = bpf_map__set_value_size(skel->maps.overflow, prog->record_size);
	if (!err)
		err = bpf_map__set_max_entries(skel->maps.overflow, capacity);
	if (err)
		goto fail;

	err = memcg_iter__load(skel);
	if (err)
		goto fail;

	prog->overflow_mem_size = (size_t)capacity * prog->record_size;
	err = map_readonly(skel->maps.overflow, prog->overflow_mem_size, &prog->overflow_mem);
	if (err)
		goto fail;
	log_end();
	*out = prog;
	return 0;
fail:
	log_end();
	pmc_prog_destroy(prog);
	return err < 0 ? err : -EINVAL;
}

int pmc_prog_load(const struct pmc_config *cfg, struct pmc_prog **out,
		  char *log, size_t log_size)
{
	/* a kernel before 6.2 rejects the bpf_rdonly_cast call: load the
	 * program that copies the arrays whole there */
	int err = check_config(cfg);

	if (err)
		return err;
	err = prog_load(cfg, true, out, log, log_size);
	if (err)
		err = prog_load(cfg, false, out, log, log_size);
	return err;
}

const void *pmc_object_bytes(size_t *size)
{
	return memcg_iter__elf_bytes(size);
}

unsigned int pmc_prog_record_size(const struct pmc_prog *prog)
{
	return prog->record_size;
}

unsigned int pmc_prog_seq_budget(const struct pmc_prog *prog)
{
	return prog->seq_budget;
}

unsigned int pmc_prog_overflow_capacity(const struct pmc_prog *prog)
{
	return prog->overflow_capacity;
}

int pmc_prog_attach(struct pmc_prog *prog, int cgroup_fd, int order)
{
	/* one cgroup: the program that proves its path; walks: name hashes */
	struct bpf_program *p = order == BPF_CGROUP_ITER_SELF_ONLY ? prog->path_prog
								  : prog->tree_prog;

	if (!p)
		return -ENOEXEC;	/* not loaded: the loader checks pmc_prog_serves() */
	return cgroup_iter_link(bpf_program__fd(p), cgroup_fd, order);
}

int pmc_prog_serves(const struct pmc_prog *prog, int order)
{
	return (order == BPF_CGROUP_ITER_SELF_ONLY ? prog->path_prog : prog->tree_prog) != NULL;
}

int pmc_link_pin(int link_fd, const char *path)
{
	return bpf_obj_pin(link_fd, path) ? -errno : 0;
}

/* bpffs gives every pinned object an anonymous inode's file: its name in
 * /proc/self/fd says the kind. */
static unsigned int bpf_object_kind(int fd)
{
	char proc[32], target[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, target, sizeof(target) - 1);
	if (n < 0)
		return PMC_PIN_OTHER;
	target[n] = '\0';
	if (!strcmp(target, "anon_inode:bpf_link") || !strcmp(target, "anon_inode:bpf-link"))
		return PMC_PIN_LINK;
	if (!strcmp(target, "anon_inode:bpf-prog"))
		return PMC_PIN_PROG;
	if (!strcmp(target, "anon_inode:bpf-map"))
		return PMC_PIN_MAP;
	return PMC_PIN_OTHER;
}

static int identify_link(int link_fd, struct pmc_pin_ident *out)
{
	struct bpf_link_info link = {};
	struct bpf_prog_info prog = {};
	__u32 len = sizeof(link);
	int prog_fd, err = 0;

	link.iter.target_name = (unsigned long)out->target;
	link.iter.target_name_len = sizeof(out->target);
	if (bpf_obj_get_info_by_fd(link_fd, &link, &len))
		return -errno;
	out->link_type = link.type;
	if (link.type != BPF_LINK_TYPE_ITER)
		out->target[0] = '\0';	/* the kernel wrote nothing there */
	else if (!strcmp(out->target, "cgroup")) {
		out->order = link.iter.cgroup.order;
		out->cgroup_id = link.iter.cgroup.cgroup_id;
	}
	out->target[sizeof(out->target) - 1] = '\0';
	prog_fd = bpf_prog_get_fd_by_id(link.prog_id);
	if (prog_fd < 0)
		return -errno;
	len = sizeof(prog);
	if (bpf_obj_get_info_by_fd(prog_fd, &prog, &len))
		err = -errno;
	close(prog_fd);
	if (err)
		return err;
	out->prog_type = prog.type;
	memcpy(out->prog_name, prog.name, sizeof(out->prog_name));
	out->prog_name[sizeof(out->prog_name) - 1] = '\0';
	return 0;
}

int pmc_pin_identify(int dir_fd, const char *name, struct pmc_pin_ident *out)
{
	char path[64 + NAME_MAX];
	struct statfs sfs;
	struct stat st;
	int fd, err;

	memset(out, 0, sizeof(*out));
	if (fstatfs(dir_fd, &sfs))
		return -errno;
	out->on_bpffs = sfs.f_type == BPF_FS_MAGIC;
	if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!out->on_bpffs || !S_ISREG(st.st_mode))
		return 0;	/* not a pinned BPF object: nothing to ask the kernel */
	/* BPF_OBJ_GET takes a path (a directory fd only since 6.5): the name
	 * through the directory's fd, so that nothing above it is resolved
	 * again; the name itself was just seen not to be a symlink. */
	if (snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dir_fd, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = bpf_obj_get(path);
	if (fd < 0)
		return -errno;
	out->object = bpf_object_kind(fd);
	err = out->object == PMC_PIN_LINK ? identify_link(fd, out) : 0;
	close(fd);
	return err;
}

ssize_t pmc_read_session(int link_fd, void *buf, size_t buf_size)
{
	ssize_t n, total = 0;
	int fd, err = 0;

	fd = bpf_iter_create(link_fd);
	if (fd < 0)
		return -errno;
	/* A buffer larger than the kernel's seq buffer gets the whole session
	 * in one read (bpf_seq_read stops early only when count >= size). The
	 * loop only runs on if a kernel ever hands out less. */
	while ((size_t)total < buf_size) {
		n = read(fd, (char *)buf + total, buf_size - total);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		total += n;
		if (total > 0 && (size_t)total < buf_size &&
		    (size_t)total >= sizeof(struct pmc_trailer) &&
		    ((struct pmc_trailer *)((char *)buf + total - sizeof(struct pmc_trailer)))->magic ==
			    PMC_TRAILER_MAGIC &&
		    (total - sizeof(struct pmc_trailer)) % 8 == 0)
			break;	/* the trailer is the session's last word */
	}
	close(fd);
	return err ? err : total;
}

int pmc_copy_overflow(struct pmc_prog *prog, unsigned long long session_id,
		      void *dst, unsigned long long n)
{
	struct pmc_overflow_state *st = &prog->skel->bss->overflow_state;
	unsigned long long written, dropped;

	if (n > prog->overflow_capacity)
		return -E2BIG;
	/*
	 * The read side of the seqlock that the program's sessions keep
	 * (memcg_iter.bpf.c): the counts and records read between two loads of
	 * the owner that both find our session are our session's, because a
	 * session that started meanwhile claimed the owner before writing. The
	 * acquire load keeps those reads from moving before the first check, the
	 * acquire fence keeps them from moving after the second; only then do
	 * the counts mean anything.
	 */
	if (__atomic_load_n(&st->session_id, __ATOMIC_ACQUIRE) != session_id)
		return -EAGAIN;
	written = __atomic_load_n(&st->written, __ATOMIC_RELAXED);
	dropped = __atomic_load_n(&st->dropped, __ATOMIC_RELAXED);
	if (written >= n)
		memcpy(dst, prog->overflow_mem, n * prog->record_size);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (__atomic_load_n(&st->session_id, __ATOMIC_RELAXED) != session_id)
		return -EAGAIN;
	if (written < n)
		return dropped ? -E2BIG : -EAGAIN;
	return 0;
}

/* --- single reads in one bpf() call --- */

struct pmc_fetch {
	struct memcg_fetch *skel;
	struct memcg_fetch *many_skel;	/* pmc_fetch_many, once loaded, on skel's maps */
	void *record;			/* mmap of the out map */
	size_t record_map_size;
	void *batch;			/* mmap of the batch map: pmc_fetch_many's records */
	size_t batch_map_size;
	struct pmc_fetch_args *args;	/* in the mmaped .bss: what pmc_fetch reads */
	const volatile unsigned long long *renames;	/* in the mmaped .bss: pmc_rename's count */
	int prog_fd;
	int many_fd;
	unsigned int nr_slots;		/* cgroups the slots map holds at most */
	unsigned int batch_capacity;	/* records one pmc_fetch_run_many fills at most */
	unsigned int batch_stride;	/* bytes from one of its records to the next */
	const struct pmc_gone *gone;	/* removals pmc_fetch_read checks first, or NULL */
};

void pmc_fetch_destroy(struct pmc_fetch *fetch)
{
	if (!fetch)
		return;
	if (fetch->record)
		munmap(fetch->record, fetch->record_map_size);
	if (fetch->batch)
		munmap(fetch->batch, fetch->batch_map_size);
	memcg_fetch__destroy(fetch->many_skel);
	/* detaches pmc_rmdir, frees the slots: drops their references */
	memcg_fetch__destroy(fetch->skel);
	free(fetch);
}

int pmc_fetch_load(const struct pmc_config *cfg, unsigned int nr_slots,
		   struct pmc_fetch **out, char *log, size_t log_size)
{
	struct pmc_fetch *fetch;
	struct memcg_fetch *skel;
	long page = sysconf(_SC_PAGESIZE);
	int err;

	*out = NULL;
	err = check_config(cfg);
	if (err || nr_slots == 0)
		return err ? err : -EINVAL;
	fetch = calloc(1, sizeof(*fetch));
	if (!fetch)
		return -ENOMEM;
	fetch->nr_slots = nr_slots;
	fetch->many_fd = -1;
	/* a run reads cgroups that are all stashed at once: no more than the map holds */
	fetch->batch_capacity = nr_slots < PMC_FETCH_BATCH_MAX ? nr_slots : PMC_FETCH_BATCH_MAX;

	log_begin(log, log_size);
	skel = memcg_fetch__open();
	if (!skel) {
		err = -errno;
		goto fail;
	}
	fetch->skel = skel;
	/* bpf_rdonly_cast: 6.2+, this program 6.4+ */
	set_selection(&skel->rodata->sel, cfg, true);
	skel->rodata->flush_stats = !!cfg->flush;
	/* the batch program later, and only if it is run: pmc_fetch_load_many */
	bpf_program__set_autoload(skel->progs.pmc_fetch_many, false);
	err = bpf_map__set_max_entries(skel->maps.slots, nr_slots);
	if (!err)
		err = bpf_map__set_max_entries(skel->maps.batch, fetch->batch_capacity);
	if (!err)
		err = memcg_fetch__load(skel);
	if (err)
		goto fail;
	/* removed cgroups leave the slots map at once (the iterator programs
	 * of the skeleton attach per cgroup, so only this one is attached here;
	 * the skeleton's destroy detaches it) */
	skel->links.pmc_rmdir = bpf_program__attach(skel->progs.pmc_rmdir);
	if (!skel->links.pmc_rmdir) {
		err = -errno;
		goto fail;
	}
	/* renames are counted from here on: a path proven from now is proven
	 * at the count it reads then */
	skel->links.pmc_rename = bpf_program__attach(skel->progs.pmc_rename);
	if (!skel->links.pmc_rename) {
		err = -errno;
		goto fail;
	}
	if (!skel->bss) {
		/* the skeleton maps .bss where the kernel can (5.5+): always
		 * where this object loads */
		err = -ENOTSUP;
		goto fail;
	}
	fetch->args = &skel->bss->fetch_args;
	fetch->renames = &skel->bss->renames;
	fetch->prog_fd = bpf_program__fd(skel->progs.pmc_fetch);
	fetch->record_map_size = (bpf_map__value_size(skel->maps.out) + page - 1) / page * page;
	err = map_readonly(skel->maps.out, fetch->record_map_size, &fetch->record);
	if (err)
		goto fail;
	/* an element holds a record of every stat, a multiple of 8 bytes: array
	 * elements follow each other with no padding */
	fetch->batch_stride = bpf_map__value_size(skel->maps.batch);
	fetch->batch_map_size = ((size_t)fetch->batch_capacity * fetch->batch_stride + page - 1) /
				page * page;
	err = map_readonly(skel->maps.batch, fetch->batch_map_size, &fetch->batch);
	if (err)
		goto fail;
	log_end();
	*out = fetch;
	return 0;
fail:
	log_end();
	pmc_fetch_destroy(fetch);
	return err < 0 ? err : -EINVAL;
}

/*
 * pmc_fetch_many as a second instance of the object whose maps are all the
 * first one's (bpf_map__reuse_fd): the same slots and references, output
 * maps, selection (.rodata, frozen: the verifier sees the same constants)
 * and .bss. Only that program of the instance loads.
 */
int pmc_fetch_load_many(struct pmc_fetch *fetch, char *log, size_t log_size)
{
	struct memcg_fetch *skel;
	struct bpf_program *p;
	struct bpf_map *map;
	int err = 0;

	if (fetch->many_skel)
		return 0;
	log_begin(log, log_size);
	skel = memcg_fetch__open();
	if (!skel) {
		err = -errno;
		goto out;
	}
	memcpy((void *)skel->rodata, fetch->skel->rodata, sizeof(*skel->rodata));
	bpf_object__for_each_program(p, skel->obj)
		bpf_program__set_autoload(p, p == skel->progs.pmc_fetch_many);
	bpf_object__for_each_map(map, skel->obj) {
		const struct bpf_map *first =
			bpf_object__find_map_by_name(fetch->skel->obj, bpf_map__name(map));

		if (!first || bpf_map__fd(first) < 0) {
			err = -ENOENT;
			break;
		}
		err = bpf_map__reuse_fd(map, bpf_map__fd(first));
		if (err)
			break;
	}
	if (!err)
		err = memcg_fetch__load(skel);
	if (err) {
		memcg_fetch__destroy(skel);
		goto out;
	}
	fetch->many_skel = skel;
	fetch->many_fd = bpf_program__fd(skel->progs.pmc_fetch_many);
out:
	log_end();
	return err < 0 ? err : (err ? -EINVAL : 0);
}

int pmc_fetch_has_many(const struct pmc_fetch *fetch)
{
	return fetch->many_skel != NULL;
}

const void *pmc_fetch_record(const struct pmc_fetch *fetch)
{
	return fetch->record;
}

int pmc_fetch_stash(struct pmc_fetch *fetch, int cgroup_fd, unsigned long long *cgroup_id)
{
	int link, iter, err = 0;
	ssize_t n;

	link = cgroup_iter_link(bpf_program__fd(fetch->skel->progs.pmc_stash), cgroup_fd,
				BPF_CGROUP_ITER_SELF_ONLY);
	if (link < 0)
		return link;
	iter = bpf_iter_create(link);
	if (iter < 0) {
		err = -errno;
		close(link);
		return err;
	}
	do {
		n = read(iter, cgroup_id, sizeof(*cgroup_id));
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		err = -errno;
	else if (n == 0)
		err = -ENOENT;	/* the walk found no live cgroup */
	else if (n != sizeof(*cgroup_id))
		err = -EIO;
	else if (*cgroup_id == 0)
		err = -ENOSPC;	/* the slots map is full */
	close(iter);
	close(link);
	return err;
}

int pmc_fetch_clear(struct pmc_fetch *fetch, unsigned long long cgroup_id)
{
	/* deleting the element releases the reference it held; one that
	 * pmc_rmdir deleted already is not an error */
	if (bpf_map_delete_elem(bpf_map__fd(fetch->skel->maps.slots), &cgroup_id) && errno != ENOENT)
		return -errno;
	return 0;
}

/* One run of pmc_fetch on what fetch->args says: no context to copy. */
static int fetch_run(struct pmc_fetch *fetch, unsigned long long cgroup_id,
		     unsigned long long path_hash, int with_path)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts);

	fetch->args->cgroup_id = cgroup_id;
	fetch->args->path_hash = path_hash;
	fetch->args->with_path = with_path;
	if (bpf_prog_test_run_opts(fetch->prog_fd, &opts))
		return -errno;
	return opts.retval ? -EINVAL : 0;
}

int pmc_fetch_run(struct pmc_fetch *fetch, unsigned long long cgroup_id)
{
	return fetch_run(fetch, cgroup_id, 0, 1);
}

unsigned long long pmc_fetch_renames(const struct pmc_fetch *fetch)
{
	return __atomic_load_n(fetch->renames, __ATOMIC_ACQUIRE);
}

static int gone_unseen(const struct pmc_gone *gone);

int pmc_fetch_read(struct pmc_fetch_route *route)
{
	struct pmc_fetch *fetch = route->fetch;
	const struct pmc_record *rec = fetch->record;
	/* read before the run: a rename counted after this read had not shown
	 * its new name to any lookup when the count was read */
	unsigned long long now = __atomic_load_n(fetch->renames, __ATOMIC_ACQUIRE);
	int proven = now == route->renames, err;

	if (fetch->gone && gone_unseen(fetch->gone))
		return PMC_READ_REAP;
	err = fetch_run(fetch, route->cgroup_id, route->path_hash, !proven);
	if (err)
		return err;
	if (rec->flags & PMC_REC_GONE)
		return PMC_READ_GONE;
	if (rec->cgroup_id != route->cgroup_id)
		return PMC_READ_OTHER;
	if (!proven) {
		if (rec->name_hash != route->path_hash)
			return PMC_READ_OTHER;
		route->renames = now;	/* proven again, at this count */
	}			/* else alive, and no rename since the proof */
	route->used = 1;
	return PMC_READ_OK;
}

const void *pmc_fetch_batch(const struct pmc_fetch *fetch)
{
	return fetch->batch;
}

unsigned int pmc_fetch_batch_capacity(const struct pmc_fetch *fetch)
{
	return fetch->batch_capacity;
}

unsigned int pmc_fetch_batch_stride(const struct pmc_fetch *fetch)
{
	return fetch->batch_stride;
}

int pmc_fetch_batch_copy(const struct pmc_fetch *fetch, void *dst, unsigned int n,
			 unsigned int size)
{
	const char *src = fetch->batch;
	char *out = dst;
	unsigned int i;

	if (n > fetch->batch_capacity || size > fetch->batch_stride)
		return -EINVAL;
	for (i = 0; i < n; i++)
		memcpy(out + (size_t)i * size, src + (size_t)i * fetch->batch_stride, size);
	return 0;
}

int pmc_fetch_run_many(struct pmc_fetch *fetch, const void *wants, unsigned int n,
		       unsigned int flags)
{
	const struct pmc_fetch_want *want = wants;	/* n of them: bytes from Python */
	struct pmc_fetch_many_args args;
	/* only the entries in use go in: the kernel copies ctx_size_in bytes in
	 * (and back out) on every run */
	LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args,
		    .ctx_size_in = offsetof(struct pmc_fetch_many_args, want) + n * sizeof(*want));

	if (fetch->many_fd < 0)
		return -ENOEXEC;
	if (n == 0)
		return 0;
	if (n > fetch->batch_capacity)
		return -E2BIG;
	args.count = n;
	args.flags = flags & PMC_MANY_WARM;
	memcpy(args.want, want, n * sizeof(*want));
	if (bpf_prog_test_run_opts(fetch->many_fd, &opts))
		return -errno;
	return opts.retval > n ? -EIO : (int)opts.retval;
}

/* --- the ids of removed cgroups --- */

struct pmc_gone {
	struct memcg_gone *skel;
	void *ring;			/* mmap of the gone map */
	size_t ring_map_size;
	unsigned long long seen;	/* the reader's: gen up to which it reaped */
};

static int gone_unseen(const struct pmc_gone *gone)
{
	const struct pmc_gone_ring *ring = gone->ring;

	return __atomic_load_n(&ring->gen, __ATOMIC_ACQUIRE) != gone->seen;
}

unsigned long long *pmc_gone_seen(struct pmc_gone *gone)
{
	return &gone->seen;
}

void pmc_fetch_watch(struct pmc_fetch *fetch, const struct pmc_gone *gone)
{
	fetch->gone = gone;
}

void pmc_gone_destroy(struct pmc_gone *gone)
{
	if (!gone)
		return;
	if (gone->ring)
		munmap(gone->ring, gone->ring_map_size);
	memcg_gone__destroy(gone->skel);	/* detaches the program */
	free(gone);
}

int pmc_gone_load(struct pmc_gone **out, char *log, size_t log_size)
{
	long page = sysconf(_SC_PAGESIZE);
	struct pmc_gone *gone = calloc(1, sizeof(*gone));
	int err = 0;

	*out = NULL;
	if (!gone)
		return -ENOMEM;
	log_begin(log, log_size);
	gone->skel = memcg_gone__open_and_load();
	if (!gone->skel)
		err = -errno;
	/* the skeleton's destroy detaches it */
	if (!err && !(gone->skel->links.pmc_gone = bpf_program__attach(gone->skel->progs.pmc_gone)))
		err = -errno;
	gone->ring_map_size = (sizeof(struct pmc_gone_ring) + page - 1) / page * page;
	if (!err)
		err = map_readonly(gone->skel->maps.gone, gone->ring_map_size, &gone->ring);
	log_end();
	if (err) {
		pmc_gone_destroy(gone);
		return err < 0 ? err : -EINVAL;
	}
	*out = gone;
	return 0;
}

const void *pmc_gone_ring(const struct pmc_gone *gone)
{
	return gone->ring;
}

int pmc_read_kernel_tables(unsigned int state_n, unsigned int events_n,
			   unsigned int *state_out, unsigned int *events_out,
			   unsigned int *got_state, unsigned int *got_events,
			   unsigned long long *psi_system)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts);
	struct memcg_tables *skel;
	unsigned int gs, ge;
	int err;

	*got_state = *got_events = 0;
	*psi_system = 0;
	if (state_n > 256 || events_n > 256)
		return -EINVAL;
	log_begin(NULL, 0);
	skel = memcg_tables__open();
	if (!skel) {
		err = -errno;
		log_end();
		return err;
	}
	skel->rodata->tbl_state_n = state_n;
	skel->rodata->tbl_events_n = events_n;
	err = memcg_tables__load(skel);
	log_end();
	if (err)
		goto out;
	if (bpf_prog_test_run_opts(bpf_program__fd(skel->progs.pmc_kernel_tables), &opts)) {
		err = -errno;
		goto out;
	}
	gs = skel->bss->got_state;
	ge = skel->bss->got_events;
	if (opts.retval || gs > state_n || ge > events_n) {
		err = -EIO;
		goto out;
	}
	memcpy(state_out, skel->bss->state_list, gs * sizeof(unsigned int));
	memcpy(events_out, skel->bss->events_list, ge * sizeof(unsigned int));
	*got_state = gs;
	*got_events = ge;
	*psi_system = skel->bss->psi_system;
out:
	memcg_tables__destroy(skel);
	return err < 0 ? err : (err ? -EINVAL : 0);
}

/* --- BTF --- */

/*
 * The running kernel's BTF, parsed once per process. libbpf parses
 * /sys/kernel/btf/vmlinux (megabytes, some 100,000 types or more) anew for
 * every object it loads and frees it after, and finds a type by name by
 * walking every type: those two were most of a load's time in user space.
 * The extension is linked with --wrap for the three functions below
 * (csrc/build_config.py WRAPPED_LIBBPF, and the Makefile for memcg_bench),
 * so every load, and pmc_btf_open(NULL), gets the one parse and an index of
 * its names. A running kernel's BTF never changes, libbpf only reads it
 * (module BTFs, which come and go, are split off it and still parsed per
 * load), and it is kept for the process's lifetime: installed with a
 * compare-and-swap, no lock (nothing to hold across fork), a racing
 * parse freed.
 */
struct btf *__real_btf__load_vmlinux_btf(void);
void __real_btf__free(struct btf *btf);
__s32 __real_btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);

/* (name, kind) -> the lowest type id of that name and kind, open
 * addressing; an empty entry has id 0 (type 0 is void, never indexed) */
struct name_index {
	unsigned int mask;
	unsigned int id[];
};

static struct btf *vmlinux_btf;
static struct name_index *vmlinux_index;

static unsigned int name_hash(const char *name, unsigned int kind)
{
	unsigned int h = 2166136261u ^ kind;	/* FNV-1a */

	while (*name)
		h = (h ^ (unsigned char)*name++) * 16777619u;
	return h;
}

/* the entry of (name, kind) in idx: its id, or an empty one to fill */
static unsigned int *index_slot(struct name_index *idx, const struct btf *btf,
				const char *name, unsigned int kind)
{
	unsigned int i;

	for (i = name_hash(name, kind) & idx->mask; idx->id[i]; i = (i + 1) & idx->mask) {
		const struct btf_type *t = btf__type_by_id(btf, idx->id[i]);

		if (btf_kind(t) == kind && !strcmp(btf__name_by_offset(btf, t->name_off), name))
			break;
	}
	return &idx->id[i];
}

static const char *type_name_of(const struct btf *btf, unsigned int id)
{
	const char *name = btf__name_by_offset(btf, btf__type_by_id(btf, id)->name_off);

	return name && name[0] ? name : NULL;
}

static struct name_index *index_names(const struct btf *btf)
{
	unsigned int n = btf__type_cnt(btf), named = 0, size = 1024, id;
	struct name_index *idx;

	for (id = 1; id < n; id++)
		named += type_name_of(btf, id) != NULL;
	while (size < 2 * named)	/* at most half full: short probes */
		size *= 2;
	idx = calloc(1, sizeof(*idx) + (size_t)size * sizeof(idx->id[0]));
	if (!idx)
		return NULL;
	idx->mask = size - 1;
	for (id = 1; id < n; id++) {
		const char *name = type_name_of(btf, id);
		unsigned int *slot;

		if (!name)
			continue;
		slot = index_slot(idx, btf, name, btf_kind(btf__type_by_id(btf, id)));
		if (!*slot)	/* else a lower id has that name and kind */
			*slot = id;
	}
	return idx;
}

struct btf *__wrap_btf__load_vmlinux_btf(void)
{
	struct btf *btf = __atomic_load_n(&vmlinux_btf, __ATOMIC_ACQUIRE), *none = NULL;

	if (btf)
		return btf;
	btf = __real_btf__load_vmlinux_btf();
	if (!btf)
		return NULL;	/* errno says why */
	if (!__atomic_compare_exchange_n(&vmlinux_btf, &none, btf, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		__real_btf__free(btf);
		btf = none;
	}
	return btf;
}

void __wrap_btf__free(struct btf *btf)
{
	if (btf && btf == __atomic_load_n(&vmlinux_btf, __ATOMIC_ACQUIRE))
		return;
	__real_btf__free(btf);
}

__s32 __wrap_btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind)
{
	struct name_index *idx, *none = NULL;
	unsigned int id;

	if (!btf || btf != __atomic_load_n(&vmlinux_btf, __ATOMIC_ACQUIRE) ||
	    kind == BTF_KIND_UNKN || !strcmp(type_name, "void"))
		return __real_btf__find_by_name_kind(btf, type_name, kind);
	idx = __atomic_load_n(&vmlinux_index, __ATOMIC_ACQUIRE);
	if (!idx) {
		idx = index_names(btf);
		if (!idx)
			return __real_btf__find_by_name_kind(btf, type_name, kind);
		if (!__atomic_compare_exchange_n(&vmlinux_index, &none, idx, false,
						 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			free(idx);
			idx = none;
		}
	}
	id = *index_slot(idx, btf, type_name, kind);
	if (id)
		return id;
	errno = ENOENT;	/* as libbpf's own walk says it */
	return -ENOENT;
}

struct pmc_btf {
	struct btf *btf;
};

int pmc_btf_open(const char *path, struct pmc_btf **out)
{
	struct pmc_btf *b;
	int err;

	*out = NULL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->btf = path ? btf__parse(path, NULL) : btf__load_vmlinux_btf();
	err = libbpf_get_error(b->btf);
	if (err) {
		free(b);
		return err < 0 ? err : -err;
	}
	*out = b;
	return 0;
}

void pmc_btf_close(struct pmc_btf *b)
{
	if (!b)
		return;
	btf__free(b->btf);
	free(b);
}

int pmc_btf_enum(struct pmc_btf *b, const char *enum_name, char *out, size_t out_size)
{
	const struct btf_type *t;
	const struct btf_enum *e;
	size_t len = 0;
	int id, i, n;

	id = btf__find_by_name_kind(b->btf, enum_name, BTF_KIND_ENUM);
	if (id < 0)
		return -ENOENT;
	t = btf__type_by_id(b->btf, id);
	e = btf_enum(t);
	for (i = 0; i < btf_vlen(t); i++, e++) {
		n = snprintf(out + len, out_size - len, "%s %d\n",
			     btf__name_by_offset(b->btf, e->name_off), e->val);
		if (n < 0 || (size_t)n >= out_size - len)
			return -ENOSPC;
		len += n;
	}
	return (int)len;
}

static long member_size(const struct btf *btf, const struct btf_type *t, const char *member)
{
	const struct btf_member *m = btf_members(t);
	int i;

	for (i = 0; i < btf_vlen(t); i++, m++) {
		const char *name = btf__name_by_offset(btf, m->name_off);

		if (name && name[0] && !strcmp(name, member))
			return btf__resolve_size(btf, m->type);
		if (!name || !name[0]) {	/* anonymous struct or union */
			const struct btf_type *mt = btf__type_by_id(btf, btf__resolve_type(btf, m->type));
			long sz;

			if (mt && (btf_is_struct(mt) || btf_is_union(mt))) {
				sz = member_size(btf, mt, member);
				if (sz >= 0)
					return sz;
			}
		}
	}
	return -ENOENT;
}

long pmc_btf_member_size(struct pmc_btf *b, const char *struct_name, const char *member)
{
	int id = btf__find_by_name_kind(b->btf, struct_name, BTF_KIND_STRUCT);

	if (id < 0)
		return -ENOENT;
	return member_size(b->btf, btf__type_by_id(b->btf, id), member);
}

int pmc_btf_has_func(struct pmc_btf *b, const char *name)
{
	return btf__find_by_name_kind(b->btf, name, BTF_KIND_FUNC) >= 0;
}

/* OOM kill events (compiled here for the log capture above) */
#include "pmc_oom.c"
