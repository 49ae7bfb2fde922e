//! The Postgres read models, one projector each. Every `match` on events
//! lists the variants it ignores, so a new event breaks the build here.

mod activity;
mod files;
mod jobs;
mod projects;
mod users;

use std::sync::Arc;

pub use activity::Activity;
pub use files::Files;
pub use jobs::Jobs;
pub use projects::Projects;
pub use users::Users;

use crate::projector::Projector;

/// Every Postgres projector, in the order `tandem up` starts them.
pub fn all() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(Users),
        Arc::new(Projects),
        Arc::new(Files),
        Arc::new(Jobs),
        Arc::new(Activity),
    ]
}

/// The projector called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projector>> {
    all().into_iter().find(|p| p.name() == name)
}
