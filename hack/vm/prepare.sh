#!/usr/bin/env bash
# Prepares the test VM: a stock Debian kernel (which has IPVS, dummy, ipip, wireguard as modules) booted under
# qemu with a busybox initramfs that runs one payload from the host share (see init.sh and internal/testsupport/vmtest). The
# same kernel and initramfs also boot a lab node on the lab's fabric (init.sh's node mode, e2e/lab/vmnode.go).
#
# Idempotent and cached under ${CANOPY_CACHE:-/var/cache/canopy}/vm: a second run only checks a stamp. Prints the
# cache dir on stdout (logs go to stderr). Needs root only when something must be installed or built.
#
#   CANOPY_VM_REFRESH=1   look for a newer kernel package (normally the one already prepared is kept)
#   CANOPY_VM_ACCEL=tcg|kvm  skip the KVM probe and force an accelerator
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM=${CANOPY_CACHE:-/var/cache/canopy}/vm
log() { echo "vm/prepare: $*" >&2; }
die() { log "$*"; exit 1; }

# The stamp names the kernel and hashes the inputs of the initramfs, so editing init.sh or this script rebuilds.
inputs_hash() { cat "$HERE/prepare.sh" "$HERE/init.sh" | sha256sum | cut -c1-16; }
stamp_ok() {
  [ -f "$VM/ready" ] && [ -f "$VM/vmlinux" ] && [ -f "$VM/initrd.cpio" ] && [ -f "$VM/accel" ] \
    && command -v qemu-system-x86_64 >/dev/null \
    && [ "$(sed -n 2p "$VM/ready")" = "$(inputs_hash)" ]
}

if [ "${CANOPY_VM_REFRESH:-}" != 1 ] && stamp_ok; then
  echo "$VM"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "the VM cache $VM is not ready and building it needs root (apt-get); run: sudo $0"
mkdir -p "$VM"
# One builder at a time (go test runs several test binaries at once, each may call this).
exec 9>"$VM/.lock"
flock -w 900 9 || die "timed out waiting for $VM/.lock"
if [ "${CANOPY_VM_REFRESH:-}" != 1 ] && stamp_ok; then
  echo "$VM"
  exit 0
fi
t0=$(date +%s)

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -o DPkg::Lock::Timeout=600 -q)
updated=0
apt_update() { [ $updated = 1 ] || { log "apt-get update"; "${APT[@]}" update -qq >&2; updated=1; }; }

# 1. Host packages.
PKGS=(qemu-system-x86 busybox-static cpio)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if ! "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt_update
    "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"
BB=/bin/busybox
[ -x $BB ] || die "$BB missing after installing busybox-static"

# 2. The kernel: the package linux-image-amd64 currently depends on, downloaded and unpacked, never installed.
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(kpkg || true)
if [ -z "$KPKG" ]; then apt_update; KPKG=$(kpkg || true); fi
if [ -z "$KPKG" ] && [ -f "$VM/kver" ]; then
  KPKG=linux-image-$(cat "$VM/kver")
  log "apt knows no linux-image-amd64; keeping $KPKG"
fi
[ -n "$KPKG" ] || die "cannot find the kernel package (apt-cache depends linux-image-amd64)"
KVER=${KPKG#linux-image-}
KROOT=$VM/kernel/$KVER
if [ ! -f "$KROOT/.extracted" ]; then
  tmp=$(mktemp -d "$VM/dl.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "downloading $KPKG"
  # apt-get download writes into the current directory; _apt cannot write there, which only warns.
  if ! (cd "$tmp" && "${APT[@]}" -o APT::Sandbox::User=root download "$KPKG" >&2 2>&1); then
    apt_update
    (cd "$tmp" && "${APT[@]}" -o APT::Sandbox::User=root download "$KPKG" >&2 2>&1)
  fi
  rm -rf "$KROOT"
  mkdir -p "$KROOT"
  dpkg-deb -x "$tmp"/*.deb "$KROOT"
  rm -rf "$tmp"
  trap - EXIT
  # Drop hardware drivers nothing in a VM test loads (~330 MB of 400 MB): keep virtio, virtual net devices,
  # char (hw_random, virtio_console) and block; everything under net/, fs/, lib/, crypto/, arch/ stays.
  M=$KROOT/lib/modules/$KVER/kernel
  rm -rf "$M/sound" "$KROOT/usr"
  for d in "$M"/drivers/*; do
    case ${d##*/} in virtio | net | char | block) ;; *) rm -rf "$d" ;; esac
  done
  for d in wireless ethernet usb can wwan ieee802154 hamradio arcnet appletalk fddi hippi wan plip slip \
    hyperv phy pcs mdio fjes vmxnet3 xen-netback; do rm -rf "${M:?}/drivers/net/$d"; done
  log "depmod"
  $BB depmod -b "$KROOT" "$KVER"
  touch "$KROOT/.extracted"
fi
# Node mode (init.sh canopy.ip=, a lab node that is a VM) loads these from the module tree at boot.
for m in virtio_net tun bridge br_netfilter ip_vs; do
  grep -q "/$m\.ko" "$KROOT/lib/modules/$KVER/modules.dep" || die "module $m missing from $KROOT"
