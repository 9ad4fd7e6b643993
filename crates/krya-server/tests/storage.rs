//! Blob storage: the same behaviour from the file store and from an S3-compatible server
//! (moto, started by the test), and the whole generation path with images on S3.

mod common;

use krya_server::infra::config::Storage;
use krya_server::persistence::blobs::{BlobStore, FileStore, S3Store};

#[path = "common/s3.rs"]
mod s3;

async fn behaves(store: &dyn BlobStore) {
    store
        .put("generations/abc/a1-0.png", b"png".to_vec())
        .await
        .unwrap();
    store
        .put("generations/abc/a1-0-thumb.webp", b"webp".to_vec())
        .await
        .unwrap();
    store
        .put("generations/abd/a1-0.png", b"other".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store
            .get("generations/abc/a1-0.png")
            .await
            .unwrap()
            .unwrap(),
        b"png"
    );
    assert!(
        store
            .get("generations/abc/missing.png")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.list("generations/abc/").await.unwrap(),
        [
            "generations/abc/a1-0-thumb.webp",
            "generations/abc/a1-0.png"
        ]
    );
    store
        .put("generations/abc/a1-0.png", b"png2".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store
            .get("generations/abc/a1-0.png")
            .await
            .unwrap()
            .unwrap(),
        b"png2"
    );
    store.delete("generations/abc/a1-0.png").await.unwrap();
    store.delete("generations/abc/a1-0.png").await.unwrap();
    assert_eq!(
        store.list("generations/abc/").await.unwrap(),
        ["generations/abc/a1-0-thumb.webp"]
    );
    // Keys the server would never make are refused before reaching storage.
    assert!(store.put("../escape", b"x".to_vec()).await.is_err());
    assert!(store.get("a/../../b").await.is_err());
    // 5 MiB round trip.
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    store.put("assets/big", big.clone()).await.unwrap();
    assert!(store.get("assets/big").await.unwrap().unwrap() == big);
    // A file stored a part at a time: 19 MiB is two 8 MiB parts and a last one on S3; a
    // small one goes in one piece.
    let dir = tempfile::tempdir().unwrap();
    let huge: Vec<u8> = (0..19 * 1024 * 1024 + 7).map(|i| (i % 253) as u8).collect();
    for (name, bytes) in [("huge", &huge), ("small", &big[..1000].to_vec())] {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let key = format!("assets/{name}.png");
        store.put_file(&key, &file).await.unwrap();
        assert_eq!(store.size(&key).await.unwrap(), Some(bytes.len() as u64));
        assert!(store.get(&key).await.unwrap().unwrap() == *bytes, "{name}");
    }
    assert!(
        store
            .put_file("assets/none.png", &dir.path().join("missing"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn file_store() {
    let dir = tempfile::tempdir().unwrap();
    behaves(&FileStore::new(dir.path())).await;
}

#[tokio::test]
async fn s3_store() {
    let moto = tokio::task::spawn_blocking(s3::start_moto).await.unwrap();
    let store = S3Store::new(&Storage {
        url: format!("s3://{}/krya/blobs", moto.bucket),
        endpoint: moto.endpoint.clone(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    })
    .unwrap();
    behaves(&store).await;
    // Everything went under the URL's prefix.
    let keys = tokio::task::spawn_blocking(move || {
        let k = moto.keys("");
        drop(moto);
        k
    })
    .await
    .unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("krya/blobs/")),
        "{keys:?}"
    );
}
