#!/usr/bin/env python3
"""confluent-kafka (librdkafka) side of scripts/compare-brokers.sh.

    broker-durability.py produce BROKER TOPIC ACKED_FILE [--seconds 6]
        creates TOPIC (1 partition), sends the numbers 0, 1, 2... as fast as the client can
        (acks=all) for SECONDS, then flushes; writes every number whose delivery report came
        back without error to ACKED_FILE (one a line) and prints the counts. The broker is
        meant to be killed while this runs: what was not acknowledged fails after
        message.timeout.ms.
    broker-durability.py read BROKER TOPIC ACKED_FILE [--label L]
        reads TOPIC from the beginning (until 5 s pass with nothing new) and compares with
        ACKED_FILE: acknowledged, readable, lost (acknowledged but not readable), duplicates,
        readable but never acknowledged.
    broker-durability.py rate BROKER [--batches 1,10,100,500] [--seconds 5] [--label L]
        produce throughput (acks=all, records acknowledged per second) on a fresh 1-partition
        topic per batch size B: one request in flight, B records of 100 bytes per request
        (batch.num.messages=B, a long linger so that every request is full).
    broker-durability.py interop BROKER [--label L]
        produce 100 records to a 2-partition topic, consume them in a consumer group
        (subscribe), commit, read the committed offsets back: yes/no for each step.
"""
import argparse
import sys
import time

try:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as e:  # pragma: no cover
    sys.exit(f"broker-durability: cannot import confluent_kafka ({e}); use .ddnn/pyenv/bin/python")


def create_topic(broker, topic, partitions):
    admin = AdminClient({"bootstrap.servers": broker})
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    try:
        fut[topic].result(30)
    except KafkaException as e:
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise


def produce(args):
    create_topic(args.broker, args.topic, 1)
    acked, failed = [], [0]
    errors = {}

    def report(err, msg):
        if err is None:
            acked.append(int(msg.value()))
        else:
            failed[0] += 1
            errors[err.name()] = errors.get(err.name(), 0) + 1

    p = Producer({
        "bootstrap.servers": args.broker,
        "acks": "all",
        "message.timeout.ms": 3000,
        "reconnect.backoff.max.ms": 500,
        "log_level": 0,  # the broker is killed on purpose: its connection errors are expected
    })
    n = 0
    t_end = time.monotonic() + args.seconds
    while time.monotonic() < t_end:
        try:
            p.produce(args.topic, value=str(n).encode(), partition=0, on_delivery=report)
            n += 1
        except BufferError:
            p.poll(0.01)
            continue
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(15)
    with open(args.acked_file, "w") as f:
        f.writelines(f"{x}\n" for x in acked)
    print(f"produce: sent {n}, acknowledged {len(acked)}, failed {failed[0]} {errors}, "
          f"unresolved after flush {left}", flush=True)


def read_all(broker, topic, quiet_s=5.0, first_s=20.0, numbers=True):
    """Every record of partition 0 from offset 0, until quiet_s pass with nothing new (first_s
    for the first record). Returns (values, seconds from the first record to the last)."""
    c = Consumer({
        "bootstrap.servers": broker,
        "group.id": f"durability-reader-{time.time_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "log_level": 0,
    })
    c.assign([TopicPartition(topic, 0, 0)])
    seen = []
    t_first = t_last = None
    last = time.monotonic()
    while time.monotonic() - last < (quiet_s if seen else first_s):
        msgs = c.consume(1000, 0.5)
        for m in msgs:
            if m.error():
                continue
            seen.append(int(m.value()) if numbers else 1)
        if msgs:
            last = time.monotonic()
            t_first = t_first or last
            t_last = last
    c.close()
    return seen, (t_last - t_first if seen else 0.0)


def read(args):
    acked = [int(x) for x in open(args.acked_file).read().split()]
    seen, _ = read_all(args.broker, args.topic)
    a, s = set(acked), set(seen)
    lost = sorted(a - s)
    extra = len(s - a)
    dups = len(seen) - len(s)
    first_lost = f" (first lost: {lost[:5]})" if lost else ""
    print(f"{args.label}: acknowledged {len(a)}, readable {len(s)}, lost {len(lost)}{first_lost}, "
          f"duplicates {dups}, readable but not acknowledged {extra}", flush=True)
    if lost:
        sys.exit(3)


