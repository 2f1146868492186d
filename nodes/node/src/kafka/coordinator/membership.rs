//! Membership: JoinGroup, SyncGroup, Heartbeat, LeaveGroup.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest};
use kafka_protocol::ResponseError;

use super::{check, millis, str_bytes, CoordinatorError, GroupClient, Joined};

/// Beyond the rebalance timeout, the time the coordinator may take to answer once the
/// rebalance is over (as the Java client allows).
const REBALANCE_GRACE: Duration = Duration::from_secs(5);

/// What one JoinGroup came to.
enum JoinOutcome {
    Joined(Joined),
    /// MEMBER_ID_REQUIRED (KIP-394): join again, at once, with this id.
    Retry(String),
}

impl GroupClient {
    /// JoinGroup. `member_id` is empty for a new member; a broker that wants new members to
    /// ask for an id first (MEMBER_ID_REQUIRED, 79) is answered at once with the id it gave.
    /// Waits up to the rebalance timeout (plus a grace) for the rebalance to complete.
    pub async fn join(
        &mut self,
        member_id: &str,
        protocol_type: &str,
        protocols: &[(String, Vec<u8>)],
        session_timeout: Duration,
        rebalance_timeout: Duration,
    ) -> Result<Joined, CoordinatorError> {
        self.rebalance_timeout = rebalance_timeout;
        let protocols: Vec<_> = protocols
            .iter()
            .map(|(name, metadata)| {
                JoinGroupRequestProtocol::default()
                    .with_name(str_bytes(name))
                    .with_metadata(Bytes::copy_from_slice(metadata))
            })
            .collect();
        let mut member_id = member_id.to_string();
        let mut id_given = false;
        loop {
            let request = JoinGroupRequest::default()
                .with_group_id(self.group_id())
                .with_session_timeout_ms(millis(session_timeout))
                .with_rebalance_timeout_ms(millis(rebalance_timeout))
                .with_member_id(str_bytes(&member_id))
                .with_protocol_type(str_bytes(protocol_type))
                .with_protocols(protocols.clone());
            let conn = self.coordinator().await?;
            let outcome = match conn.version::<JoinGroupRequest>() {
                Ok(v) => conn.request_at(&request, v, rebalance_timeout + REBALANCE_GRACE).await,
                Err(e) => Err(e),
            }
            .and_then(|answer| {
                let code = answer.error_code;
                if code == ResponseError::MemberIdRequired.code() && !id_given {
                    return Ok(JoinOutcome::Retry(answer.member_id.as_str().to_string()));
                }
                check(conn, "JoinGroup", code, None)?;
                Ok(JoinOutcome::Joined(Joined {
                    generation_id: answer.generation_id,
                    member_id: answer.member_id.as_str().to_string(),
                    leader: answer.leader.as_str().to_string(),
                    protocol_name: answer.protocol_name.map(|p| p.as_str().to_string()).unwrap_or_default(),
                    members: answer
                        .members
                        .into_iter()
                        .map(|m| (m.member_id.as_str().to_string(), m.metadata.to_vec()))
                        .collect(),
                }))
            });
            match self.settle(outcome)? {
                JoinOutcome::Joined(joined) => return Ok(joined),
                JoinOutcome::Retry(id) => {
                    tracing::debug!(group = %self.group, member_id = %id, "MEMBER_ID_REQUIRED: joining with the id given");
                    member_id = id;
                    id_given = true;
                }
            }
        }
    }

    /// SyncGroup: the leader sends every member's assignment, the others none; each gets its
    /// own assignment back (empty when the leader gave it nothing).
    pub async fn sync(
        &mut self,
        generation_id: i32,
        member_id: &str,
        protocol_type: &str,
        protocol_name: &str,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let assignments = assignments
            .into_iter()
            .map(|(member, bytes)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(Bytes::from(bytes))
            })
            .collect();
        let request = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(generation_id)
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(Some(str_bytes(protocol_type)))
            .with_protocol_name(Some(str_bytes(protocol_name)))
            .with_assignments(assignments);
        let timeout = self.rebalance_timeout + REBALANCE_GRACE;
        let conn = self.coordinator().await?;
        let result = match conn.version::<SyncGroupRequest>() {
            Ok(v) => conn.request_at(&request, v, timeout).await,
            Err(e) => Err(e),
        }
        .and_then(|answer| check(conn, "SyncGroup", answer.error_code, None).map(|()| answer.assignment.to_vec()));
        self.settle(result)
    }

    /// Heartbeat: `RebalanceInProgress` means rejoin.
    pub async fn heartbeat(&mut self, generation_id: i32, member_id: &str) -> Result<(), CoordinatorError> {
        let request = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(generation_id)
            .with_member_id(str_bytes(member_id));
        let conn = self.coordinator().await?;
        let result = conn.request(&request).await.and_then(|answer| check(conn, "Heartbeat", answer.error_code, None));
        self.settle(result)
    }

    /// LeaveGroup, so the group rebalances now rather than after the session timeout. A member
    /// the coordinator no longer knows is `UnknownMemberId`, which a caller shutting down may
    /// take as done.
    pub async fn leave(&mut self, member_id: &str) -> Result<(), CoordinatorError> {
        let group_id = self.group_id();
        let conn = self.coordinator().await?;
        let result = match conn.version::<LeaveGroupRequest>() {
            Err(e) => Err(e),
            Ok(v) => {
                // v3 (KIP-345) moved the member id into a list of members.
                let request = if v >= 3 {
                    LeaveGroupRequest::default()
                        .with_group_id(group_id)
                        .with_members(vec![MemberIdentity::default().with_member_id(str_bytes(member_id))])
                } else {
                    LeaveGroupRequest::default().with_group_id(group_id).with_member_id(str_bytes(member_id))
                };
                conn.request_at(&request, v, super::conn::REQUEST_TIMEOUT).await
            }
        }
        .and_then(|answer| {
            check(conn, "LeaveGroup", answer.error_code, None)?;
            answer.members.iter().try_for_each(|m| check(conn, "LeaveGroup", m.error_code, None))
        });
        self.settle(result)
    }
}
