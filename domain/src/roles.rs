//! Project roles and the permissions they carry.

use serde::{Deserialize, Serialize};

/// A member's role in a project. Exactly one member is the `Owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Collaborator,
    Viewer,
}

impl Role {
    /// May change project content: details, workspaces, files, jobs.
    pub fn can_write(self) -> bool {
        match self {
            Role::Owner | Role::Collaborator => true,
            Role::Viewer => false,
        }
    }

    /// May archive the project and manage its members.
    pub fn can_manage(self) -> bool {
        match self {
            Role::Owner => true,
            Role::Collaborator | Role::Viewer => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Collaborator => "collaborator",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "collaborator" => Ok(Role::Collaborator),
            "viewer" => Ok(Role::Viewer),
            _ => Err(()),
        }
    }
}