def interop(args):
    topic = f"interop-{time.time_ns()}"
    res = {}
    try:
        create_topic(args.broker, topic, 2)
        res["create topic"] = "yes"
    except Exception as e:  # noqa: BLE001 - reported
        res["create topic"] = f"error {e}"
    acked = []
    p = Producer({"bootstrap.servers": args.broker, "acks": "all"})
    for i in range(100):
        p.produce(topic, key=str(i % 7).encode(), value=str(i).encode(),
                  on_delivery=lambda err, msg: acked.append(msg) if err is None else None)
    p.flush(30)
    res["produce 100 (acks=all)"] = "yes" if len(acked) == 100 else f"no: {len(acked)} acknowledged"
    group = f"interop-g-{time.time_ns()}"
    c = Consumer({"bootstrap.servers": args.broker, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
    c.subscribe([topic])
    got = []
    t0 = time.monotonic()
    while len(got) < 100 and time.monotonic() - t0 < 30:
        for m in c.consume(100, 0.5):
            if not m.error():
                got.append(m)
    res["group consume (subscribe)"] = (f"yes: 100 in {time.monotonic() - t0:.1f} s" if len(got) == 100
                                        else f"no: {len(got)} of 100 in 30 s")
    try:
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        total = sum(tp.offset for tp in committed if tp.offset >= 0)
        res["commit + committed"] = "yes" if total == 100 else f"no: committed offsets sum {total}"
    except KafkaException as e:
        res["commit + committed"] = f"error {e}"
    c.close()
    for k, v in res.items():
        print(f"{args.label}: confluent-kafka {k}: {v}", flush=True)


def rate(args):
    for b in [int(x) for x in args.batches.split(",")]:
        topic = f"rate-{b}-{time.time_ns()}"
        create_topic(args.broker, topic, 1)
        acked = [0]

        def report(err, _msg):
            if err is None:
                acked[0] += 1

        p = Producer({"bootstrap.servers": args.broker, "acks": "all", "batch.num.messages": b,
                      "linger.ms": 1000 if b > 1 else 0, "max.in.flight.requests.per.connection": 1,
                      "batch.size": 1 << 20, "queue.buffering.max.messages": 200000})
        value = b"x" * 100
        # warm-up: the connection and the first request
        p.produce(topic, value=value, partition=0)
        p.flush(10)
        t0 = time.monotonic()
        end = t0 + args.seconds
        while time.monotonic() < end:
            # keep the queue ahead of the broker, at most a few requests' worth
            if len(p) < 4 * b + 100:
                try:
                    for _ in range(b):
                        p.produce(topic, value=value, partition=0, on_delivery=report)
                except BufferError:
                    pass
            p.poll(0.001)
        n = acked[0]
        dt = time.monotonic() - t0
        p.flush(30)
        print(f"{args.label}: {b} records/request: {n / dt:.0f} records/s acknowledged "
              f"({n / dt / b:.0f} requests/s, {dt / max(n / b, 1) * 1000:.1f} ms/request)", flush=True)
        if b == max(int(x) for x in args.batches.split(",")):
            seen, dt = read_all(args.broker, topic, quiet_s=3.0, numbers=False)
            print(f"{args.label}: fetch: read back {len(seen)} records in {dt:.2f} s (first to last): "
                  f"{len(seen) / max(dt, 1e-3):.0f} records/s (one consumer, from the beginning)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("produce")
    a.add_argument("broker"); a.add_argument("topic"); a.add_argument("acked_file")
    a.add_argument("--seconds", type=float, default=6.0)
    a = sub.add_parser("read")
    a.add_argument("broker"); a.add_argument("topic"); a.add_argument("acked_file")
    a.add_argument("--label", default="durability")
    a = sub.add_parser("rate")
    a.add_argument("broker"); a.add_argument("--batches", default="1,10,100,500")
    a.add_argument("--seconds", type=float, default=5.0); a.add_argument("--label", default="rate")
    a = sub.add_parser("interop")
    a.add_argument("broker"); a.add_argument("--label", default="interop")
    args = ap.parse_args()
    {"produce": produce, "read": read, "rate": rate, "interop": interop}[args.cmd](args)


if __name__ == "__main__":
    main()
