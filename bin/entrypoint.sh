#!/bin/sh
# The image's entrypoint: the runtime settings measured for the sidecar (bench/pods.mjs, docs/performance.md),
# then the CLI. A manifest only overrides: a variable it sets wins, and NODE_OPTIONS it sets come after ours
# (for V8 flags the last one wins), so a manifest adding an unrelated flag keeps these.
set -eu
# glibc's malloc makes up to 8 arenas per core for threads (libuv's pool, V8's GC helpers); two are enough
# for one event loop and keep freed memory from spreading across arenas.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
export NODE_OPTIONS="--max-semi-space-size=2 ${NODE_OPTIONS:-}"
exec node "$(dirname "$0")/authz-sidecar.js" "$@"
