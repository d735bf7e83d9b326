//! Backup and restore of the cache (`Admin.Backup`, `Admin.Restore`; `cachectl snapshot --out`
//! and `cachectl restore`).
//!
//! A backup is the snapshot file format ([`super::snapshot`]): the entries as stored, sealed
//! under the fleet key, and the one-time claims. Only a fleet with the same key can use the
//! entries; the file holds no secret in clear.
//!
//! A restore writes through the log like any put, so every member gets it: entries in batches
//! of puts ([`Command::PutBatch`]), claims one by one. The newest version still wins, so a
//! restore into a cluster that already serves newer tokens changes nothing for them. The file
//! is read and checked whole (format, counts, every entry's bounds) before anything is written:
//! a bad file writes nothing.

use std::io::Seek;
use std::sync::Arc;

use tokengate_proto::admin as pa;
use tonic::Status;

use super::bounds;
use super::context::{MAX_PUT_BATCH, MAX_PUT_BATCH_BYTES, NodeContext, put_bytes};
use super::snapshot::{self, CHUNK_BYTES, MAX_SNAPSHOT_BYTES};
use super::state::{CacheState, Command, Outcome};
use crate::token::now_millis;

/// The chunks of a backup of the state this node has applied.
pub async fn backup(
    ctx: &NodeContext,
) -> Result<impl futures_util::Stream<Item = Result<pa::BackupChunk, Status>> + use<>, Status> {
    use futures_util::StreamExt;
    // A clone of the persistent maps, in O(1); encoding and writing run off the async threads.
    let cache = ctx.shared.read(|a| a.cache.clone());
    let files = ctx.snapshots.clone();
    let file = tokio::task::spawn_blocking(move || {
        let mut tmp = files.temporary()?;
        snapshot::write(&cache, tmp.as_file_mut())?;
        // Unlinked now: the open file is all that is left, and it goes with the stream.
        let mut file = tmp.into_file();
        file.rewind()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(format!("cannot write the backup: {e}")))?;
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), CHUNK_BYTES);
    Ok(chunks.map(|chunk| {
        chunk
            .map(|data| pa::BackupChunk {
                data: data.to_vec(),
            })
            .map_err(|e| Status::internal(format!("cannot read the backup: {e}")))
    }))
}

/// Receives a backup from `chunks` and writes what it holds (this node must lead).
pub async fn restore(
    ctx: &Arc<NodeContext>,
    mut chunks: tonic::Streaming<pa::BackupChunk>,
) -> Result<pa::RestoreResponse, Status> {
    ctx.lead()?;
    let state = receive(ctx, &mut chunks).await?;
    let now = now_millis();
    // Checked whole first: a file with one bad entry writes nothing.
    for entry in state.entries.values() {
        bounds::entry(entry, now)?;
    }
    for until in state.claims.values() {
        if *until > now {
            bounds::claim(*until, now)?;
        }
    }
    let mut answer = pa::RestoreResponse::default();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (key, entry) in &state.entries {
        if entry.meta.expires_at <= now {
            answer.skipped += 1;
            continue;
        }
        let command = Command::Put {
            key: *key,
            entry: Box::new((**entry).clone()),
            fence: None,
        };
        // Batches are sized as the group commit sizes them.
        bytes += put_bytes(&command);
        batch.push(command);
        if batch.len() == MAX_PUT_BATCH || bytes >= MAX_PUT_BATCH_BYTES {
            put(ctx, std::mem::take(&mut batch), &mut answer).await?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        put(ctx, batch, &mut answer).await?;
    }
    for (key, until) in &state.claims {
        if *until > now {
            let claim = Command::ClaimOnce {
                key: *key,
                until: *until,
            };
            ctx.write(claim).await?;
            answer.claims += 1;
        }
    }
    tracing::info!(
        stored = answer.stored,
        skipped = answer.skipped,
        claims = answer.claims,
        "backup restored"
    );
    Ok(answer)
}

/// Writes the stream to a temporary file (at most [`MAX_SNAPSHOT_BYTES`]) and reads it back.
async fn receive(
    ctx: &NodeContext,
    chunks: &mut tonic::Streaming<pa::BackupChunk>,
) -> Result<CacheState, Status> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| Status::internal(format!("cannot hold the backup: {e}"));
    // The path is removed when `_path` drops, after the file has been read back.
    let (file, _path) = ctx.snapshots.temporary().map_err(io)?.into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let mut received = 0u64;
    while let Some(chunk) = chunks.message().await? {
        received += chunk.data.len() as u64;
        if received > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the backup exceeds {MAX_SNAPSHOT_BYTES} bytes"
            )));
        }
        out.write_all(&chunk.data).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    let mut file = out.into_std().await;
    tokio::task::spawn_blocking(move || {
        file.rewind()?;
        Ok::<_, std::io::Error>(snapshot::read(file))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(io)?
    .map_err(|e| Status::invalid_argument(format!("not a backup: {e}")))
}

/// Proposes one batch of puts and counts what was stored.
async fn put(
    ctx: &NodeContext,
    batch: Vec<Command>,
    answer: &mut pa::RestoreResponse,
) -> Result<(), Status> {
    let n = batch.len() as u64;
    let stored = match ctx.write(Command::PutBatch(batch)).await?.0 {
        Outcome::Batch(outcomes) => {
            outcomes.iter().filter(|o| **o == Outcome::Stored).count() as u64
        }
        _ => return Err(Status::internal("batch answered out of shape")),
    };
    answer.stored += stored;
    answer.skipped += n - stored;
    Ok(())
}
