//! [`EventStoreDirectory`]: the write side's answer to "may this user touch
//! this workspace / project?", read from the project aggregate's events at
//! command time. Also keeps the workspace → project pointer that lets a
//! `/workspaces/{id}` URL find the project aggregate to ask.
//!
//! [`Prefetched`]: the same answers for one file command, whose project is
//! read while the file is, instead of after it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore;
use sqlx::PgPool;
use tandem_domain::file::File;
use tandem_domain::project::Project;
use tandem_domain::services::{
    FileSnapshot, LookupError, ProjectAccess, ProjectDirectory, WorkspaceAccess,
};
use tandem_domain::{FileId, ProjectId, UserId, WorkspaceId};

use crate::event_store::BatchedEventStore;

pub struct EventStoreDirectory {
    pool: PgPool,
    projects: PersistedEventStore<BatchedEventStore, Project>,
    files: PersistedEventStore<BatchedEventStore, File>,
    /// Workspace → project pointers already read. A pointer never changes
    /// once written, so remembering it is safe; it only says which project
    /// to ask, and the asking (the authorization) is never cached.
    pointers: moka::sync::Cache<WorkspaceId, ProjectId>,
}

/// Pointers remembered per process; a miss costs one indexed lookup.
const POINTER_CACHE_ENTRIES: u64 = 100_000;

fn lookup(e: impl std::fmt::Display) -> LookupError {
    LookupError(e.to_string())
}

impl EventStoreDirectory {
    pub fn new(pool: PgPool, events: &BatchedEventStore) -> Self {
        Self {
            projects: PersistedEventStore::new_event_store(events.clone()),
            files: PersistedEventStore::new_event_store(events.clone()),
            pointers: moka::sync::Cache::new(POINTER_CACHE_ENTRIES),
            pool,
        }
    }

    /// Records which project a new workspace id will belong to. Written
    /// before `CreateWorkspace` runs; if that command then fails, the
    /// pointer leads to a project that doesn't know the workspace, which
    /// reads as "not found", so nothing needs undoing.
    pub async fn point_workspace(
        &self,
        workspace: WorkspaceId,
        project: ProjectId,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO workspace_directory (workspace_id, project_id) VALUES ($1, $2)")
            .bind(workspace.0)
            .bind(project.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The project aggregate to ask about `workspace`, if any was recorded.
    pub async fn project_of_workspace(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Option<ProjectId>, sqlx::Error> {
        if let Some(project) = self.pointers.get(&workspace) {
            return Ok(Some(project));
        }
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT project_id FROM workspace_directory WHERE workspace_id = $1",
        )
        .bind(workspace.0)
        .fetch_optional(&self.pool)
        .await?;
        // Only hits are remembered: a missing pointer may be written later.
        let project = id.map(ProjectId);
        if let Some(project) = project {
            self.pointers.insert(workspace, project);
        }
        Ok(project)
    }

    async fn project(&self, id: ProjectId) -> Result<Project, LookupError> {
        let ctx = self
            .projects
            .load_aggregate(&id.to_string())
            .await
            .map_err(lookup)?;
        Ok(ctx.aggregate)
    }

    /// The project `workspace` belongs to, read now; `None` when no
    /// project knows it.
    async fn project_holding(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Option<Project>, LookupError> {
        let Some(project_id) = self.project_of_workspace(workspace).await.map_err(lookup)? else {
            return Ok(None);
        };
        let project = self.project(project_id).await?;
        Ok(project.has_workspace(workspace).then_some(project))
    }
}

/// What `user` may do in `workspace`, given the project holding it.
fn access_in(
    project: Option<Project>,
    workspace: WorkspaceId,
    user: UserId,
) -> Option<WorkspaceAccess> {
    let project = project?;
    project.access_for(user).map(|access| WorkspaceAccess {
        live: project.has_live_workspace(workspace),
        project: access,
    })
}

#[async_trait]
impl ProjectDirectory for EventStoreDirectory {
    async fn project_access(
        &self,
        project: ProjectId,
        user: UserId,
    ) -> Result<Option<ProjectAccess>, LookupError> {
        Ok(self.project(project).await?.access_for(user))
    }

    async fn workspace_access(
        &self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<Option<WorkspaceAccess>, LookupError> {
        let project = self.project_holding(workspace).await?;
        Ok(access_in(project, workspace, user))
    }

    async fn file_snapshot(
        &self,
        workspace: WorkspaceId,
        path: &str,
    ) -> Result<Option<FileSnapshot>, LookupError> {
        let id = FileId::for_path(workspace, path);
        let ctx = self
            .files
            .load_aggregate(&id.to_string())
            .await
            .map_err(lookup)?;
        Ok(ctx.aggregate.snapshot())
    }
}

type ProjectRead = tokio::task::JoinHandle<Result<Option<Project>, LookupError>>;

/// The directory as one command about `workspace` sees it: the project
/// holding the workspace is being read from the moment this is made, so
/// that read shares a batch with the command's own aggregate load rather
/// than following it (in series, they cost a file command a second wait
/// for a load batch, about half a millisecond under load). The read still starts after the command
/// arrived, so authorization stays as fresh as the directory's own. The
/// first question about `workspace` takes that read; any other question
/// goes to the directory.
pub struct Prefetched {
    directory: Arc<EventStoreDirectory>,
    workspace: WorkspaceId,
    read: Mutex<Option<ProjectRead>>,
}

impl Prefetched {
    /// Starts reading `workspace`'s project; call on a Tokio runtime.
    pub fn start(directory: &Arc<EventStoreDirectory>, workspace: WorkspaceId) -> Self {
        let reading = directory.clone();
        let read = tokio::spawn(async move { reading.project_holding(workspace).await });
        Self {
            directory: directory.clone(),
            workspace,
            read: Mutex::new(Some(read)),
        }
    }

    fn take_read(&self, workspace: WorkspaceId) -> Option<ProjectRead> {
        if workspace != self.workspace {
            return None;
        }
        self.read.lock().expect("prefetch poisoned").take()
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        if let Some(read) = self.read.get_mut().ok().and_then(Option::take) {
            read.abort();
        }
    }
}

#[async_trait]
impl ProjectDirectory for Prefetched {
    async fn project_access(
        &self,
        project: ProjectId,
        user: UserId,
    ) -> Result<Option<ProjectAccess>, LookupError> {
        self.directory.project_access(project, user).await
    }

    async fn workspace_access(
        &self,
        workspace: WorkspaceId,
        user: UserId,
    ) -> Result<Option<WorkspaceAccess>, LookupError> {
        let Some(read) = self.take_read(workspace) else {
            return self.directory.workspace_access(workspace, user).await;
        };
        let project = read.await.map_err(lookup)??;
        Ok(access_in(project, workspace, user))
    }

    async fn file_snapshot(
        &self,
        workspace: WorkspaceId,
        path: &str,
    ) -> Result<Option<FileSnapshot>, LookupError> {
        self.directory.file_snapshot(workspace, path).await
    }
}
