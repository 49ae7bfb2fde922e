//! An in-memory [`ProjectDirectory`] for aggregate tests: the facts a test
//! states are the facts the aggregate sees.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::roles::Role;
use crate::services::{
    Directory, FileSnapshot, LookupError, ProjectAccess, ProjectDirectory, WorkspaceAccess,
};

#[derive(Clone, Default)]
pub struct FixedDirectory {
    pub project: Option<ProjectId>,
    pub archived: bool,
    pub members: HashMap<UserId, Role>,
    pub workspaces: HashMap<WorkspaceId, bool>,
    pub files: HashMap<(WorkspaceId, String), FileSnapshot>,
    pub down: bool,
}

impl FixedDirectory {
    pub fn new(project: ProjectId) -> Self {
        Self {
            project: Some(project),
            ..Self::default()
        }
    }

    pub fn member(mut self, user: UserId, role: Role) -> Self {
        self.members.insert(user, role);
        self
    }

    pub fn workspace(mut self, ws: WorkspaceId, live: bool) -> Self {
        self.workspaces.insert(ws, live);
        self
    }

    pub fn file(mut self, ws: WorkspaceId, path: &str, version: u64, content: &str) -> Self {
        self.files.insert(
            (ws, path.to_owned()),
            FileSnapshot {
                version,
                content: content.to_owned(),
            },
        );
        self
    }

    pub fn archived(mut self) -> Self {
        self.archived = true;
        self
    }

    pub fn unavailable(mut self) -> Self {
        self.down = true;
        self
    }

    pub fn shared(self) -> Directory {
        Arc::new(self)
    }

    fn access(&self, user: UserId) -> Option<ProjectAccess> {
        self.project.map(|project_id| ProjectAccess {
            project_id,
            role: self.members.get(&user).copied(),
            archived: self.archived,
        })
    }

    fn check(&self) -> Result<(), LookupError> {
        if self.down {
            Err(LookupError("test directory is down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ProjectDirectory for FixedDirectory {
    async fn project_access(
        &self,
        project: ProjectId,
        user: UserId,
    ) -> Result<Option<ProjectAccess>, LookupError> {
        self.check()?;
        Ok(self.access(user).filter(|a| a.project_id == project))
    }

    async fn workspace_access(
        &self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<Option<WorkspaceAccess>, LookupError> {
        self.check()?;
        let Some(live) = self.workspaces.get(&workspace) else {
            return Ok(None);
        };
        Ok(self.access(user).map(|project| WorkspaceAccess {
            project,
            live: *live,
        }))
    }

    async fn file_snapshot(
        &self,
        workspace: WorkspaceId,
        path: &str,
    ) -> Result<Option<FileSnapshot>, LookupError> {
        self.check()?;
        Ok(self.files.get(&(workspace, path.to_owned())).cloned())
    }
}
