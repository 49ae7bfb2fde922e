//! Query endpoints: every GET of API.md, answered from the read models
//! (`tandem_projections::queries`), never from the event store.
//!
//! Each handler takes [`crate::read::CaughtUp`] so `?min_position=` works
//! everywhere, and answers 404 alike for "unknown" and "not a member" (the
//! read model's membership decides). Bodies are separate types from the
//! rows they come from.

pub mod files;
pub mod jobs;
pub mod projects;
pub mod workspaces;

use serde::Serialize;
use utoipa::ToSchema;

use crate::read::cursor;

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    pub fn from_page<R, K: ToString>(
        page: tandem_projections::queries::Page<R, K>,
        item: impl FnMut(R) -> T,
    ) -> Self {
        Self {
            items: page.items.into_iter().map(item).collect(),
            next_cursor: page.next.map(cursor),
        }
    }
}
