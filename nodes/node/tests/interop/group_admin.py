"""A tier's consumer group seen and steered by a standard client (librdkafka via confluent-kafka).

  offsets BROKER GROUP TOPIC N      committed offset and high watermark per partition (JSON)
  alter BROKER GROUP TOPIC P OFFSET move partition P's committed offset (the group must be empty)
  join BROKER GROUP TOPIC SECONDS   a plain consumer (default settings) joins the group; prints
                                    the partitions it was given (JSON), then leaves
"""
import json
import sys
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


def offsets(broker, group, topic, n):
    admin = AdminClient({"bootstrap.servers": broker})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(n)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    c = Consumer({"bootstrap.servers": broker, "group.id": "ddnn-test-watermarks"})
    hw = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(n)}
    c.close()
    print(json.dumps({"committed": committed, "high_watermarks": hw}))


def alter(broker, group, topic, p, offset):
    admin = AdminClient({"bootstrap.servers": broker})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, offset)])
    result = admin.alter_consumer_group_offsets([request])[group].result(timeout=30)
    print(json.dumps({tp.partition: tp.offset for tp in result.topic_partitions}))


def join(broker, group, topic, seconds):
    c = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.time() + seconds
    assigned = []
    while time.time() < deadline and not assigned:
        c.poll(0.2)
        assigned = sorted(tp.partition for tp in c.assignment())
    print(json.dumps(assigned))
    # Hold the share a moment so the other members see the group with us in it.
    end = time.time() + 3
    while time.time() < end:
        c.poll(0.2)
    c.close()


if __name__ == "__main__":
    cmd, broker, group, topic = sys.argv[1:5]
    rest = sys.argv[5:]
    if cmd == "offsets":
        offsets(broker, group, topic, int(rest[0]))
    elif cmd == "alter":
        alter(broker, group, topic, int(rest[0]), int(rest[1]))
    elif cmd == "join":
        join(broker, group, topic, float(rest[0]))
    else:
        sys.exit(f"unknown command {cmd}")
