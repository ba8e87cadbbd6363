//! Checkpoints of materialized views on the object store (the cold tier's: a local directory by
//! default, S3 by URL).
//!
//! A view's task takes a checkpoint between two input batches, when its dataflow is quiescent:
//! the operators' snapshots ([`super::Dataflow::snapshot`]), the view's rows and logical time,
//! and each input's position (the last stream log record fully applied). The state goes to
//! `checkpoints/views/<view id>/<epoch>.state`, then a small manifest `<epoch>.done` naming its
//! size and CRC32 is written last: a checkpoint without its manifest is half-written and never
//! read. The two newest complete checkpoints are kept; older ones are deleted.
//!
//! At start a view loads the newest checkpoint whose manifest, checksum and format match
//! (a corrupt or truncated one is logged and the previous one tried), and resumes each stream
//! after its recorded position, provided the stream's hot tier still holds every record after
//! it (records already flushed to Parquet are not addressable by position yet); otherwise it is
//! rebuilt from the stored history, as a view without a checkpoint is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::codec;
use crate::storage::cold::ColdStore;

/// What a checkpoint's state was written with: the format and the exact dependency versions
/// (operator state holds Arrow row-format bytes, which only the same Arrow reads back).
fn format() -> String {
    format!(
        "eddydb-view-checkpoint-1/{}",
        crc32fast::hash(include_bytes!("../../Cargo.lock"))
    )
}

/// The manifest written after the state.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    epoch: u64,
    format: String,
    bytes: u64,
    crc32: u32,
    positions: Vec<u64>,
    created_at: String,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub epoch: u64,
    /// Per input, the last stream record applied.
    pub positions: Vec<u64>,
    pub dataflow: Vec<u8>,
    pub view: Vec<u8>,
}

/// The checkpoints of all views, on one object store.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Arc<ColdStore>,
}

fn prefix(view_id: u64) -> String {
    format!("checkpoints/views/{view_id}")
}

fn path(view_id: u64, epoch: u64, suffix: &str) -> String {
    format!("{}/{epoch:020}.{suffix}", prefix(view_id))
}

impl Checkpoints {
    pub fn new(store: Arc<ColdStore>) -> Checkpoints {
        Checkpoints { store }
    }

    /// Write checkpoint `epoch` of view `view_id`; returns its size in bytes.
    pub async fn save(
        &self,
        view_id: u64,
        epoch: u64,
        positions: Vec<u64>,
        dataflow: &[u8],
        view: &[u8],
    ) -> Result<u64> {
        let state = codec::join_parts(&[dataflow, view]);
        let manifest = Manifest {
            epoch,
            format: format(),
            bytes: state.len() as u64,
            crc32: crc32fast::hash(&state),
            positions,
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let bytes = manifest.bytes;
        self.store
            .put_durably(&path(view_id, epoch, "state"), state)
            .await?;
        let manifest = serde_json::to_vec(&manifest)
            .map_err(|e| Error::Internal(format!("checkpoint manifest: {e}")))?;
        self.store
            .put_durably(&path(view_id, epoch, "done"), manifest)
            .await?;
        self.collect(view_id, epoch).await?;
        Ok(bytes)
    }

    /// Epochs with a manifest, newest first.
    async fn epochs(&self, view_id: u64) -> Result<Vec<u64>> {
        let mut epochs: Vec<u64> = self
            .store
            .list(&prefix(view_id))
            .await?
            .iter()
            .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".done")?.parse().ok())
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(epochs)
    }

    /// Delete what is older than the checkpoint before `newest`, including half-written ones.
    async fn collect(&self, view_id: u64, newest: u64) -> Result<()> {
        let keep_from = self
            .epochs(view_id)
            .await?
            .into_iter()
            .find(|e| *e < newest)
            .unwrap_or(newest);
        let old: Vec<String> = self
            .store
            .list(&prefix(view_id))
            .await?
            .into_iter()
            .filter(|p| {
                p.rsplit('/')
                    .next()
                    .and_then(|name| name.split('.').next())
                    .and_then(|epoch| epoch.parse::<u64>().ok())
                    .is_some_and(|epoch| epoch < keep_from)
            })
            .collect();
        self.store.delete(&old).await
    }

    /// Every checkpoint of a dropped view.
    pub async fn delete(&self, view_id: u64) -> Result<()> {
        let all = self.store.list(&prefix(view_id)).await?;
        self.store.delete(&all).await
    }

    /// The newest complete, intact checkpoint of `view_id`, if any. Damaged ones are logged
    /// and skipped.
    pub async fn load(&self, view_id: u64) -> Result<Option<Loaded>> {
        for epoch in self.epochs(view_id).await? {
            match self.read(view_id, epoch).await {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(e) => {
                    tracing::error!(view_id, epoch, error = %e, "checkpoint unusable; trying the one before");
                }
            }
        }
        Ok(None)
    }

    async fn read(&self, view_id: u64, epoch: u64) -> Result<Loaded> {
        let damaged = |what: &str| Error::Storage(format!("checkpoint {epoch}: {what}"));
        let manifest = self
            .store
            .get(&path(view_id, epoch, "done"))
            .await?
            .ok_or_else(|| damaged("manifest vanished"))?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest).map_err(|_| damaged("unreadable manifest"))?;
        if manifest.format != format() {
            return Err(damaged("written by another version"));
        }
        let state = self
            .store
            .get(&path(view_id, epoch, "state"))
            .await?
            .ok_or_else(|| damaged("state missing"))?;
        if state.len() as u64 != manifest.bytes || crc32fast::hash(&state) != manifest.crc32 {
            return Err(damaged("state truncated or corrupt (size or checksum)"));
        }
        let parts = codec::split_parts(&state)?;
        let [dataflow, view] = parts.as_slice() else {
            return Err(damaged("state has the wrong parts"));
        };
        Ok(Loaded {
            epoch: manifest.epoch,
            positions: manifest.positions,
            dataflow: dataflow.to_vec(),
            view: view.to_vec(),
        })
    }
}
