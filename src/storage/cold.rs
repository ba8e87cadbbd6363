//! The cold tier: Parquet files on an `object_store`, and the manifest that says which files
//! belong to a stream.
//!
//! The store is a local directory under the data directory unless `--object-store URL` names
//! another one (`s3://bucket/prefix`, with the usual `AWS_*` environment variables for
//! credentials, region and endpoint, so any S3-compatible server works; or `file:///path`).
//! Whatever the backend, EddyDB sees it as one root under which a stream's files live at
//! `relations/<id>/date=YYYY-MM-DD/hour=HH/<name>.parquet`; DataFusion reads them through the
//! same store, registered on the session under [`ColdStore::url`].
//!
//! A file is part of a stream only once the stream's manifest (a JSON file in the stream's local
//! directory, replaced atomically) lists it. Files are written first and listed after, and
//! unlisted only before they are deleted, so a crash at any point leaves at worst unlisted
//! files, which [`ColdStore::remove_unlisted`] deletes at the next start.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// The scheme and host under which DataFusion finds the cold tier.
const COLD_URL: &str = "eddy://cold";

/// A stream's cold files, as committed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Every log record up to this sequence number is in the listed files.
    pub flushed_seq: u64,
    pub files: Vec<ColdFile>,
    /// A connector's position (e.g. Kafka offsets) as of record `flushed_seq`: the log records
    /// after it carry their own ([`super::stream::StreamStore::append_at`]).
    #[serde(default)]
    pub source_position: Option<String>,
}

/// One Parquet file of a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColdFile {
    /// Path under the store root.
    pub path: String,
    /// Event-time hour (hours since the Unix epoch) of every row in the file.
    pub hour: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest event time in the file, microseconds since the epoch (None when
    /// every row's event time is NULL or the stream has no event-time column).
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    /// When the file was written, microseconds since the epoch.
    pub created_at: i64,
}

impl Manifest {
    /// Read a manifest; a missing file is an empty manifest (nothing flushed yet).
    pub fn load(path: &Path) -> Result<Manifest> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Storage(format!("unreadable manifest {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(Error::Storage(format!(
                "could not read manifest {}: {e}",
                path.display()
            ))),
        }
    }

    /// Replace the manifest atomically and durably.
    pub fn store(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Internal(format!("manifest encoding: {e}")))?;
        write_atomically(path, &bytes)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new contents: write a
/// temporary file, fsync it, rename it over the target, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let fail = |what: &str, e: std::io::Error| {
        Error::Storage(format!("could not {what} {}: {e}", path.display()))
    };
    let mut file = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
    file.write_all(bytes).map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("sync", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| fail("replace", e))?;
    if let Some(dir) = path.parent() {
        super::log::sync_dir(dir)?;
    }
    Ok(())
}

/// The object store holding every stream's Parquet files.
#[derive(Debug)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    /// The directory of a local store: object_store does not fsync what it writes there, so
    /// [`ColdStore::sync_written`] does (S3 acknowledges a PUT once it is durable).
    local_root: Option<std::path::PathBuf>,
    /// Local files written since the last sync.
    unsynced: tokio::sync::Mutex<Vec<String>>,
    /// Where the store points, for logs and `SHOW`: the URL or the local directory.
    location: String,
    /// Failed requests, see [`ColdStore::errors`].
    errors: std::sync::atomic::AtomicU64,
}

impl ColdStore {
    /// Open the cold tier: `url` if given, else `default_dir` on the local file system.
    pub fn open(url: Option<&str>, default_dir: &Path) -> Result<ColdStore> {
        let (store, location, local_root): (Arc<dyn ObjectStore>, String, _) = match url {
            None => (
                local_store(default_dir)?,
                default_dir.display().to_string(),
                Some(default_dir.to_path_buf()),
            ),
            Some(url) => {
                let (store, local_root) = store_for_url(url)?;
                (store, url.to_string(), local_root)
            }
        };
        Ok(ColdStore {
            store,
            location,
            local_root,
            unsynced: tokio::sync::Mutex::new(Vec::new()),
            errors: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A failed object-store request: counted for `/metrics`, then the error.
    fn store_error(&self, message: String) -> Error {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Error::Storage(message)
    }

    /// Object-store requests of flushes, compactions and reads that failed since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the files go, as configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The URL DataFusion resolves cold files under; see [`ColdStore::register`].
    pub fn url() -> ObjectStoreUrl {
        // A constant, valid URL.
        ObjectStoreUrl::parse(COLD_URL).unwrap_or_else(|_| ObjectStoreUrl::local_filesystem())
    }

    /// Make the store readable by DataFusion plans of `ctx`.
    pub fn register(&self, runtime: &datafusion::execution::runtime_env::RuntimeEnv) {
        let url = Self::url();
        runtime.register_object_store(url.as_ref(), Arc::clone(&self.store));
    }

    /// Write batches as one Parquet file at `path`, returning its size in bytes.
    pub async fn write_parquet(
        &self,
        path: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, Arc::clone(schema), Some(props))
            .map_err(|e| Error::Storage(format!("parquet encoding: {e}")))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| Error::Storage(format!("parquet encoding: {e}")))?;
        }
        writer
            .close()
            .map_err(|e| Error::Storage(format!("parquet encoding: {e}")))?;
        let bytes = buffer.len() as u64;
        self.store
            .put(&StorePath::from(path), PutPayload::from(buffer))
            .await
            .map_err(|e| self.store_error(format!("could not write {path}: {e}")))?;
        if self.local_root.is_some() {
            self.unsynced.lock().await.push(path.to_string());
        }
        Ok(bytes)
    }

