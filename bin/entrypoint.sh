#!/bin/sh
# The image's entrypoint: the runtime settings measured for the sidecar (bench/pods.mjs, docs/performance.md),
# then the CLI. A manifest only overrides: a variable it sets wins, and NODE_OPTIONS it sets come after ours
# (for V8 flags the last one wins), so a manifest adding an unrelated flag keeps these.
set -eu

# The container's memory limit in bytes (cgroup v2, else v1), from the cgroup this process is in; empty
# when there is none.
memory_limit() {
  v2=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null || true)
  if [ -n "$v2" ] && [ -r "/sys/fs/cgroup$v2/memory.max" ]; then
    cat "/sys/fs/cgroup$v2/memory.max"
    return
  fi
  v1=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup 2>/dev/null || true)
  if [ -n "$v1" ] && [ -r "/sys/fs/cgroup/memory$v1/memory.limit_in_bytes" ]; then
    cat "/sys/fs/cgroup/memory$v1/memory.limit_in_bytes"
  fi
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
    # A limit at or above the machine's memory is no limit (cgroup v1 writes a huge number for none).
    total=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo) / 1024))
    if [ "$mib" -ge 64 ] && [ "$mib" -lt "$total" ]; then defaults="$defaults --max-old-space-size=$((mib / 2))"; fi
    ;;
esac
export NODE_OPTIONS="$defaults ${NODE_OPTIONS:-}"
# glibc's malloc makes up to 8 arenas per core for threads (libuv's pool, V8's GC helpers); two are enough
# for one event loop. No difference was measured under the benches' load; it bounds the worst case.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec node "$(dirname "$0")/authz-sidecar.js" "$@"
