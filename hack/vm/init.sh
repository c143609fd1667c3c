#!/bin/sh
# Canopy test VM init: PID 1 of the initramfs hack/vm/prepare.sh builds (busybox ash). It runs one payload and
# powers off. From the kernel command line:
#   canopy.job=PATH      host path of a bash script (written by internal/testsupport/vmtest): the payload
#   canopy.modules=PATH  host path of the kernel's lib/modules/<version> (in the prepare cache)
# Node mode (a lab node that is this VM, e2e/lab/vmnode.go), only when given:
#   canopy.ip=ADDR/LEN   address of the virtio NIC eth0 (a tap on the lab ToR's bridge); IP forwarding on and
#                        br_netfilter loaded, like the lab's namespace nodes
#   canopy.hostname=NAME the hostname (default canopy-vm)
# The host's / is shared read-only over 9p (tag "host"); the payload runs under the host's bash, chrooted into
# an overlay of it whose writes land in a tmpfs, so host binaries run as they are and nothing reaches the host.
# Serial ports: ttyS0 console and this log, ttyS1 payload stdout, ttyS2 payload stderr, ttyS3 "CANOPY-EXIT=<n>".
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

log() { read -r up _ </proc/uptime; echo "canopy-init: [$up] $*" >/dev/ttyS0; }

# live_other sets $busy to a live user process other than init (none: empty). No subshells: they would count.
live_other() {
  busy=
  for p in /proc/[0-9]*; do
    n=${p#/proc/}
    [ "$n" = 1 ] && continue
    read -r st <"$p/stat" 2>/dev/null || continue
    st=${st##*) }
    set -- $st # state ppid pgrp session tty tpgid flags
    [ "$1" = Z ] && continue
    [ $(($7 & 0x200000)) -ne 0 ] && continue # PF_KTHREAD
    busy=$n
    return
  done
}

finish() {
  # Whatever the payload left behind dies; the last close of each serial port waits until it is transmitted.
  kill -9 -1 2>/dev/null
  i=0
  while [ $i -lt 200 ]; do
    live_other
    [ -z "$busy" ] && break
    sleep 0.01
    i=$((i + 1))
  done
  echo "CANOPY-EXIT=$1" >/dev/ttyS3
  sync
  poweroff -f
  sleep 30
}

arg() {
  for w in $(cat /proc/cmdline); do
    case $w in "canopy.$1="*) echo "${w#*=}" && return ;; esac
  done
}
JOB=$(arg job)
MODS=$(arg modules)
KVER=$(uname -r)
for t in 1 2 3; do stty -F /dev/ttyS$t raw -echo clocal 2>/dev/null; done

modprobe -a virtio_pci 9pnet_virtio 9p overlay || log "modprobe of the 9p modules failed"
i=0
until mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose host /host 2>/dev/null; do
  i=$((i + 1))
  if [ $i -ge 50 ]; then
    log "cannot mount the host share"
    finish 125
  fi
  sleep 0.1
done

log "host share mounted"
# The full module tree, from the cache on the host; the kernel's request_module() uses /sbin/modprobe here.
if [ -n "$MODS" ] && [ -d "/host$MODS" ]; then
  mount --bind "/host$MODS" "/lib/modules/$KVER"
else
  log "no module tree at /host$MODS: only the initramfs modules are available"
fi
modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh nf_conntrack nf_nat veth dummy \
  ip_tables iptable_filter iptable_nat nf_tables nft_compat nft_chain_nat xt_MASQUERADE xt_mark xt_comment \
  xt_conntrack xt_addrtype 2>/dev/ttyS0 || log "some modules did not load"

log "modules loaded"
# A writable view of the host: overlay with its upper layer in a tmpfs (so /tmp is writable and still shows the
# host's /tmp, where go test keeps test binaries).
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
if ! mount -t overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w overlay /newroot; then
  log "overlay failed: read-only root, tmpfs /run only"
  mount --bind /host /newroot
fi
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run # fresh: the host's /run (its netns files, locks) means nothing here
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
if [ -d "/lib/modules/$KVER/kernel" ]; then
  mkdir -p "$R/lib/modules/$KVER" && mount --bind "/lib/modules/$KVER" "$R/lib/modules/$KVER"
fi
# Programs that load modules themselves (moby/ipvs, iptables-legacy) find busybox's modprobe if the host has none.
if [ ! -e $R/sbin/modprobe ] && [ ! -e $R/usr/sbin/modprobe ]; then
  mkdir -p $R/usr/sbin && cp /bin/busybox $R/usr/sbin/modprobe
fi
H=$(arg hostname)
hostname "${H:-canopy-vm}"
ip link set lo up
NODEIP=$(arg ip)
if [ -n "$NODEIP" ]; then
  modprobe -a virtio_net bridge br_netfilter 2>/dev/ttyS0 || log "node mode: some modules did not load"
  ip link set eth0 up && ip addr add "$NODEIP" dev eth0 || log "node mode: cannot configure eth0 with $NODEIP"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  log "node mode: eth0 $NODEIP"
fi

if [ -z "$JOB" ] || [ ! -f "$R$JOB" ]; then
  log "no payload (canopy.job=$JOB)"
  finish 126
fi
log "running $JOB"
chroot $R /bin/bash "$JOB" </dev/null >/dev/ttyS1 2>/dev/ttyS2
rc=$?
log "payload exited with $rc"
finish $rc
