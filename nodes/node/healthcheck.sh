#!/bin/bash
# The container health check: GET one of the node's HTTP paths (default /healthz) on its own
# metrics port and succeed only on 200, printing the body (the reason, when unhealthy).
# bash's /dev/tcp rather than curl: curl and its libraries were 11 MB of a 60 MB budget.
# Docker's healthcheck timeout bounds it; `timeout` does so for callers outside Docker.
set -u
path=${1:-/healthz}
port=${DDNN_HEALTH_PORT:-9464}
if ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
  echo "ddnn-healthcheck: nothing listens on 127.0.0.1:$port" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
if ! read -r _ code _ <&3; then
  echo "ddnn-healthcheck: no answer from 127.0.0.1:$port$path" >&2
  exit 1
fi
# The headers end at the first empty line; the body follows.
while IFS= read -r line <&3 && [ -n "${line%$'\r'}" ]; do :; done
cat <&3
echo
[ "$code" = 200 ]
