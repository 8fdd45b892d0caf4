#!/bin/sh
# PID 1 of the CRX nested lab host (installed as /sbin/crx-lab-init by `cargo xtask`).
# The host passes everything on the kernel command line:
#   crxlab.shares=tag:/path,...   9p shares, mounted at the same path as on the host
#   crxlab.probe=/path/xtask      run `xtask kvm-probe` before the command ("-" to skip)
#   crxlab.cmd=BASE64             the shell command to run as root
# The host reads CRX-LAB-BEGIN / CRX-LAB-EXIT <status> markers from the console.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
hostname crx-lab
ip link set lo up 2>/dev/null

param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | head -n 1; }

finish() {
    echo "CRX-LAB-EXIT $1"
    sync
    busybox reboot -f
    sleep 10
}

for share in $(param crxlab.shares | tr ',' ' '); do
    tag=${share%%:*}
    dir=${share#*:}
    mkdir -p "$dir"
    if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap "$tag" "$dir"; then
        echo "crx-lab: mounting share $tag at $dir failed"
        finish 125
    fi
done

# Directories inside a share that must be the lab host's own: podman and containerd start
# crx-runc without the lab's environment, so it keeps VM templates at the cache's default path,
# which would put every clone's memory file on 9p. An empty directory of the root disk goes over
# each.
for dir in $(param crxlab.local | tr ',' ' '); do
    own=/var/lib/crx-lab-local$dir
    if ! mkdir -p "$own" "$dir" || ! mount --bind "$own" "$dir"; then
        echo "crx-lab: cannot put a directory of the lab's disk over $dir"
        finish 125
    fi
done

probe=$(param crxlab.probe)
if [ -n "$probe" ] && [ "$probe" != "-" ]; then
    if ! "$probe" kvm-probe; then
        echo "crx-lab: the lab host has no usable /dev/kvm; its kernel said:"
        dmesg | grep -iE 'kvm|svm|vmx' | tail -n 20
        finish 125
    fi
fi

param crxlab.cmd | base64 -d > /tmp/crx-lab-cmd.sh
echo "CRX-LAB-BEGIN"
sh /tmp/crx-lab-cmd.sh </dev/null
finish $?
