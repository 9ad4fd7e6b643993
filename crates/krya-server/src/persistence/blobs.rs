//! Blob storage for images and uploads. Keys are built by the server only (ids it made,
//! never user input), so no key can escape the store. The embedded default keeps files
//! under `data_dir/blobs`, written to a temporary name and renamed, so a crash never
//! leaves a half-written blob under a real key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type BlobResult<T> = Result<T, BlobError>;

#[derive(Debug, thiserror::Error)]
#[error("blob store: {0}")]
pub struct BlobError(pub String);

/// What every store does; implementations must be safe to share between tasks.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> BlobResult<()>;
    /// Stores the file at `file` under `key`, reading it a part at a time (an enhanced image
    /// of hundreds of megabytes is never held whole).
    async fn put_file(&self, key: &str, file: &std::path::Path) -> BlobResult<()>;
    /// `None` when there is no such blob.
    async fn get(&self, key: &str) -> BlobResult<Option<Vec<u8>>>;
    /// Its length in bytes; `None` when there is no such blob.
    async fn size(&self, key: &str) -> BlobResult<Option<u64>>;
    /// Bytes `range` of the blob (within its size), as a stream: files are served without
    /// being read whole into memory. `None` when there is no such blob.
    async fn stream(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> BlobResult<Option<ByteStream>>;
    /// Deleting a missing blob is not an error.
    async fn delete(&self, key: &str) -> BlobResult<()>;
    /// Every key starting with `prefix` (a folder-like prefix ending in `/`).
    async fn list(&self, prefix: &str) -> BlobResult<Vec<String>>;
}

pub type Blobs = Arc<dyn BlobStore>;

/// The part size of multipart uploads (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;

/// A blob's bytes as they arrive.
pub type ByteStream =
    futures_util::stream::BoxStream<'static, Result<axum::body::Bytes, std::io::Error>>;

/// Chunks of a file's `range`, read as the stream is polled.
fn file_chunks(file: tokio::fs::File, len: u64) -> ByteStream {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    const CHUNK: u64 = 64 * 1024;
    futures_util::stream::unfold((file, len), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left) as usize];
        match f.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter",
                )),
                (f, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    })
    .boxed()
}

/// Checks a server-made key: lowercase ASCII letters, digits, `-`, `_`, `.` and `/`
/// separators, no empty or dot-only segments.
pub fn check_key(key: &str) -> BlobResult<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.chars().all(|c| c == '.')
                && seg.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(BlobError(format!("refused key {key:?}")))
    }
}

/// Files under a root folder.
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> BlobResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io_err(path: &Path, e: std::io::Error) -> BlobError {
    BlobError(format!("{}: {e}", path.display()))
}

#[async_trait::async_trait]
impl BlobStore for FileStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> BlobResult<()> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys are under the root");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_err(dir, e))?;
        let tmp = dir.join(format!(
            ".{}.{}.part",
            path.file_name().unwrap().to_string_lossy(),
            rand::random::<u64>()
        ));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| io_err(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_err(&path, e))
    }

    async fn put_file(&self, key: &str, file: &std::path::Path) -> BlobResult<()> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys are under the root");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_err(dir, e))?;
        let tmp = dir.join(format!(
            ".{}.{}.part",
            path.file_name().unwrap().to_string_lossy(),
            rand::random::<u64>()
        ));
        tokio::fs::copy(file, &tmp)
            .await
            .map_err(|e| io_err(file, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_err(&path, e))
    }

    async fn get(&self, key: &str) -> BlobResult<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn size(&self, key: &str) -> BlobResult<Option<u64>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn stream(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> BlobResult<Option<ByteStream>> {
        use tokio::io::AsyncSeekExt;
        let path = self.path(key)?;
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        f.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| io_err(&path, e))?;
        Ok(Some(file_chunks(f, range.end.saturating_sub(range.start))))
    }

    async fn delete(&self, key: &str) -> BlobResult<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> BlobResult<Vec<String>> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let mut rd = match tokio::fs::read_dir(&d).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d, e)),
            };
            while let Some(entry) = rd.next_entry().await.map_err(|e| io_err(&d, e))? {
                let p = entry.path();
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                if entry.file_type().await.map_err(|e| io_err(&p, e))?.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "A.png",
            "a/./b",
            "a\\b",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        check_key("generations/ab12/0-1.png").unwrap();
    }

    #[tokio::test]
    async fn file_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path());
        s.put("g/x/1.png", b"abc".to_vec()).await.unwrap();
        s.put("g/x/2.png", b"de".to_vec()).await.unwrap();
        assert_eq!(s.get("g/x/1.png").await.unwrap().unwrap(), b"abc");
        assert_eq!(s.list("g/x/").await.unwrap(), ["g/x/1.png", "g/x/2.png"]);
        s.delete("g/x/1.png").await.unwrap();
        s.delete("g/x/1.png").await.unwrap();
        assert!(s.get("g/x/1.png").await.unwrap().is_none());
        assert_eq!(s.list("g/y/").await.unwrap(), Vec::<String>::new());
    }
}

