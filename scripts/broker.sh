#!/usr/bin/env bash
# Starts/stops a local tansu broker with durable sqlite storage on loopback.
#   scripts/broker.sh start [--port 9092] [--data .ddnn/broker]
#   scripts/broker.sh stop|status [--data .ddnn/broker]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .ddnn/env ] && . .ddnn/env
cmd=${1:-status}; shift || true
PORT=9092; DATA=.ddnn/broker
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TANSU=${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}
PIDFILE="$DATA/broker.pid"
alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

case "$cmd" in
  start)
    if alive; then echo "broker already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    [ -x "$TANSU" ] || { echo "tansu not found at $TANSU: run scripts/setup.sh" >&2; exit 1; }
    if port_open; then echo "port $PORT is already taken by another process" >&2; exit 1; fi
    mkdir -p "$DATA"
    url="tcp://127.0.0.1:$PORT"
    (cd "$DATA" && exec "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine sqlite://tansu.db >broker.log 2>&1) &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 200); do
      if port_open; then echo "broker on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), data $DATA)"; exit 0; fi
      alive || { echo "broker exited; log:" >&2; cat "$DATA/broker.log" >&2; exit 1; }
      sleep 0.05
    done
    echo "broker did not open port $PORT within 10 s" >&2; exit 1 ;;
  stop)
    if alive; then
      pid=$(cat "$PIDFILE"); kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
      echo "broker stopped"
    fi
    rm -f "$PIDFILE" ;;
  status)
    if alive; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status [--port P] [--data DIR]" >&2; exit 2 ;;
esac
