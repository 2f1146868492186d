#![allow(clippy::unwrap_used)]
//! The group coordinator client on a real broker (tansu): two members form a group (each run as
//! a consumer runs: join, sync, heartbeat, rejoin when told), the leader assigns with the
//! standard consumer protocol, offsets and their metadata are committed and read back (by us and
//! by librdkafka's AdminClient), a member joining anew makes the other's heartbeat answer
//! REBALANCE_IN_PROGRESS, and members leave. Then the same over SASL SCRAM and over TLS.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::node::{free_port, repo_root};
use common::Broker;
use ddnn::config::{Cluster, PasswordSource, Sasl, SaslMechanism, Tls};
use ddnn::kafka::coordinator::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
};
use ddnn::kafka::coordinator::{CoordinatorError, GroupClient, Joined};
use ddnn_testkit::{tansu_bin, BrokerOptions, Pki, TlsTerminator, SQLITE};
use tokio::sync::watch;

const TOPIC: &str = "gc.input";
const PARTITIONS: i32 = 4;
const SESSION: Duration = Duration::from_secs(10);
const REBALANCE: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_millis(200);

fn protocols() -> Vec<(String, Vec<u8>)> {
    vec![("range".to_string(), encode_subscription(&[TOPIC.to_string()]))]
}

/// The leader's assignment: the partitions dealt round robin over the members in id order.
fn assign(members: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut ids: Vec<&String> = members.iter().map(|(id, _)| id).collect();
    ids.sort();
    let mut shares: BTreeMap<&String, Vec<i32>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    for p in 0..PARTITIONS {
        shares.get_mut(ids[p as usize % ids.len()]).unwrap().push(p);
    }
    shares
        .into_iter()
        .map(|(id, ps)| (id.clone(), encode_assignment(&BTreeMap::from([(TOPIC.to_string(), ps)]))))
        .collect()
}

#[derive(Clone, Debug)]
struct Synced {
    joined: Joined,
    partitions: Vec<i32>,
}

/// JoinGroup then SyncGroup, again while the answer says rejoin. A coordinator may answer a
/// follower's SyncGroup before the leader's with REBALANCE_IN_PROGRESS (tansu does; Kafka
/// makes it wait), so this loop is what any member runs.
async fn join_and_sync(client: &mut GroupClient, member_id: &mut String) -> Result<Synced, CoordinatorError> {
    loop {
        let joined = client.join(member_id, "consumer", &protocols(), SESSION, REBALANCE).await?;
        member_id.clone_from(&joined.member_id);
        let assignments = if joined.is_leader() { assign(&joined.members) } else { Vec::new() };
        match client.sync(joined.generation_id, member_id, "consumer", &joined.protocol_name, assignments).await {
            Ok(bytes) => {
                let partitions = decode_assignment(&bytes).unwrap().remove(TOPIC).unwrap_or_default();
                return Ok(Synced { joined, partitions });
            }
            Err(CoordinatorError::UnknownMemberId { .. }) => member_id.clear(),
            Err(e) if e.needs_rejoin() => {}
            Err(e) => return Err(e),
        }
    }
}