/// An S3-compatible bucket (`storage.url = "s3://bucket/prefix"`), through `object_store`.
/// Keys live under the URL's prefix. The endpoint (for MinIO, Ceph, moto, …), region and
/// keys come from the settings; empty keys fall back to the usual AWS environment.
pub struct S3Store {
    store: object_store::aws::AmazonS3,
    prefix: String,
}

impl S3Store {
    pub fn new(storage: &crate::infra::config::Storage) -> BlobResult<Self> {
        let rest = storage.url.strip_prefix("s3://").ok_or_else(|| {
            BlobError(format!(
                "storage url {:?}: expected s3://bucket/prefix",
                storage.url
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BlobError(format!(
                "storage url {:?}: no bucket",
                storage.url
            )));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&storage.region);
        if !storage.endpoint.is_empty() {
            b = b
                .with_endpoint(&storage.endpoint)
                .with_allow_http(storage.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if !storage.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&storage.access_key_id)
                .with_secret_access_key(&storage.secret_access_key);
        }
        let store = b.build().map_err(|e| BlobError(e.to_string()))?;
        Ok(Self {
            store,
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, key: &str) -> BlobResult<object_store::path::Path> {
        check_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        object_store::path::Path::parse(full).map_err(|e| BlobError(e.to_string()))
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> BlobResult<()> {
        use object_store::ObjectStoreExt;
        self.store
            .put(&self.path(key)?, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| BlobError(e.to_string()))
    }

    async fn put_file(&self, key: &str, file: &std::path::Path) -> BlobResult<()> {
        use object_store::ObjectStoreExt;
        use tokio::io::AsyncReadExt;
        let err = |e: &dyn std::fmt::Display| BlobError(format!("{}: {e}", file.display()));
        let len = tokio::fs::metadata(file).await.map_err(|e| err(&e))?.len();
        if len <= PART as u64 {
            return self
                .put(key, tokio::fs::read(file).await.map_err(|e| err(&e))?)
                .await;
        }
        // A multipart upload in parts of PART bytes, two in flight.
        let upload = self
            .store
            .put_multipart(&self.path(key)?)
            .await
            .map_err(|e| BlobError(e.to_string()))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let sent = async {
            let mut f = tokio::fs::File::open(file).await.map_err(|e| err(&e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await.map_err(|e| err(&e))?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(2)
                    .await
                    .map_err(|e| BlobError(e.to_string()))?;
                w.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| BlobError(e.to_string())),
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    async fn get(&self, key: &str) -> BlobResult<Option<Vec<u8>>> {
        use object_store::ObjectStoreExt;
        match self.store.get(&self.path(key)?).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| BlobError(e.to_string()))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BlobError(e.to_string())),
        }
    }

    async fn size(&self, key: &str) -> BlobResult<Option<u64>> {
        use object_store::ObjectStoreExt;
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(m.size as u64)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BlobError(e.to_string())),
        }
    }

    async fn stream(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> BlobResult<Option<ByteStream>> {
        use futures_util::{StreamExt, TryStreamExt};
        use object_store::ObjectStore;
        if range.is_empty() {
            return Ok(Some(futures_util::stream::empty().boxed()));
        }
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key)?, opts).await {
            Ok(r) => Ok(Some(r.into_stream().map_err(std::io::Error::other).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BlobError(e.to_string())),
        }
    }

    async fn delete(&self, key: &str) -> BlobResult<()> {
        use object_store::ObjectStoreExt;
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BlobError(e.to_string())),
        }
    }

    async fn list(&self, prefix: &str) -> BlobResult<Vec<String>> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| BlobError(e.to_string()))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut keys: Vec<String> = metas
            .into_iter()
            .map(|m| m.location.to_string())
            .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
            .collect();
        keys.sort();
        Ok(keys)
    }
}
