//! What an event of the log does to live subscriptions besides being
//! delivered: a removed member's subscription ends, a changed role changes
//! what the connection may send, a logout closes the session's sockets.
//! Read off the envelope the same way for live events and for catch-up.

use tandem_domain::envelope::Envelope;
use tandem_domain::Role;
use uuid::Uuid;

use super::hub::Control;

pub fn control(event: &Envelope) -> Option<Control> {
    if event.aggregatetype != "Project" {
        return None;
    }
    let data = event.data.as_ref()?;
    let user: Uuid = data.get("user_id")?.as_str()?.parse().ok()?;
    match event.event_type.as_str() {
        "MemberRemoved" => Some(Control::Removed(user)),
        "MemberRoleChanged" | "CollaboratorInvited" => {
            let field = if event.event_type == "MemberRoleChanged" {
                "to"
            } else {
                "role"
            };
            let role: Role = data.get(field)?.as_str()?.parse().ok()?;
            Some(Control::Role(user, role))
        }
        _ => None,
    }
}

/// The session whose access tokens stop working at this event.
pub fn revoked_session(event: &Envelope) -> Option<Uuid> {
    let revokes = event.aggregatetype == "Session"
        && matches!(
            event.event_type.as_str(),
            "UserLoggedOut" | "RefreshTokenReuseDetected"
        );
    revokes.then(|| event.aggregateid.parse().ok()).flatten()
}
