"""Reads a consumer group's committed offsets with confluent-kafka's AdminClient (librdkafka),
as Kafka's tools and KEDA's Kafka scaler see them.

Usage: group_offsets.py BROKER GROUP TOPIC PARTITION[,PARTITION...]
Prints one JSON object: {"PARTITION": {"offset", "metadata", "error"}}; offset -1001 is
librdkafka's "no committed offset".
"""
import json
import sys

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

broker, group, topic, partitions = sys.argv[1:5]
admin = AdminClient({"bootstrap.servers": broker})
request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, int(p)) for p in partitions.split(",")])
result = admin.list_consumer_group_offsets([request], request_timeout=20)[group].result(timeout=30)
print(json.dumps({
    str(tp.partition): {
        "offset": tp.offset,
        "metadata": getattr(tp, "metadata", None),
        "error": str(tp.error) if tp.error else None,
    }
    for tp in result.topic_partitions
}))