/// One member as a consumer runs it: join and sync, then heartbeat until told to rejoin.
/// Publishes each generation it completes; hands its client and last state back on `stop`.
async fn member(
    mut client: GroupClient,
    stop: watch::Receiver<bool>,
    state: watch::Sender<Option<Synced>>,
) -> Result<(GroupClient, Synced), CoordinatorError> {
    let mut id = String::new();
    loop {
        let synced = join_and_sync(&mut client, &mut id).await?;
        state.send_replace(Some(synced.clone()));
        loop {
            let mut stop = stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok((client, synced)),
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            match client.heartbeat(synced.joined.generation_id, &id).await {
                Ok(()) => {}
                Err(e) if e.needs_rejoin() => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The coordinator client's debug log, kept for assertions (MEMBER_ID_REQUIRED is handled
/// inside `join`, visible only there).
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ddnn::kafka::coordinator=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&log().lock().unwrap()).into_owned()
}

async fn create_topic(cluster: &Cluster) {
    let client = rskafka::client::ClientBuilder::new(cluster.brokers.clone()).build().await.unwrap();
    ddnn::kafka::ensure_topic(&client, cluster, TOPIC, PARTITIONS).await.unwrap();
}

/// `DDNN_PYTHON`, else the venv scripts/setup.sh makes, else `python3`.
fn python() -> String {
    std::env::var("DDNN_PYTHON").unwrap_or_else(|_| {
        let venv = repo_root().join(".ddnn/pyenv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".to_string()
        }
    })
}

/// Waits until both members completed the same generation.
async fn stable(a: &mut watch::Receiver<Option<Synced>>, b: &mut watch::Receiver<Option<Synced>>) -> (Synced, Synced) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let (Some(sa), Some(sb)) = (a.borrow().clone(), b.borrow().clone()) {
            if sa.joined.generation_id == sb.joined.generation_id {
                return (sa, sb);
            }
        }
        tokio::select! {
            r = a.changed() => r.expect("member a ended"),
            r = b.changed() => r.expect("member b ended"),
            _ = tokio::time::sleep_until(deadline) => panic!("no common generation in 60 s:\n{}", log_text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_join_sync_commit_rebalance_and_leave() {
    log();
    let broker = Broker::start().await.expect("broker");
    let cluster = Cluster::plain("local", vec![broker.addr.clone()]);
    create_topic(&cluster).await;
    let group = "gc.group";

    // Two members join at once and run until both completed one generation.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (a_tx, mut a_rx) = watch::channel(None);
    let (b_tx, mut b_rx) = watch::channel(None);
    let a = tokio::spawn(member(GroupClient::new(&cluster, group, "member-a"), stop_rx.clone(), a_tx));
    let b = tokio::spawn(member(GroupClient::new(&cluster, group, "member-b"), stop_rx, b_tx));
    stable(&mut a_rx, &mut b_rx).await;
    stop_tx.send_replace(true);
    let (mut ca, sa) = a.await.unwrap().unwrap();
    let (mut cb, sb) = b.await.unwrap().unwrap();
    println!("negotiated with tansu: {:?}", ca.versions());
    let (id_a, id_b) = (sa.joined.member_id.clone(), sb.joined.member_id.clone());
    let generation = sa.joined.generation_id;
    assert_eq!(generation, sb.joined.generation_id);
    assert!(generation >= 0 && id_a != id_b && !id_a.is_empty());
    assert!(log_text().contains("MEMBER_ID_REQUIRED"), "new members were asked for an id:\n{}", log_text());

    // The leader saw both members' subscriptions; the other saw none.
    let (leader, follower) = if sa.joined.is_leader() { (&sa, &sb) } else { (&sb, &sa) };
    assert!(!follower.joined.is_leader() && follower.joined.leader == leader.joined.member_id);
    assert!(follower.joined.members.is_empty());
    let seen: BTreeSet<&str> = leader.joined.members.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(seen, BTreeSet::from([id_a.as_str(), id_b.as_str()]));
    for (_, metadata) in &leader.joined.members {
        assert_eq!(decode_subscription(metadata).unwrap(), [TOPIC]);
    }
    assert_eq!(leader.joined.protocol_name, "range");

    // Each got its share, together all partitions.
    assert!(!sa.partitions.is_empty() && !sb.partitions.is_empty(), "{sa:?} {sb:?}");
    let mut all: Vec<i32> = sa.partitions.iter().chain(&sb.partitions).copied().collect();
    all.sort();
    assert_eq!(all, (0..PARTITIONS).collect::<Vec<_>>());

    // Commit, then read back through a client that is no member.
    ca.commit(generation, &id_a, TOPIC, &[(0, 42, "ddnn:0:42".to_string()), (1, 7, String::new())]).await.unwrap();
    let mut reader = GroupClient::new(&cluster, group, "reader");
    let committed = reader.fetch_offsets(TOPIC, &[0, 1, 2]).await.unwrap();
    println!("committed as read back: {committed:?}");
    assert_eq!(committed.keys().copied().collect::<Vec<_>>(), [0, 1], "partition 2 was never committed");
    assert_eq!((committed[&0].0, committed[&1].0), (42, 7));
    // tansu 0.6.0 stores the offset but not its metadata: it answers "" for every partition.
    // Kafka keeps it; either is accepted here, anything else is not.
    assert!(["ddnn:0:42", ""].contains(&committed[&0].1.as_str()), "{committed:?}");
    println!("tansu keeps commit metadata: {}", committed[&0].1 == "ddnn:0:42");

    // librdkafka's AdminClient sees our commit (what Kafka's tools and KEDA read).
    let script = repo_root().join("nodes/node/tests/interop/group_offsets.py");
    let out = Command::new(python())
        .arg(&script)
        .args([broker.addr.as_str(), group, TOPIC, "0,1,2"])
        .output()
        .expect("run python (set DDNN_PYTHON to an interpreter with confluent-kafka; scripts/setup.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "group_offsets.py: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    println!("confluent-kafka AdminClient: {stdout}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["0"]["offset"], 42);
    assert_eq!(seen["1"]["offset"], 7);
    assert_eq!(seen["2"]["offset"], -1001, "librdkafka's OFFSET_INVALID: nothing committed");

    // B joins anew (a new member id): A's next heartbeats are told to rejoin. A Kafka broker
    // holds B's JoinGroup until the others rejoin, so it runs on its own task.
    let rejoin = tokio::spawn(async move {
        let r = cb.join("", "consumer", &protocols(), SESSION, REBALANCE).await;
        (cb, r)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ca.heartbeat(generation, &id_a).await {
            Ok(()) if Instant::now() < deadline => tokio::time::sleep(HEARTBEAT).await,
            Ok(()) => panic!("no REBALANCE_IN_PROGRESS within 20 s of a new member joining"),
            Err(CoordinatorError::RebalanceInProgress { .. }) => break,
            Err(e) => panic!("heartbeat: {e}"),
        }
    }

    // Leaving: A is gone (its heartbeat is refused), B's old and new ids go too; a member the
    // coordinator no longer knows cannot leave (again).
    ca.leave(&id_a).await.unwrap();
    let after = ca.heartbeat(generation, &id_a).await;
    assert!(matches!(after, Err(CoordinatorError::UnknownMemberId { .. })), "{after:?}");
    let (mut cb, rejoined) = tokio::time::timeout(Duration::from_secs(30), rejoin).await.unwrap().unwrap();
    let new_b = rejoined.unwrap().member_id;
    assert_ne!(new_b, id_b);
    cb.leave(&new_b).await.unwrap();
    // B's old id neither rejoined nor heartbeated: tansu keeps it until this leave, Kafka and
    // nisshi 0.8.1 may have dropped it already. Either way it is gone after this.
    let old = cb.leave(&id_b).await;
    assert!(matches!(old, Ok(()) | Err(CoordinatorError::UnknownMemberId { .. })), "{old:?}");
    let again = cb.leave(&id_b).await;
    assert!(matches!(again, Err(CoordinatorError::UnknownMemberId { .. })), "{again:?}");
    println!("{}", again.unwrap_err());
}

/// A lone member: join, sync (it leads and assigns itself everything), heartbeat, leave.
async fn lone_member(cluster: &Cluster, group: &str) -> Result<Vec<i32>, CoordinatorError> {
    let mut client = GroupClient::new(cluster, group, "lone");
    let mut id = String::new();
    let synced = join_and_sync(&mut client, &mut id).await?;
    client.heartbeat(synced.joined.generation_id, &id).await?;
    client.leave(&id).await?;
    Ok(synced.partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_authenticates_and_a_wrong_password_is_a_security_error() {
    let dir = tempfile::tempdir().unwrap();
    let users = [("scram256", "alice", "alice-pw"), ("scram512", "bob", "bob-pw")];
    let broker = Broker::start_scram(&users).await.unwrap();
    let cluster = |mechanism, username: &str, password: &str| {
        let file = dir.path().join(format!("{username}-{password}.pw"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let sasl = Sasl { mechanism, username: username.to_string(), password: PasswordSource::File(file) };
        Cluster { sasl: Some(sasl), ..Cluster::plain("secured", vec![broker.addr.clone()]) }
    };
    for (mechanism, user, password) in
        [(SaslMechanism::ScramSha256, "alice", "alice-pw"), (SaslMechanism::ScramSha512, "bob", "bob-pw")]
    {
        let partitions = lone_member(&cluster(mechanism, user, password), &format!("gc.{user}")).await;
        assert_eq!(partitions.unwrap(), (0..PARTITIONS).collect::<Vec<_>>(), "{}", mechanism.name());
    }
    let wrong = lone_member(&cluster(SaslMechanism::ScramSha256, "alice", "wrong-pw"), "gc.wrong").await;
    let e = wrong.unwrap_err();
    println!("wrong password: {e}");
    assert!(matches!(e, CoordinatorError::Security { .. }), "{e:?}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(text.contains("cluster `secured`") && text.contains("alice") && !text.contains("wrong-pw"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_a_terminator_finds_and_reaches_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path()).unwrap();
    let port = free_port();
    // Advertised at the terminator: FindCoordinator answers with its address.
    let options = BrokerOptions { advertised: Some(format!("127.0.0.1:{port}")), ..Default::default() };
    let broker = Broker::start_opts(&tansu_bin().unwrap(), SQLITE, options).await.unwrap();
    let tls = TlsTerminator::start(&pki, port, &broker.addr, false).unwrap();
    let cluster = Cluster {
        tls: Some(Tls { ca: pki.ca.clone(), client: None }),
        ..Cluster::plain("tls", vec![tls.addr.clone()])
    };
    let partitions = lone_member(&cluster, "gc.tls").await;
    assert_eq!(partitions.unwrap(), (0..PARTITIONS).collect::<Vec<_>>(), "stunnel:\n{}", tls.log_text());

    // The wrong CA: a security error naming the cluster, not retried.
    let other = Cluster { tls: Some(Tls { ca: pki.other_ca.clone(), client: None }), ..cluster.clone() };
    let e = lone_member(&other, "gc.tls").await.unwrap_err();
    println!("untrusted CA: {e}");
    assert!(matches!(e, CoordinatorError::Security { .. }), "{e:?}");
    assert!(e.to_string().contains("cluster `tls`") && e.to_string().contains("tls.ca"), "{e}");
}
