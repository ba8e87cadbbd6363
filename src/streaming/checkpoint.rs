//! Checkpoints of materialized views on the object store (the cold tier's: a local directory by
//! default, S3 by URL).
//!
//! A view's task takes a checkpoint between two input batches, when its dataflow is quiescent
//! (one task applies one batch at a time, so no barrier has to be aligned inside it): the
//! operators' snapshots ([`super::Dataflow::snapshot`]), the view's rows and logical time, each
//! stream input's position (the last log record fully applied) and, per table or view input,
//! the rows applied from it. The state goes to `checkpoints/views/<view id>/<epoch>.state`,
//! then a small manifest `<epoch>.done` naming its size and CRC32 is written last: a checkpoint
//! without its manifest is half-written and never read. The two newest complete checkpoints
//! are kept; older ones are deleted.
//!
//! At start a view loads the newest checkpoint whose manifest, checksum and format match
//! (a corrupt or truncated one is logged and the previous one tried), replays each stream from
//! the log after its position (the positions hold those log segments), and receives from each
//! table or view input the difference between its contents then and the rows applied
//! ([`super::runtime`]). Without a usable checkpoint it is rebuilt from the stored history.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::codec;
use crate::storage::cold::ColdStore;

/// What a checkpoint's state was written with: the format and the exact dependency versions
/// (operator state holds Arrow row-format bytes, which only the same Arrow reads back).
fn format() -> String {
    format!(
        "eddydb-view-checkpoint-2/{}",
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

/// The state a checkpoint holds besides positions.
#[derive(Debug, Default)]
pub struct Parts {
    /// The operators' snapshots ([`super::Dataflow::snapshot`]).
    pub dataflow: Vec<u8>,
    /// The view's rows, logical time and watermark ([`super::view::View::snapshot`]).
    pub view: Vec<u8>,
    /// Per table or view input, the rows the view had applied from it.
    pub inputs: Vec<u8>,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub epoch: u64,
    /// Per input, the last stream record applied (0 for tables and views).
    pub positions: Vec<u64>,
    pub parts: Parts,
    /// Size of the stored state.
    pub bytes: u64,
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
        parts: &Parts,
    ) -> Result<u64> {
        let state = codec::join_parts(&[&parts.dataflow, &parts.view, &parts.inputs]);
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
        let [dataflow, view, inputs] = parts.as_slice() else {
            return Err(damaged("state has the wrong parts"));
        };
        Ok(Loaded {
            epoch: manifest.epoch,
            positions: manifest.positions,
            bytes: manifest.bytes,
            parts: Parts {
                dataflow: dataflow.to_vec(),
                view: view.to_vec(),
                inputs: inputs.to_vec(),
            },
        })
    }
}
