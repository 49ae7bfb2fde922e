//! `read.files` (current content's version per path) and
//! `read.file_versions` (every saved content, kept after a delete).

use cqrs_es::Aggregate;
use tandem_domain::envelope::Envelope;
use tandem_domain::file::{File, FileEvent};

use crate::projector::{aggregate_uuid, ProjectionError, Projector};
use crate::sql::{Lit, SqlBatch};

pub struct Files;

impl Projector for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["files", "file_versions"]
    }

    fn project(&self, event: &Envelope, batch: &mut SqlBatch) -> Result<(), ProjectionError> {
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
                let args = [
                    file,
                    version,
                    workspace_id.as_uuid().into(),
                    (&path).into(),
                    project_id.as_uuid().into(),
                    size,
                    by.as_uuid().into(),
                    at,
                    (&content).into(),
                ];
                batch.push(
                    "INSERT INTO files (file_id, version, workspace_id, path, project_id, size_bytes,
                                        updated_by, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (workspace_id, path) DO UPDATE SET
                        version = EXCLUDED.version, size_bytes = EXCLUDED.size_bytes,
                        updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at",
                    &args,
                );
                batch.push(
                    "INSERT INTO file_versions (file_id, version, workspace_id, path, project_id,
                                                size_bytes, saved_by, saved_at, content)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &args,
                );
            }
            FileEvent::FileDeleted {
                workspace_id,
                path,
                project_id: _,
                by: _,
            } => batch.push(
                "DELETE FROM files WHERE workspace_id = $1 AND path = $2",
                &[workspace_id.as_uuid().into(), (&path).into()],
            ),
        }
        Ok(())
    }
}