done
# Older kernels go once the current one is ready.
for k in "$VM"/kernel/*; do [ "$k" = "$KROOT" ] || rm -rf "$k"; done

# 3. An uncompressed vmlinux (decompressing under emulation costs seconds per boot): the logic of the kernel's
# scripts/extract-vmlinux, find a compression magic in vmlinuz, decompress from there, keep the first ELF.
if [ ! -f "$VM/vmlinux" ] || [ "$(cat "$VM/kver" 2>/dev/null)" != "$KVER" ]; then
  img=$KROOT/boot/vmlinuz-$KVER
  out=$VM/vmlinux.tmp
  is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }
  found=0
  try() { # magic (grep -P bytes) decompressor...
    local magic=$1; shift
    local off
    for off in $(grep -aboP "$magic" "$img" | cut -d: -f1); do
      tail -c +$((off + 1)) "$img" | "$@" >"$out" 2>/dev/null || true
      if is_elf "$out"; then found=1; return 0; fi
    done
    return 1
  }
  try '\x1f\x8b\x08' gzip -dc || try '\xfd\x37\x7a\x58\x5a\x00' xz -dc \
    || try '\x28\xb5\x2f\xfd' zstd -dc || try '\x5d\x00\x00\x00' xz -dc --format=lzma \
    || try '\x02\x21\x4c\x18' lz4 -dc || try 'BZh' bzip2 -dc || true
  [ $found = 1 ] || die "could not extract an ELF vmlinux from $img"
  mv "$out" "$VM/vmlinux"
  echo "$KVER" >"$VM/kver"
fi

# 4. The initramfs: static busybox, init.sh, and only the modules needed to reach the host share (the rest of
# the module tree is bind-mounted from the host at boot).
log "building initrd.cpio"
IR=$(mktemp -d "$VM/initrd.XXXXXX")
trap 'rm -rf "$IR"' EXIT
mkdir -p "$IR"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,host,newroot,upper,lib/modules/"$KVER"}
cp $BB "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
ln -s ../bin/busybox "$IR/sbin/modprobe" # the kernel's request_module() runs /sbin/modprobe
install -m 0755 "$HERE/init.sh" "$IR/init"
MD=$KROOT/lib/modules/$KVER
closure() { # module names -> relative paths of them and their dependencies, from modules.dep
  awk -v want="$*" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { gsub("-", "_", w[i]); need[w[i]] = 1 } }
    { f = $1; sub(":$", "", f); m = f; sub(".*/", "", m); sub("\\.ko.*$", "", m); gsub("-", "_", m);
      path[m] = f; line[m] = $0 }
    END {
      changed = 1
      while (changed) { changed = 0
        for (m in need) { k = split(line[m], p, " ")
          for (i = 2; i <= k; i++) { d = p[i]; sub(".*/", "", d); sub("\\.ko.*$", "", d); gsub("-", "_", d)
            if (!(d in need)) { need[d] = 1; changed = 1 } } } }
      for (m in need) if (m in path) print path[m]; else print "MISSING " m > "/dev/stderr"
    }' "$MD/modules.dep"
}
for f in $(closure virtio_pci 9pnet_virtio 9p overlay); do
  mkdir -p "$IR/lib/modules/$KVER/$(dirname "$f")"
  cp "$MD/$f" "$IR/lib/modules/$KVER/$f"
done
cp "$MD"/modules.* "$IR/lib/modules/$KVER/"
(cd "$IR" && find . -print0 | cpio --null -o -H newc --quiet) >"$VM/initrd.cpio.tmp"
mv "$VM/initrd.cpio.tmp" "$VM/initrd.cpio"
rm -rf "$IR"
trap - EXIT

# 5. Accelerator: KVM only if a probe boot works (a nested /dev/kvm often cannot boot a stock kernel).
boot() { # accel cpu timeout -> 0 if the guest ran a payload and reported its exit code
  local accel=$1 cpu=$2 to=$3 d rc=0
  d=$(mktemp -d "${TMPDIR:-/tmp}/canopy-vmprobe.XXXXXX")
  printf '#!/bin/bash\nexit 0\n' >"$d/job.sh"
  timeout -s KILL "$to" qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m 1024 -smp 2 -nodefaults \
    -display none -no-reboot -nic none -kernel "$VM/vmlinux" -initrd "$VM/initrd.cpio" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -serial "file:$d/console" -serial null -serial null -serial "file:$d/ctl" \
    -append "console=ttyS0 quiet panic=-1 mitigations=off canopy.job=$d/job.sh canopy.modules=$MD" \
    </dev/null >"$d/qemu.log" 2>&1 || rc=$?
  if grep -q '^CANOPY-EXIT=0' "$d/ctl" 2>/dev/null; then rm -rf "$d"; return 0; fi
  log "probe boot ($accel) failed (qemu rc $rc); console tail:"
  tail -n 20 "$d/console" "$d/qemu.log" >&2 || true
  rm -rf "$d"
  return 1
}
# The probe's answer is kept per kernel and qemu version (rebuilding the initramfs does not probe again).
accel=${CANOPY_VM_ACCEL:-}
probe_key="$KVER $(qemu-system-x86_64 --version | head -n1)"
if [ -z "$accel" ] && [ -f "$VM/accel.probe" ] && [ "$(sed -n 2p "$VM/accel.probe")" = "$probe_key" ]; then
  accel=$(sed -n 1p "$VM/accel.probe")
fi
if [ -z "$accel" ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    log "probing KVM (a hang here is expected on nested KVM; 15 s at most)"
    if boot kvm max 15 2>/dev/null; then accel=kvm; fi
  fi
  printf '%s\n%s\n' "$accel" "$probe_key" >"$VM/accel.probe"
fi
s=$(date +%s%N)
if ! boot "$accel" max 120; then
  [ "$accel" = tcg ] && die "the VM does not boot"
  accel=tcg
  boot tcg max 120 || die "the VM does not boot"
fi
log "boot to power-off with $accel: $((($(date +%s%N) - s) / 1000000)) ms"
echo "$accel" >"$VM/accel"

printf '%s\n%s\n' "$KVER" "$(inputs_hash)" >"$VM/ready"
log "ready in $(($(date +%s) - t0)) s: $(du -sh "$VM" | cut -f1) in $VM"
echo "$VM"
