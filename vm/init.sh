#!/bin/busybox sh
# /init of the matrix guests' initramfs (busybox-static). vm/initramfs.py puts
# this file, busybox, the kernel modules the guest needs (lib/modules/*.ko,
# decompressed, loaded in the order of lib/modules/order) and etc/matrix.conf
# into the cpio.
#
# It mounts the host's root filesystem, shared read-only over virtiofs (tag
# hostroot; one directory of it, $MATRIX_OUT, is writable: the results go
# there; a guest of another architecture chroots into its own userland,
# $MATRIX_ROOT, a directory of that share), gives it fresh kernel filesystems, the cgroup hierarchy this guest
# tests ($MATRIX_CGROUP: 1 or 2) and a scratch ext4 disk on /var/tmp, then
# chroots into it and runs vm/guest_run.py with the host's Python and the
# host's pymemcg install. Lines starting "MATRIX:" on the console are for
# vm/results.py. The guest always ends with reboot -f (qemu runs -no-reboot,
# so that exits qemu).

/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

fail() {
	echo "MATRIX: GUEST-ERROR $*"
	sync
	reboot -f
	sleep 60
}

. /etc/matrix.conf || fail "no /etc/matrix.conf"

echo "MATRIX: BOOTED $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"

if [ -f /lib/modules/order ]; then
	for m in $(cat /lib/modules/order); do
		insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
	done
	echo "MATRIX: MODULES $(cat /lib/modules/order | tr '\n' ' ')"
else
	echo "MATRIX: MODULES none (everything the guest needs is built in)"
fi

R=/newroot
mkdir -p $R
# virtiofs appears once the virtio-pci device has been probed
for i in $(seq 1 100); do
	mount -t virtiofs hostroot $R 2>/dev/null && break
	sleep 0.1
done
grep -q " $R virtiofs " /proc/mounts ||
	fail "cannot mount the virtiofs share hostroot (no virtio-pci or virtiofs in this kernel?)"
# a guest of another architecture runs its own userland, a directory of the
# share (vm/userland.py), with the repository and the result directory bound in
if [ -n "$MATRIX_ROOT" ]; then
	mkdir -p /userland
	mount -o bind "$R$MATRIX_ROOT" /userland || fail "cannot bind $MATRIX_ROOT"
	for p in "$MATRIX_REPO" "$MATRIX_OUT"; do
		mount -o bind "$R$p" "/userland$p" || fail "cannot bind $p into $MATRIX_ROOT"
	done
	R=/userland
fi
chroot $R /bin/sh -c "test -x '$MATRIX_PYTHON'" || fail "$MATRIX_PYTHON not found in the shared root"

# Host paths the run needs (the checkout, its venv) that the mounts below
# would hide, e.g. a checkout under /tmp: held aside, bound back afterwards.
mkdir -p /keep
echo "$MATRIX_KEEP" | tr ':' '\n' | grep -v '^$' > /keep/list
i=0
while read -r p; do
	i=$((i + 1))
	mkdir -p /keep/$i
	mount -o bind "$R$p" /keep/$i || fail "cannot hold $p aside"
done < /keep/list

mount -t proc proc $R/proc || fail "mount proc"
mount -t sysfs sysfs $R/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "mount devtmpfs"
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm || fail "mount /dev/shm"
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "mount /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "mount /run"
# the workloads' page cache goes to a real block device, as on a host
# (NVMe: built into every Debian cloud kernel, so no module is needed)
for i in $(seq 1 50); do [ -b "$MATRIX_SCRATCH" ] && break; sleep 0.1; done
mount -t ext4 "$MATRIX_SCRATCH" $R/var/tmp ||
	fail "cannot mount the scratch disk $MATRIX_SCRATCH on /var/tmp (no NVMe or ext4 in this kernel?)"
chmod 1777 $R/var/tmp
mount -t bpf bpf $R/sys/fs/bpf || fail "mount bpffs"
i=0
while read -r p; do
	i=$((i + 1))
	mkdir -p "$R$p"
	mount -o bind /keep/$i "$R$p" || fail "cannot bind $p back"
done < /keep/list

case "$MATRIX_CGROUP" in
2)
	mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "mount cgroup2"
	echo +memory > $R/sys/fs/cgroup/cgroup.subtree_control ||
		fail "cannot enable +memory in the cgroup2 root"
	;;
1)
	mount -t tmpfs -o mode=755 cgroup $R/sys/fs/cgroup || fail "mount tmpfs on /sys/fs/cgroup"
	mkdir -p $R/sys/fs/cgroup/memory
	mount -t cgroup -o memory cgroup $R/sys/fs/cgroup/memory ||
		fail "mount the cgroup v1 memory hierarchy (is CONFIG_MEMCG_V1 off?)"
	;;
*)
	fail "MATRIX_CGROUP must be 1 or 2, not '$MATRIX_CGROUP'"
	;;
esac

echo "MATRIX: RUNNING uptime $(cut -d' ' -f1 /proc/uptime)"
# A clean environment: nothing may write into the read-only root, so HOME,
# TMPDIR, caches and hypothesis' storage all go to /tmp.
if [ -n "$MATRIX_CMD" ]; then   # vm/matrix.py shell COMMAND: a debugging command instead
	set -- /bin/sh -c "cd $MATRIX_REPO && $MATRIX_CMD"
else
	set -- "$MATRIX_PYTHON" "$MATRIX_REPO/vm/guest_run.py" \
		--repo "$MATRIX_REPO" --out "$MATRIX_OUT/result.json" --where "$MATRIX_WHERE" \
		--timeout "$MATRIX_TEST_TIMEOUT" $MATRIX_RUN_ARGS
fi
chroot $R /usr/bin/env -i \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 \
	PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
	HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis XDG_CACHE_HOME=/tmp/cache \
	PYMEMCG_REQUIRE_BPF=1 \
	"$@"
rc=$?
echo "MATRIX: DONE rc=$rc uptime $(cut -d' ' -f1 /proc/uptime)"
umount $R/var/tmp 2>/dev/null
sync
reboot -f
sleep 60
