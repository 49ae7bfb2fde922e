//! One `subscribe`, from request to live: hold a place in the hub at its
//! position `H`, authorize against the membership read model as of the
//! log's head `A ≥ H` (membership events up to `A` are then history),
//! join presence, send `subscribed`, copy `(since, H]` from the log, then
//! release into live delivery (reading the log further if the hold
//! overflowed meanwhile). Runs as its own task so a long catch-up never
//! stalls the connection's other subscriptions.

use std::time::Duration;

use tandem_domain::Role;
use uuid::Uuid;

use super::hub::{ConnId, Control, Out, Outbox, Release};
use super::protocol::{self, code};
use super::{effects, feed, Realtime};

/// Log events read per round trip while catching up.
const PAGE: i64 = 500;
/// How long authorization waits for the read model to reach `H`.
const AUTHORIZE_WAIT: Duration = Duration::from_secs(2);

pub struct Request {
    pub project: Uuid,
    pub since: Option<i64>,
    pub connection: ConnId,
    pub user: Uuid,
    pub outbox: Outbox,
}

enum Refusal {
    /// Not a member, or no such project: the same answer either way.
    Forbidden,
    Unavailable,
}

pub async fn run(realtime: Realtime, request: Request) {
    let Request {
        project,
        since,
        connection,
        user,
        outbox,
    } = request;
    let end = |code: &str, message: &str| Out::Ended {
        project,
        frame: protocol::error(code, message, Some(project)),
    };
    let Ok(start) = realtime
        .hub
        .hold(project, connection, user, outbox.clone(), since)
    else {
        outbox.offer(Out::Frame(protocol::error(
            code::ALREADY_SUBSCRIBED,
            "this connection is already subscribed to that project",
            Some(project),
        )));
        return;
    };
    // Membership as of the log's head, not only `start`: the hub may lag the
    // log, and a member who just joined must not be refused. Membership
    // events up to that position are history for this subscription.
    let authorized_at = match tandem_commands::log::head(&realtime.pool).await {
        Ok(head) => head.max(start),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log head");
            start
        }
    };
    let role = match role_at(&realtime, project, user, authorized_at).await {
        Ok(role) => role,
        Err(refusal) => {
            realtime.hub.remove(project, connection);
            let out = match refusal {
                Refusal::Forbidden => end(
                    code::FORBIDDEN,
                    "no such project, or you are not a member of it",
                ),
                Refusal::Unavailable => end(
                    code::UNAVAILABLE,
                    "membership cannot be checked right now; try again",
                ),
            };
            outbox.offer(out);
            return;
        }
    };
    realtime.hub.authorized(project, connection, authorized_at);
    if !outbox.send_paced(Out::Role { project, role }).await {
        return;
    }
    let present = realtime.join_presence(project, user, connection).await;
    if !outbox
        .send_paced(Out::Frame(protocol::subscribed(project, start, &present)))
        .await
    {
        return;
    }
    let mut copied_to = since.unwrap_or(start).min(start);
    let mut upto = start;
    loop {
        let range = Range {
            after: copied_to,
            upto,
            authorized_at,
        };
        match copy_log(&realtime, &outbox, project, user, range).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "catch-up from the log failed");
                realtime.hub.remove(project, connection);
                outbox.offer(end(
                    code::UNAVAILABLE,
                    "the log could not be read; subscribe again with `since`",
                ));
                return;
            }
        }
        copied_to = upto;
        match realtime.hub.release(project, connection) {
            Release::Live | Release::Gone => return,
            Release::Behind(position) => upto = position,
        }
    }
}

/// The user's role as of position `at`: from Redis's member sets when they
/// have applied `at`, else from Postgres's `read.members` once it has.
async fn role_at(realtime: &Realtime, project: Uuid, user: Uuid, at: i64) -> Result<Role, Refusal> {
    let deadline = tokio::time::Instant::now() + AUTHORIZE_WAIT / 2;
    loop {
        match realtime.hot.role_at(project, user).await {
            Ok((checkpoint, role)) if checkpoint >= at => {
                return role.and_then(|r| r.parse().ok()).ok_or(Refusal::Forbidden);
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "member sets unavailable; asking Postgres");
                break;
            }
        }
    }
    if !realtime.positions.wait_for(at, AUTHORIZE_WAIT / 2).await {
        return Err(Refusal::Unavailable);
    }
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM read.members m JOIN read.projects p USING (project_id)
          WHERE m.project_id = $1 AND m.user_id = $2",
    )
    .bind(project)
    .bind(user)
    .fetch_optional(&realtime.pool)
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "membership read model unavailable");
        Refusal::Unavailable
    })?;
    role.and_then(|r| r.parse().ok()).ok_or(Refusal::Forbidden)
}

/// A stretch of the log to copy: `(after, upto]`.
struct Range {
    after: i64,
    upto: i64,
    /// Membership was checked as of this position: changes up to it are
    /// history, changes after it still apply to the subscription.
    authorized_at: i64,
}

/// Sends the project's events in the range from the log. `Ok(false)`:
/// stop (the connection is gone, or the user's membership ended in it).
async fn copy_log(
    realtime: &Realtime,
    outbox: &Outbox,
    project: Uuid,
    user: Uuid,
    range: Range,
) -> Result<bool, sqlx::Error> {
    let Range {
        mut after,
        upto,
        authorized_at,
    } = range;
    while after < upto {
        let events =
            tandem_commands::log::read_project_after(&realtime.pool, project, after, PAGE).await?;
        if events.is_empty() {
            break;
        }
        let full_page = events.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
        for logged in events {
            if logged.position > upto {
                return Ok(true);
            }
            after = logged.position;
            let event = logged.into_envelope();
            let dispatch = feed::dispatch_of(&event, None);
            let Some(frame) = dispatch.frame else {
                continue;
            };
            if !outbox.send_paced(Out::Frame(frame)).await {
                return Ok(false);
            }
            let control = effects::control(&event).filter(|_| event.position > authorized_at);
            match control {
                Some(Control::Removed(removed)) if removed == user => {
                    let frame = protocol::error(
                        code::FORBIDDEN,
                        "you are no longer a member of this project",
                        Some(project),
                    );
                    outbox.send_paced(Out::Ended { project, frame }).await;
                    return Ok(false);
                }
                Some(Control::Role(changed, role)) if changed == user => {
                    outbox.send_paced(Out::Role { project, role }).await;
                }
                _ => {}
            }
        }
        if !full_page {
            break;
        }
    }
    Ok(true)
}
