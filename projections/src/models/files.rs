//! `read.files` (current content's version per path) and
//! `read.file_versions` (every saved content, kept after a delete).

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::file::{File, FileEvent};

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::rows::RowOps;
use crate::sql::Lit;

pub struct Files;

impl Projector for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["files", "file_versions"]
    }

    fn insert_only(&self) -> &'static [&'static str] {
        &["file_versions"]
    }

    fn project(&self, event: &Envelope, rows: &mut RowOps) -> Result<(), ProjectionError> {
        if event.aggregatetype != File::TYPE {
            return Ok(());
        }
        let file = Lit::Uuid(aggregate_uuid(event)?);
        let at = Lit::Time(event.time);
        let version = Lit::Int(event.sequence);
        match event.decode::<FileEvent>()? {
            FileEvent::FileSaved {
                project_id,
                workspace_id,
                path,
                content,
                size_bytes,
                by,
            } => {
                let size = Lit::Int(i64::try_from(size_bytes).unwrap_or(i64::MAX));
                let (workspace, path) = (Lit::Uuid(workspace_id.as_uuid()), Lit::from(path));
                let (project, by) = (Lit::Uuid(project_id.as_uuid()), Lit::Uuid(by.as_uuid()));
                rows.upsert(
                    "files",
                    vec![("workspace_id", workspace.clone()), ("path", path.clone())],
                    vec![
                        ("file_id", file.clone()),
                        ("project_id", project.clone()),
                        ("version", version.clone()),
                        ("size_bytes", size.clone()),
                        ("updated_by", by.clone()),
                        ("updated_at", at.clone()),
                    ],
                );
                rows.insert(
                    "file_versions",
                    vec![("file_id", file), ("version", version)],
                    vec![
                        ("workspace_id", workspace),
                        ("path", path),
                        ("project_id", project),
                        ("size_bytes", size),
                        ("saved_by", by),
                        ("saved_at", at),
                        ("content", content.into()),
                    ],
                );
            }
            FileEvent::FileDeleted {
                workspace_id,
                path,
                project_id: _,
                by: _,
            } => rows.delete(
                "files",
                vec![
                    ("workspace_id", workspace_id.as_uuid().into()),
                    ("path", path.into()),
                ],
            ),
        }
        Ok(())
    }
}
