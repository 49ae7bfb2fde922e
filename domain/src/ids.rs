//! Identifier newtypes. All ids are UUIDs (v7 when we mint them, so they sort
//! by creation time); the newtypes keep a `ProjectId` from being passed where
//! a `UserId` is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// A registered user.
    UserId
);
id_type!(
    /// A project: the unit of membership and of event-stream subscription.
    ProjectId
);
id_type!(
    /// A workspace inside a project.
    WorkspaceId
);
id_type!(
    /// A job (code run in the background).
    JobId
);
id_type!(
    /// A login session; also the id of its refresh-token family.
    SessionId
);
id_type!(
    /// A file aggregate; derived from its workspace and path, see [`FileId::for_path`].
    FileId
);

impl FileId {
    /// Files are addressed by workspace and path, so their aggregate id is a
    /// name-based UUID of the two: the same path always finds the same stream,
    /// and no lookup table is needed to go from a URL to an aggregate.
    pub fn for_path(workspace: WorkspaceId, path: &str) -> Self {
        Self(Uuid::new_v5(&workspace.0, path.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_stable_per_workspace_and_path() {
        let ws = WorkspaceId::generate();
        assert_eq!(
            FileId::for_path(ws, "src/main.py"),
            FileId::for_path(ws, "src/main.py")
        );
        assert_ne!(
            FileId::for_path(ws, "src/main.py"),
            FileId::for_path(ws, "src/other.py")
        );
        assert_ne!(
            FileId::for_path(ws, "a"),
            FileId::for_path(WorkspaceId::generate(), "a")
        );
    }

    #[test]
    fn ids_round_trip_through_strings() {
        let id = ProjectId::generate();
        assert_eq!(id.to_string().parse::<ProjectId>().unwrap(), id);
        assert!("not-a-uuid".parse::<ProjectId>().is_err());
    }
}