    /// Make the files written so far durable (fsync of files and directories on a local
    /// store; nothing to do on S3). Called before a manifest lists them and before the log
    /// that also holds their rows is released.
    pub async fn sync_written(&self) -> Result<()> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        // Held until the files are synced: a caller finding the list empty must not go on while
        // another caller is still syncing the files it took.
        let mut unsynced = self.unsynced.lock().await;
        let paths = std::mem::take(&mut *unsynced);
        if paths.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut dirs = std::collections::BTreeSet::new();
            for path in &paths {
                let file = root.join(path);
                std::fs::File::open(&file)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| {
                        Error::Storage(format!("could not sync {}: {e}", file.display()))
                    })?;
                let mut dir = file.parent().map(Path::to_path_buf);
                while let Some(d) = dir {
                    if !d.starts_with(&root) || !dirs.insert(d.clone()) {
                        break;
                    }
                    dir = d.parent().map(Path::to_path_buf);
                }
            }
            for dir in dirs {
                super::log::sync_dir(&dir)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("sync task failed: {e}")))?
    }

    /// Write an object and make it durable before returning.
    pub async fn put_durably(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&StorePath::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| self.store_error(format!("could not write {path}: {e}")))?;
        if self.local_root.is_some() {
            self.unsynced.lock().await.push(path.to_string());
            self.sync_written().await?;
        }
        Ok(())
    }

    /// An object's bytes; None if it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.store.get(&StorePath::from(path)).await {
            Ok(found) => {
                Ok(Some(found.bytes().await.map_err(|e| {
                    self.store_error(format!("could not read {path}: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error(format!("could not read {path}: {e}"))),
        }
    }

    /// Paths of the objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let prefix = StorePath::from(prefix);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_error(format!("could not list {prefix}: {e}")))?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .collect())
    }

    /// Read a whole Parquet file back.
    pub async fn read_parquet(&self, path: &str) -> Result<Vec<RecordBatch>> {
        let bytes: Bytes = self
            .store
            .get(&StorePath::from(path))
            .await
            .map_err(|e| self.store_error(format!("could not read {path}: {e}")))?
            .bytes()
            .await
            .map_err(|e| self.store_error(format!("could not read {path}: {e}")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| Error::Storage(format!("unreadable parquet file {path}: {e}")))?;
        reader
            .map(|b| b.map_err(|e| Error::Storage(format!("unreadable parquet file {path}: {e}"))))
            .collect()
    }

    /// Delete files; a file already gone is not an error.
    pub async fn delete(&self, paths: &[String]) -> Result<()> {
        for path in paths {
            match self.store.delete(&StorePath::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_error(format!("could not delete {path}: {e}"))),
            }
        }
        Ok(())
    }

    /// Delete every file under `prefix` that `keep` does not list: what a crash between writing
    /// a file and listing it (or unlisting and deleting it) left behind.
    pub async fn remove_unlisted(&self, prefix: &str, keep: &HashSet<String>) -> Result<usize> {
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&StorePath::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.store_error(format!("could not list {prefix}: {e}")))?;
        let orphans: Vec<String> = listed
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|p| !keep.contains(p))
            .collect();
        self.delete(&orphans).await?;
        Ok(orphans.len())
    }
}

/// Rows per Parquet row group: small enough that statistics prune inside a file.
const ROW_GROUP_ROWS: usize = 64 * 1024;

fn local_store(dir: &Path) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Storage(format!("could not create {}: {e}", dir.display())))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| Error::Storage(format!("cold tier at {}: {e}", dir.display())))?;
    Ok(Arc::new(store))
}

/// The store a `--object-store` URL names, and its directory when it is local.
fn store_for_url(url: &str) -> Result<(Arc<dyn ObjectStore>, Option<std::path::PathBuf>)> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::Config(format!("invalid object store URL \"{url}\": {e}")))?;
    let prefix = parsed.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => {
            let dir = parsed.to_file_path().map_err(|()| {
                Error::Config(format!("invalid file URL \"{url}\": not an absolute path"))
            })?;
            return Ok((local_store(&dir)?, Some(dir)));
        }
        "s3" | "s3a" => {
            let plain_http_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .filter_map(|k| std::env::var(k).ok())
                .any(|e| e.starts_with("http://"));
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_allow_http(plain_http_endpoint)
                .build()
                .map_err(|e| Error::Config(format!("object store \"{url}\": {e}")))?;
            Arc::new(store)
        }
        other => {
            return Err(Error::Config(format!(
                "unsupported object store scheme \"{other}\" in \"{url}\" (use s3:// or file://)"
            )));
        }
    };
    if prefix.is_empty() {
        Ok((store, None))
    } else {
        Ok((
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix)),
            None,
        ))
    }
}
