#!/bin/sh
# The image's entrypoint: the runtime settings measured for the sidecar (bench/pods.mjs, docs/performance.md),
# then the CLI. A manifest only overrides: a variable it sets wins, and NODE_OPTIONS it sets come after ours
# (for V8 flags the last one wins), so a manifest adding an unrelated flag keeps these.
set -eu

# The container's memory limit in bytes, read where Node (libuv) reads it: this process's own cgroup (v2,
# then v1) under /sys/fs/cgroup, else the mount's root, which is the container's cgroup when the runtime
# mounts it there without a cgroup namespace. Empty when none is readable: every read may fail (a locked-down
# runtime, another layout) and only costs the default, never the start.
memory_limit() {
  v2=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null || true)
  v1=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup 2>/dev/null || true)
  for file in "/sys/fs/cgroup${v2:-/nonexistent}/memory.max" "/sys/fs/cgroup/memory${v1:-/nonexistent}/memory.limit_in_bytes" \
    /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
    if value=$(cat "$file" 2>/dev/null) && [ -n "$value" ]; then
      echo "$value"
      return 0
    fi
  done
  return 0
}

# V8's young generation: 2 MiB semi-spaces, from a sweep of the proxy and gRPC doors under their manifests'
# limits (docs/performance.md): 1 MiB was the slowest for both, 4 and 8 MiB added 3-10 MiB of peak RSS and
# no gain beyond the machine's noise.
defaults="--max-semi-space-size=2"
# V8's old generation: Node 26 sizes it at 262 MiB under any limit of 128-256 MiB, above the limit itself, so
# the heap would grow until the kernel kills the process instead of collecting. Capped at half the limit.
limit=$(memory_limit)
case "$limit" in
  '' | max | *[!0-9]*) ;;
  *)
    mib=$((limit / 1048576))
    # A limit at or above the machine's memory is no limit (cgroup v1 writes a huge number for none); when
    # the machine's memory cannot be read (or LXCFS shows the limit as it), the limit is trusted.
    total=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo 2>/dev/null || true)
    case "$total" in '' | *[!0-9]*) total=0 ;; *) total=$((total / 1024)) ;; esac
    if [ "$mib" -ge 64 ] && { [ "$total" -eq 0 ] || [ "$mib" -le "$total" ]; } && [ "$mib" -lt 1048576 ]; then
      defaults="$defaults --max-old-space-size=$((mib / 2))"
    fi
    ;;
esac
export NODE_OPTIONS="$defaults ${NODE_OPTIONS:-}"
# glibc's malloc makes up to 8 arenas per core for threads (libuv's pool, V8's GC helpers); two are enough
# for one event loop. No difference was measured under the benches' load; it bounds the worst case.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec node "$(dirname "$0")/authz-sidecar.js" "$@"
