#!/usr/bin/env bash
# Runs the README's two commands, word for word, on a pristine Debian 12 root:
# what a new user gets on a fresh machine, with nothing that earlier sessions
# installed by hand. Run as root; it takes tens of minutes (it is not a test).
#
#   bash scripts/check-fresh.sh            # both commands
#   bash scripts/check-fresh.sh 2          # only command 2 (or 1)
#
# How: debootstrap builds a minimal bookworm root from the Debian mirror apt is
# configured with (cached in $QKV_FRESH_CACHE, default /var/cache/qkv-check-fresh,
# and reused), a copy of it becomes the fresh machine ($QKV_FRESH_WORK, default
# /var/tmp/qkv-check-fresh), the current commit is cloned into it at /work/qkv
# with ../shared beside it (read-only, as CI has it), and each command runs in a
# chroot with /proc, /sys and /dev mounted (unmounted on exit, failure or not).
# Into the root go only apt's source and Acquire settings, the resolver, and pip's
# configuration with the files and directories it names (local wheels and
# indexes, read-only; its CA bundle, copied after the root's ca-certificates).
# Each command's output is in $QKV_FRESH_WORK/commandN.log; the script prints
# each one's exit status and time, and exits non-zero if either failed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$repo/../shared" && pwd)
cache=${QKV_FRESH_CACHE:-/var/cache/qkv-check-fresh}
work=${QKV_FRESH_WORK:-/var/tmp/qkv-check-fresh}
root=$work/root
if (($#)); then which_commands=("$@"); else which_commands=(1 2); fi

say() { printf 'check-fresh: %s\n' "$*"; }
die() { printf 'check-fresh: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"

# The README's two commands: the non-comment lines of its first ```sh block.
mapfile -t readme_commands < <(awk '/^```sh$/ {inside = 1; next} inside && /^```$/ {exit}
                                    inside && NF && !/^#/' "$repo/README.md")
((${#readme_commands[@]} == 2)) ||
  die "expected 2 commands in README.md's first sh block, found ${#readme_commands[@]}"

if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The Debian mirror apt is configured with (deb822 or one-line format).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[[ -n $mirror ]] || mirror=http://deb.debian.org/debian

# The cached pristine root: minbase plus ca-certificates (pip's bundle is copied
# over the root's own below).
if [[ ! -f $cache/root/.qkv-complete ]]; then
  say "building the pristine Debian 12 root from $mirror (cached in $cache)"
  rm -rf "$cache/root.partial"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$cache/root.partial" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 || die "debootstrap failed; see $cache/debootstrap.log"
  touch "$cache/root.partial/.qkv-complete"
  mv "$cache/root.partial" "$cache/root"
fi

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
  done
  mounts=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount_at() {  # mount_at TARGET MOUNT-ARGS...: mounts and remembers it for cleanup
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounts+=("$target")
}
bind_ro() {  # bind_ro SOURCE TARGET
  mount_at "$2" --bind "$1"
  mount -o remount,bind,ro "$2"
}

say "laying a fresh root in $root"
if [[ -d $root ]]; then
  grep -q " $root/" /proc/mounts && die "something is still mounted under $root; unmount it first"
  rm -rf "$root"
fi
mkdir -p "$work"
cp -a "$cache/root" "$root"
rm -f "$root/.qkv-complete"

# apt: the host's Debian sources and its Acquire settings (e.g. a snapshot
# mirror's Valid-Until); nothing else of the host's configuration.
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
  : >"$root/etc/apt/sources.list"
fi
for f in /etc/apt/apt.conf.d/*; do
  grep -q '^Acquire::' "$f" 2>/dev/null && cp "$f" "$root/etc/apt/apt.conf.d/"
done
cp /etc/resolv.conf "$root/etc/resolv.conf"

# pip: its configuration files, its PIP_* variables, and what they name.
pip_env=()
while IFS= read -r line; do pip_env+=("$line"); done < <(env | grep '^PIP_' || true)
pip_values=$(printf '%s\n' "${pip_env[@]#*=}")
for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
  [[ -f $f ]] || continue
  mkdir -p "$root$(dirname "$f")"
  cp "$f" "$root$f"
  pip_values+=$'\n'$(sed -n -e 's/^[^#;[[:space:]][^=]*=//p' -e 's/^[[:space:]]\+//p' "$f")
done
for value in $pip_values; do
  path=${value#file://}
  [[ $path == /* && -e $path ]] || continue
  path=${path%/simple}; path=${path%/}
  if [[ -d $path ]]; then
    grep -q " $root$path " /proc/mounts || bind_ro "$path" "$root$path"
  else
    mkdir -p "$root$(dirname "$path")"
    cp "$path" "$root$path"
  fi
done

# The current commit, cloned, with ../shared beside it.
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
  say "note: uncommitted changes are not part of this check (it clones HEAD)"
fi
commit=$(git -C "$repo" rev-parse HEAD)
git clone -q --no-hardlinks "$repo" "$root/work/qkv"
git -C "$root/work/qkv" checkout -q --detach "$commit"
bind_ro "$shared" "$root/work/shared"

mount_at "$root/proc" -t proc proc
mount_at "$root/sys" -t sysfs sysfs
mount_at "$root/dev" --bind /dev
mount_at "$root/dev/pts" --bind /dev/pts
mount_at "$root/dev/shm" -t tmpfs tmpfs

status=0
say "commit $(git -C "$repo" log -1 --format='%h %s' | cut -c1-80)"
for n in "${which_commands[@]}"; do
  [[ $n == 1 || $n == 2 ]] || die "unknown command number '$n' (expected 1 or 2)"
  command=${readme_commands[n - 1]}
  log=$work/command$n.log
  say "command $n: $command"
  start=$(date +%s)
  set +e
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${pip_env[@]}" \
    /bin/bash -c "cd /work/qkv && $command" </dev/null >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(($(date +%s) - start))
  printf 'check-fresh: command %s: exit %d in %dm%02ds (log: %s)\n' "$n" "$rc" \
    $((elapsed / 60)) $((elapsed % 60)) "$log"
  if ((rc != 0)); then
    status=1
    tail -n 30 "$log" | sed 's/^/  | /'
  fi
done
((status == 0)) && say "passed" || say "FAILED"
exit $status
