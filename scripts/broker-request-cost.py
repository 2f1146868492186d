#!/usr/bin/env python3
"""Broker CPU of what an idle consumer asks (issue 16, item 5): a fresh tansu broker (sqlite
storage, $TANSU_BIN) with 4 empty partitions (2 + 1 + 1, as topology/local.toml), asked every
100 ms by librdkafka (confluent-kafka) in one of these ways, for SECONDS each:

  none         nothing (the broker's own idle cost)
  ends         ListOffsets(latest) for the 4 partitions in one request
  ends-each    ListOffsets(latest), one request per partition (what rskafka sends)
  fetch        one consumer fetching the 4 partitions (fetch.wait.max.ms=100)

Prints the broker's CPU (% of one core) and requests per second for each.

    .ddnn/pyenv/bin/python scripts/broker-request-cost.py [SECONDS]   (default 20)
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
HZ = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    tansu = os.environ.get("TANSU_BIN") or os.path.expanduser("~/.cache/ddnn/tansu/bin/tansu")
    port = free_port()
    bs = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ddnn-request-cost.") as d:
        url = f"tcp://{bs}"
        broker = subprocess.Popen(
            [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "sqlite://t.db"],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            admin = AdminClient({"bootstrap.servers": bs})
            for f in admin.create_topics([NewTopic("x.a", 2, 1), NewTopic("x.b", 1, 1), NewTopic("x.c", 1, 1)]).values():
                f.result()
            time.sleep(2)
            tps = [TopicPartition("x.a", 0), TopicPartition("x.a", 1), TopicPartition("x.b", 0), TopicPartition("x.c", 0)]
            for mode in ["none", "ends", "ends-each", "fetch"]:
                consumer = None
                if mode == "fetch":
                    consumer = Consumer({"bootstrap.servers": bs, "group.id": "g", "fetch.wait.max.ms": 100,
                                         "enable.auto.commit": False})
                    consumer.assign([TopicPartition(t.topic, t.partition, 0) for t in tps])
                    consumer.poll(1)
                time.sleep(2)
                t0, s0, n = ticks(broker.pid), time.time(), 0
                while time.time() - s0 < SECS:
                    if mode == "ends":
                        for f in admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=5).values():
                            f.result()
                        n += 1
                    elif mode == "ends-each":
                        for tp in tps:
                            for f in admin.list_offsets({tp: OffsetSpec.latest()}, request_timeout=5).values():
                                f.result()
                            n += 1
                    if mode == "fetch":
                        consumer.poll(0.1)
                    else:
                        time.sleep(0.1)
                el = time.time() - s0
                rate = f"{n / el:.1f} requests/s" if mode.startswith("ends") else ("fetch.wait.max.ms 100" if mode == "fetch" else "-")
                print(f"{mode:10s} broker {(ticks(broker.pid) - t0) / HZ / el * 100:4.1f} % of a core over {el:.0f} s, {rate}")
                if consumer:
                    consumer.close()
        finally:
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    main()
