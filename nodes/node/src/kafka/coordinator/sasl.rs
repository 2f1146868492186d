//! SASL on a fresh connection: SaslHandshake v1 names the mechanism, then SaslAuthenticate
//! carries rsasl's messages until the mechanism is done (as rskafka 0.6 drives rsasl).

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

use super::conn::Conn;
use super::error::{code_name, CoordinatorError};
use crate::config::Sasl;
use crate::kafka::security;

const HINT: &str = "check sasl.mechanism, sasl.username and the password";

pub(super) async fn authenticate(conn: &mut Conn, sasl: &Sasl) -> Result<(), CoordinatorError> {
    let security = |conn: &Conn, message: String| CoordinatorError::Security {
        cluster: conn.cluster().to_string(),
        broker: conn.broker().to_string(),
        message,
    };
    let mechanism = sasl.mechanism.name();
    let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let answer = conn.request(&handshake).await?;
    if answer.error_code != 0 {
        let enabled: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(security(
            conn,
            format!(
                "SASL {mechanism}: {} (the broker offers {})",
                code_name(answer.error_code),
                if enabled.is_empty() { "none".to_string() } else { enabled.join(", ") }
            ),
        ));
    }

    let password =
        security::sasl_password(sasl).map_err(|e| security(conn, format!("clusters.{}.{e}", conn.cluster())))?;
    let config = SASLConfig::with_credentials(None, sasl.username.clone(), password)
        .map_err(|e| security(conn, format!("SASL {mechanism}: {e}")))?;
    let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| security(conn, format!("SASL {mechanism}: {e}")))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| security(conn, format!("SASL {mechanism}: {e}")))?;
    // Our side speaks first, with nothing received yet.
    let mut received: Option<Bytes> = None;
    loop {
        let mut message = Vec::new();
        let state = session
            .step(received.as_deref(), &mut message)
            .map_err(|e| security(conn, format!("SASL {mechanism} as {:?}: {e} ({HINT})", sasl.username)))?;
        if state.has_sent_message() {
            let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
            let answer = conn.request(&request).await?;
            if answer.error_code != 0 {
                let why = answer.error_message.as_ref().map(|m| format!(": {}", m.as_str())).unwrap_or_default();
                return Err(security(
                    conn,
                    format!("SASL {mechanism} as {:?}: {}{why} ({HINT})", sasl.username, code_name(answer.error_code)),
                ));
            }
            received = Some(answer.auth_bytes);
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}
