#!/usr/bin/env bash
# Installs what `npm run bench` measures against and with, from Debian packages, when missing:
# nginx (upstream and reverse-proxy rows), Apache with mod_auth_openidc (the peer row), wrk (HTTP load),
# h2load from nghttp2-client (gRPC load: wrk has no HTTP/2), openssl (the JWKS server's certificate) and
# redis-server (row 5r, sessions in Redis).
set -euo pipefail
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v apache2 >/dev/null || need+=(apache2)
[ -e /usr/lib/apache2/modules/mod_auth_openidc.so ] || need+=(libapache2-mod-auth-openidc)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bench: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
