use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{FileCommand, FileEvent};
use crate::ids::{ProjectId, UserId, WorkspaceId};
use crate::services::{Directory, FileSnapshot, LookupError, WriteDenied};
use crate::ProjectScoped;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct File {
    project_id: Option<ProjectId>,
    /// Number of events applied: the file's version.
    version: u64,
    /// The current content, `None` when the file does not exist (never
    /// saved, or deleted). Kept so a job can run the file as it is now.
    content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The workspace is unknown, deleted, or in a project the actor can't see.
    #[error("workspace not found")]
    WorkspaceNotFound,
    #[error("your role in this project does not allow this")]
    Forbidden,
    #[error("the project is archived and read-only")]
    Archived,
    #[error("the file has changed since version {expected}; it is now at version {current}")]
    VersionConflict { expected: u64, current: u64 },
    #[error("file not found")]
    FileNotFound,
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

impl File {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The live content, for jobs that run a workspace file.
    pub fn snapshot(&self) -> Option<FileSnapshot> {
        self.content.as_ref().map(|content| FileSnapshot {
            version: self.version,
            content: content.clone(),
        })
    }

    /// Asks the owning project whether `actor` may write into `workspace`.
    async fn authorize(
        directory: &Directory,
        workspace: WorkspaceId,
        actor: UserId,
    ) -> Result<ProjectId, FileError> {
        let access = directory
            .workspace_access(workspace, actor)
            .await?
            .filter(|a| a.live)
            .ok_or(FileError::WorkspaceNotFound)?;
        access
            .project
            .require_write()
            .map_err(|denied| match denied {
                WriteDenied::NotVisible => FileError::WorkspaceNotFound,
                WriteDenied::ReadOnlyRole => FileError::Forbidden,
                WriteDenied::Archived => FileError::Archived,
            })
    }

    fn check_base(&self, base_version: Option<u64>) -> Result<(), FileError> {
        match base_version {
            Some(expected) if expected != self.version => Err(FileError::VersionConflict {
                expected,
                current: self.version,
            }),
            Some(_) | None => Ok(()),
        }
    }
}

impl Aggregate for File {
    const TYPE: &'static str = "File";
    type Command = FileCommand;
    type Event = FileEvent;
    type Error = FileError;
    type Services = Directory;

    async fn handle(
        &mut self,
        command: FileCommand,
        directory: &Directory,
        sink: &EventSink<Self>,
    ) -> Result<(), FileError> {
        let event = match command {
            FileCommand::Save {
                actor,
                workspace_id,
                path,
                content,
                base_version,
            } => {
                let project_id = Self::authorize(directory, workspace_id, actor).await?;
                self.check_base(base_version)?;
                let content = content.into_string();
                FileEvent::FileSaved {
                    project_id,
                    workspace_id,
                    path: path.as_str().to_owned(),
                    size_bytes: content.len() as u64,
                    content,
                    by: actor,
                }
            }
            FileCommand::Delete {
                actor,
                workspace_id,
                path,
                base_version,
            } => {
                let project_id = Self::authorize(directory, workspace_id, actor).await?;
                if self.content.is_none() {
                    return Err(FileError::FileNotFound);
                }
                self.check_base(base_version)?;
                FileEvent::FileDeleted {
                    project_id,
                    workspace_id,
                    path: path.as_str().to_owned(),
                    by: actor,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: FileEvent) {
        self.version += 1;
        match event {
            FileEvent::FileSaved {
                project_id,
                content,
                workspace_id: _,
                path: _,
                size_bytes: _,
                by: _,
            } => {
                self.project_id = Some(project_id);
                self.content = Some(content);
            }
            FileEvent::FileDeleted {
                project_id,
                workspace_id: _,
                path: _,
                by: _,
            } => {
                self.project_id = Some(project_id);
                self.content = None;
            }
        }
    }
}

impl ProjectScoped for File {
    fn project_id(&self) -> Option<ProjectId> {
        self.project_id
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::roles::Role;
    use crate::testing::FixedDirectory;
    use crate::values::{FileContent, FilePath};

    type Test = TestFramework<File>;

    struct Scene {
        project: ProjectId,
        ws: WorkspaceId,
        writer: UserId,
        viewer: UserId,
        stranger: UserId,
    }

    impl Scene {
        fn new() -> Self {
            Self {
                project: ProjectId::generate(),
                ws: WorkspaceId::generate(),
                writer: UserId::generate(),
                viewer: UserId::generate(),
                stranger: UserId::generate(),
            }
        }

        fn directory(&self) -> FixedDirectory {
            FixedDirectory::new(self.project)
                .member(self.writer, Role::Collaborator)
                .member(self.viewer, Role::Viewer)
                .workspace(self.ws, true)
        }

        fn save(&self, actor: UserId, content: &str, base_version: Option<u64>) -> FileCommand {
            FileCommand::Save {
                actor,
                workspace_id: self.ws,
                path: FilePath::parse("src/main.py").unwrap(),
                content: FileContent::parse(content.into()).unwrap(),
                base_version,
            }
        }

        fn delete(&self, actor: UserId, base_version: Option<u64>) -> FileCommand {
            FileCommand::Delete {
                actor,
                workspace_id: self.ws,
                path: FilePath::parse("src/main.py").unwrap(),
                base_version,
            }
        }

        fn saved(&self, content: &str) -> FileEvent {
            FileEvent::FileSaved {
                project_id: self.project,
                workspace_id: self.ws,
                path: "src/main.py".into(),
                content: content.into(),
                size_bytes: content.len() as u64,
                by: self.writer,
            }
        }
    }

    #[test]
    fn a_writer_creates_a_file() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given_no_previous_events()
            .when(s.save(s.writer, "print(1)", Some(0)))
            .then_expect_events(vec![s.saved("print(1)")]);
    }

    #[test]
    fn a_save_on_the_current_version_is_accepted() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1")])
            .when(s.save(s.writer, "v2", Some(1)))
            .then_expect_events(vec![s.saved("v2")]);
    }

    #[test]
    fn a_save_without_base_version_overwrites() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1"), s.saved("v2")])
            .when(s.save(s.writer, "v3", None))
            .then_expect_events(vec![s.saved("v3")]);
    }

    #[test]
    fn a_save_on_a_stale_version_is_a_conflict() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1"), s.saved("v2")])
            .when(s.save(s.writer, "mine", Some(1)))
            .then_expect_error(FileError::VersionConflict {
                expected: 1,
                current: 2,
            });
    }

    #[test]
    fn creating_over_an_existing_file_is_a_conflict() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1")])
            .when(s.save(s.writer, "mine", Some(0)))
            .then_expect_error(FileError::VersionConflict {
                expected: 0,
                current: 1,
            });
    }

    #[test]
    fn viewers_never_write() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given_no_previous_events()
            .when(s.save(s.viewer, "nope", None))
            .then_expect_error(FileError::Forbidden);
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1")])
            .when(s.delete(s.viewer, None))
            .then_expect_error(FileError::Forbidden);
    }

    #[test]
    fn strangers_and_unknown_workspaces_see_nothing() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given_no_previous_events()
            .when(s.save(s.stranger, "nope", None))
            .then_expect_error(FileError::WorkspaceNotFound);
        let empty = FixedDirectory::new(s.project).member(s.writer, Role::Owner);
        Test::with(empty.shared())
            .given_no_previous_events()
            .when(s.save(s.writer, "nope", None))
            .then_expect_error(FileError::WorkspaceNotFound);
    }

    #[test]
    fn a_deleted_workspace_takes_no_files() {
        let s = Scene::new();
        let dir = s.directory().workspace(s.ws, false);
        Test::with(dir.shared())
            .given_no_previous_events()
            .when(s.save(s.writer, "late", None))
            .then_expect_error(FileError::WorkspaceNotFound);
    }

    #[test]
    fn an_archived_project_takes_no_files() {
        let s = Scene::new();
        Test::with(s.directory().archived().shared())
            .given(vec![s.saved("v1")])
            .when(s.save(s.writer, "late", None))
            .then_expect_error(FileError::Archived);
        Test::with(s.directory().archived().shared())
            .given(vec![s.saved("v1")])
            .when(s.delete(s.writer, None))
            .then_expect_error(FileError::Archived);
    }

    #[test]
    fn a_writer_deletes_a_file() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1")])
            .when(s.delete(s.writer, Some(1)))
            .then_expect_events(vec![FileEvent::FileDeleted {
                project_id: s.project,
                workspace_id: s.ws,
                path: "src/main.py".into(),
                by: s.writer,
            }]);
    }

    #[test]
    fn deleting_a_missing_or_changed_file_is_refused() {
        let s = Scene::new();
        Test::with(s.directory().shared())
            .given_no_previous_events()
            .when(s.delete(s.writer, None))
            .then_expect_error(FileError::FileNotFound);
        Test::with(s.directory().shared())
            .given(vec![s.saved("v1"), s.saved("v2")])
            .when(s.delete(s.writer, Some(1)))
            .then_expect_error(FileError::VersionConflict {
                expected: 1,
                current: 2,
            });
    }

    #[test]
    fn a_directory_outage_is_reported_not_guessed() {
        let s = Scene::new();
        Test::with(s.directory().unavailable().shared())
            .given_no_previous_events()
            .when(s.save(s.writer, "x", None))
            .then_expect_error(FileError::Lookup(LookupError(
                "test directory is down".into(),
            )));
    }

    #[test]
    fn the_snapshot_follows_saves_and_deletes() {
        let s = Scene::new();
        let mut f = File::default();
        f.apply(s.saved("v1"));
        assert_eq!(f.snapshot().unwrap().content, "v1");
        f.apply(FileEvent::FileDeleted {
            project_id: s.project,
            workspace_id: s.ws,
            path: "src/main.py".into(),
            by: s.writer,
        });
        assert_eq!(f.snapshot(), None);
        assert_eq!(f.version(), 2);
    }
}
