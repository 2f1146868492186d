#![allow(clippy::unwrap_used)]
//! The offsets owner on a real broker: a drained stop's clean commit is its last word.
//!
//! A tier's stop drains the owner, then leaves the group and only then ends the owner. The
//! owner's commit interval used to fire in between and write the same position again, not
//! clean: the next start took the drained stop for a crash and replayed an abrupt-end window
//! (seen as `ddnn_messages_replayed_total` > 0 in `lifecycle.rs` about one run in ten).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Broker;
use ddnn::config::Cluster;
use ddnn::kafka::coordinator::consumer_protocol::{decode_assignment, encode_assignment, encode_subscription};
use ddnn::kafka::coordinator::GroupClient;
use ddnn::messages::{ConsumerStopped, Delivered, Generation};
use ddnn::observe::stats::TierStats;
use ddnn::offsets::commit::{resolve, Position};
use ddnn::offsets::group_store::GroupStore;
use ddnn::offsets::{journal, Adopt, Drain, OffsetsOwner, COMMIT_EVERY};
use ddnn::shutdown::Shutdown;

const TOPIC: &str = "oo.input";
const GROUP: &str = "oo-group";
const JOURNAL: &str = "__ddnn_offsets";

async fn join(client: &mut GroupClient) -> Generation {
    let protocols = vec![("range".to_string(), encode_subscription(&[TOPIC.to_string()]))];
    let mut member_id = String::new();
    loop {
        let joined =
            client.join(&member_id, "consumer", &protocols, Duration::from_secs(10), Duration::from_secs(10)).await;
        let joined = joined.unwrap();
        member_id.clone_from(&joined.member_id);
        let mine = vec![(member_id.clone(), encode_assignment(&BTreeMap::from([(TOPIC.to_string(), vec![0])])))];
        match client.sync(joined.generation_id, &member_id, "consumer", &joined.protocol_name, mine).await {
            Ok(bytes) => {
                assert_eq!(decode_assignment(&bytes).unwrap().remove(TOPIC), Some(vec![0]));
                return Generation { id: joined.generation_id, member_id };
            }
            Err(e) if e.needs_rejoin() => continue,
            Err(e) => panic!("sync: {e}"),
        }
    }
}

#[test]
fn a_drained_stop_stays_clean_while_the_owner_outlives_it() {
    actix::System::new().block_on(async {
        let broker = Broker::start().await.expect("broker");
        let cluster = Cluster::plain("local", vec![broker.addr.clone()]);
        let client = ddnn::kafka::connect(&cluster, &Shutdown::new(), &|e| eprintln!("{e}")).await.unwrap();
        for topic in [TOPIC, JOURNAL] {
            ddnn::kafka::ensure_topic(&client, &cluster, topic, 1).await.unwrap();
        }
        let journal_pc = ddnn::kafka::partition_client(&client, &cluster, JOURNAL, 0).await.unwrap();
        let journal_of = || journal::Store::new(journal::group_prefix(GROUP, TOPIC), Arc::clone(&journal_pc));
        let mut group = GroupClient::new(&cluster, GROUP, "oo-test");
        let generation = join(&mut group).await;

        let stats = Arc::new(TierStats::default());
        let store = GroupStore::new(TOPIC, GroupClient::new(&cluster, GROUP, "oo-owner"), journal_of());
        let owner = actix::Actor::start(OffsetsOwner::new("edge", store, stats));
        let start = Position { offset: 0, fetched: 0, crashes: 0, clean: false };
        owner
            .send(Adopt { generation, starts: BTreeMap::from([(0, start)]), careful: BTreeMap::new() })
            .await
            .unwrap()
            .unwrap();
        // Fetched 0..40, delivered all of it, then the consumer stopped: a full drain.
        owner.do_send(ddnn::messages::Fetched { partition: 0, next: 40 });
        owner.do_send(Delivered { partition: 0, offsets: 0..40 });
        owner.do_send(ConsumerStopped { partition: 0, next: 40 });
        let deadline = Instant::now() + Duration::from_secs(10);
        let report = owner.send(Drain { deadline, partitions: None, forget: false }).await.unwrap();
        assert_eq!(report.committed, BTreeMap::from([(0, 40)]), "{report:?}");
        assert_eq!(report.undelivered, 0);
        assert_eq!(report.commit_error, None);

        // The tier now leaves its group, which takes a round trip or more; the owner lives on
        // for several of its commit intervals.
        tokio::time::sleep(COMMIT_EVERY * 5).await;

        let committed = group.fetch_offsets(TOPIC, &[0]).await.unwrap();
        let (offset, metadata) = committed.get(&0).cloned().unwrap();
        let journal = journal_of().load(&[0]).await.unwrap();
        let resumed = resolve(offset, &metadata, journal.get(&0));
        assert_eq!(
            resumed,
            ddnn::offsets::commit::Commit { offset: 40, fetched: 40, crashes: 0, clean: true },
            "the next start must see a drained stop; group metadata {metadata:?}, journal {journal:?}"
        );
    });
}
