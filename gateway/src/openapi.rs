//! The OpenAPI document. Paths come from the handlers' `#[utoipa::path]`
//! annotations as they are routed; this adds the document's frame, the
//! bearer scheme and the routes utoipa-axum cannot register itself.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem API",
        version = "1",
        description = "Event-sourced backend for real-time collaborative workspaces. \
            Errors are RFC 9457 problem+json with a stable `code`."
    ),
    paths(
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        crate::routes::files::save_file,
        crate::routes::files::delete_file,
        crate::queries::files::get_file,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "projects"), (name = "members"), (name = "workspaces"),
        (name = "files"), (name = "jobs"), (name = "operations"),
        (name = "realtime", description = "One WebSocket, many project subscriptions: ops `auth`, `subscribe` (with `since`), `unsubscribe`, `cursor`, `broadcast`, `ping`; frames `subscribed`, `event`, `presence`, `cursor`, `broadcast`, `job_output`, `error`, `pong` (API.md, Realtime)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
