//! The WebSocket wire format of API.md: what a client may send
//! ([`ClientOp`]) and the frames the server writes (built once, shared by
//! every subscriber that receives them).

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    Auth {
        token: String,
    },
    Subscribe {
        project_id: Uuid,
        #[serde(default)]
        since: Option<i64>,
    },
    Unsubscribe {
        project_id: Uuid,
    },
    Cursor {
        project_id: Uuid,
        data: Value,
    },
    Broadcast {
        project_id: Uuid,
        data: Value,
    },
    Ping,
}

/// Stable `code`s of `error` frames.
pub mod code {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const AUTH_TIMEOUT: &str = "auth_timeout";
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const TOKEN_REVOKED: &str = "token_revoked";
    pub const FORBIDDEN: &str = "forbidden";
    pub const ALREADY_SUBSCRIBED: &str = "already_subscribed";
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    pub const TOO_LARGE: &str = "too_large";
    pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    pub const IDLE: &str = "idle";
}

/// WebSocket close codes (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    op: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<Uuid>,
}

pub fn error(code: &str, message: &str, project_id: Option<Uuid>) -> Utf8Bytes {
    to_frame(&ErrorFrame {
        op: "error",
        code,
        message,
        project_id,
    })
}

#[derive(Serialize)]
struct Subscribed<'a> {
    op: &'static str,
    project_id: Uuid,
    position: i64,
    presence: &'a [Uuid],
}

/// `position`: events after it arrive live; those up to it (and after
/// `since`) are the catch-up that follows this frame.
pub fn subscribed(project_id: Uuid, position: i64, presence: &[Uuid]) -> Utf8Bytes {
    to_frame(&Subscribed {
        op: "subscribed",
        project_id,
        position,
        presence,
    })
}

#[derive(Serialize)]
struct Unsubscribed {
    op: &'static str,
    project_id: Uuid,
}

pub fn unsubscribed(project_id: Uuid) -> Utf8Bytes {
    to_frame(&Unsubscribed {
        op: "unsubscribed",
        project_id,
    })
}

#[derive(Serialize)]
struct Authenticated {
    op: &'static str,
    user_id: Uuid,
    expires_at: u64,
}

pub fn authenticated(user_id: Uuid, expires_at: u64) -> Utf8Bytes {
    to_frame(&Authenticated {
        op: "authenticated",
        user_id,
        expires_at,
    })
}

pub fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"op":"pong"}"#)
}

/// `{"op":"event","project_id":…,"position":…,"event":<CloudEvent>}`,
/// around the CloudEvent's JSON exactly as it travels on the bus (no
/// re-encoding per subscriber, nor per gateway).
pub fn event(project_id: Uuid, position: i64, cloud_event_json: &[u8]) -> Utf8Bytes {
    let mut frame = Vec::with_capacity(cloud_event_json.len() + 96);
    frame.extend_from_slice(br#"{"op":"event","project_id":""#);
    frame.extend_from_slice(project_id.hyphenated().to_string().as_bytes());
    frame.extend_from_slice(br#"","position":"#);
    frame.extend_from_slice(position.to_string().as_bytes());
    frame.extend_from_slice(br#","event":"#);
    frame.extend_from_slice(cloud_event_json);
    frame.push(b'}');
    // The CloudEvent is JSON we (or serde_json) wrote, hence UTF-8.
    Utf8Bytes::try_from(frame).unwrap_or_else(|_| error("internal", "bad event", None))
}

#[derive(Serialize)]
struct Presence<'a> {
    op: &'static str,
    project_id: Uuid,
    joined: &'a [Uuid],
    left: &'a [Uuid],
}

pub fn presence(project_id: Uuid, joined: &[Uuid], left: &[Uuid]) -> Utf8Bytes {
    to_frame(&Presence {
        op: "presence",
        project_id,
        joined,
        left,
    })
}

#[derive(Serialize)]
struct RelayedFrame<'a> {
    op: &'a str,
    project_id: Uuid,
    user_id: Uuid,
    data: &'a Value,
}

/// A `cursor` or `broadcast` from another member.
pub fn relayed(op: &str, project_id: Uuid, user_id: Uuid, data: &Value) -> Utf8Bytes {
    to_frame(&RelayedFrame {
        op,
        project_id,
        user_id,
        data,
    })
}

#[derive(Serialize)]
struct JobOutput<'a> {
    op: &'static str,
    project_id: Uuid,
    job_id: Uuid,
    stream: tandem_domain::live::OutputStream,
    chunk: &'a str,
}

pub fn job_output(project_id: Uuid, chunk: &tandem_domain::live::JobOutputChunk) -> Utf8Bytes {
    to_frame(&JobOutput {
        op: "job_output",
        project_id,
        job_id: chunk.job_id,
        stream: chunk.stream,
        chunk: &chunk.chunk,
    })
}

fn to_frame<T: Serialize>(value: &T) -> Utf8Bytes {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(value)
        .unwrap_or_else(|_| r#"{"op":"error","code":"internal"}"#.to_owned())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_wrap_the_cloud_event_verbatim() {
        let project = Uuid::now_v7();
        let frame = event(project, 42, br#"{"id":"x","data":{"a":1}}"#);
        let parsed: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(parsed["op"], "event");
        assert_eq!(parsed["project_id"], project.to_string());
        assert_eq!(parsed["position"], 42);
        assert_eq!(parsed["event"]["data"]["a"], 1);
    }

    #[test]
    fn client_ops_parse_and_unknown_ones_do_not() {
        let op: ClientOp = serde_json::from_str(
            r#"{"op":"subscribe","project_id":"0190c0de-0000-7000-8000-000000000000","since":7}"#,
        )
        .unwrap();
        assert!(matches!(op, ClientOp::Subscribe { since: Some(7), .. }));
        assert!(serde_json::from_str::<ClientOp>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<ClientOp>(r#"{"op":"cursor","project_id":"x"}"#).is_err());
    }
}
