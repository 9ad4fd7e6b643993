//! The durable queue on SQLite and PostgreSQL: fair order across users and kinds, leases
//! that expire and are taken over, ends that only the lease holder can write, deferred
//! runs, and many concurrent claimers that never take the same job twice.

mod common;

use std::collections::HashSet;

use common::*;
use krya_server::jobs;
use krya_server::persistence::db::Db;

async fn user(db: &Db, name: &str) -> String {
    let u = krya_server::http::auth::create_user(
        db,
        &format!("{name}@example.com"),
        name,
        "password123",
        false,
    )
    .await
    .unwrap();
    u.id
}

const IMAGE: &str = "image";
const OTHER: &str = "upscale";
const KINDS: &[&str] = &[IMAGE, OTHER];

async fn enqueue(db: &Db, user: &str, n: usize) -> Vec<String> {
    enqueue_kind(db, user, n, IMAGE).await
}

async fn enqueue_kind(db: &Db, user: &str, n: usize, kind: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = format!("{:x}", rand::random::<u64>());
        let mut conn = db.pool.acquire().await.unwrap();
        jobs::enqueue(
            &mut conn,
            jobs::NewJob {
                id: &id,
                kind,
                ref_id: &format!("ref-{id}"),
                user_id: user,
                max_attempts: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

/// Claims and completes every runnable job of `kinds`; their ids in claim order.
async fn drain(db: &Db, kinds: &[&str]) -> Vec<String> {
    let mut order = Vec::new();
    while let Some(j) = db.claim_job("w1", 60_000, kinds).await.unwrap() {
        order.push(j.id.clone());
        let mut tx = db.pool.begin().await.unwrap();
        assert!(
            Db::finish_job(&mut tx, &j.id, "w1", "completed", None)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
    }
    order
}

async fn queue_behaviour(db: Db) {
    let (u1, u2, u3) = (
        user(&db, "one").await,
        user(&db, "two").await,
        user(&db, "three").await,
    );
    // User one floods the queue first; two and three submit one job each afterwards.
    let one = enqueue(&db, &u1, 6).await;
    let two = enqueue(&db, &u2, 1).await;
    let three = enqueue(&db, &u3, 1).await;
    for (id, ahead) in [(&one[0], 0), (&two[0], 1), (&three[0], 2), (&one[1], 3)] {
        assert_eq!(db.queue_position(id, KINDS).await.unwrap(), Some(ahead));
    }
    let order = drain(&db, KINDS).await;
    // Round robin by rank: one's first, two's, three's, then the rest of one's.
    assert_eq!(
        order[..3],
        [one[0].clone(), two[0].clone(), three[0].clone()]
    );
    assert_eq!(order[3..], one[1..]);

    // Fair across kinds too: one user's other kind of job does not wait behind their
    // images (ranks are per kind, and the kind served longest ago goes first); a worker
    // that runs only images leaves it alone.
    let images = enqueue(&db, &u1, 3).await;
    let other = enqueue_kind(&db, &u1, 1, OTHER).await;
    assert_eq!(db.queue_position(&other[0], KINDS).await.unwrap(), Some(0));
    assert_eq!(db.queue_position(&images[1], KINDS).await.unwrap(), Some(2));
    assert_eq!(drain(&db, &[IMAGE]).await, images);
    assert_eq!(drain(&db, KINDS).await, other);

    // A deferred job (a remote provider still working) waits until its time without
    // counting as an attempt, and gets its state back.
    let later = enqueue(&db, &u2, 1).await;
    let j = db.claim_job("w1", 60_000, KINDS).await.unwrap().unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let at = jobs::now_ms() + 150;
    assert!(
        Db::defer_job(&mut tx, &j.id, "w1", at, "{\"poll\":1}")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert!(
        db.claim_job("w1", 60_000, KINDS).await.unwrap().is_none(),
        "claimed before its time"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let j = db.claim_job("w1", 60_000, KINDS).await.unwrap().unwrap();
    assert_eq!(
        (j.id.as_str(), j.attempts, j.payload.as_deref()),
        (later[0].as_str(), 1, Some("{\"poll\":1}"))
    );
    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        Db::finish_job(&mut tx, &j.id, "w1", "completed", None)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    // A lease that runs out is taken over; the first holder can no longer end the job.
    let ids = enqueue(&db, &u1, 1).await;
    let first = db.claim_job("w-dead", 50, KINDS).await.unwrap().unwrap();
    assert_eq!(first.id, ids[0]);
    assert!(
        db.claim_job("w2", 60_000, KINDS).await.unwrap().is_none(),
        "claimed a leased job"
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let again = db.claim_job("w2", 60_000, KINDS).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (ids[0].as_str(), 2));
    assert!(!db.heartbeat(&ids[0], "w-dead", 60_000).await.unwrap());
    assert!(db.heartbeat(&ids[0], "w2", 60_000).await.unwrap());
    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        !Db::finish_job(&mut tx, &ids[0], "w-dead", "completed", None)
            .await
            .unwrap()
    );
    assert!(
        Db::retry_job(&mut tx, &ids[0], "w2", 0, "transient")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let third = db.claim_job("w3", 60_000, KINDS).await.unwrap().unwrap();
    assert_eq!(third.attempts, 3);
    let mut tx = db.pool.begin().await.unwrap();
    assert!(Db::cancel_job(&mut tx, &third.id).await.unwrap());
    assert!(
        !Db::finish_job(&mut tx, &third.id, "w3", "completed", None)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    // Eight claimers race for 40 jobs: each job is taken exactly once.
    let mut all = Vec::new();
    for u in [&u1, &u2, &u3, &u1] {
        all.extend(enqueue(&db, u, 10).await);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = db
                .claim_job(&format!("racer-{w}"), 60_000, KINDS)
                .await
                .unwrap()
            {
                let mut tx = db.pool.begin().await.unwrap();
                assert!(
                    Db::finish_job(&mut tx, &j.id, &format!("racer-{w}"), "completed", None)
                        .await
                        .unwrap()
                );
                tx.commit().await.unwrap();
                got.push(j.id);
            }
            got
        }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = taken.iter().collect();
    assert_eq!((taken.len(), unique.len()), (all.len(), all.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("q.db").display()))
        .await
        .unwrap();
    queue_behaviour(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_on_postgres() {
    let (url, schema) = tokio::task::spawn_blocking(postgres_schema).await.unwrap();
    let db = Db::connect(&url).await.unwrap();
    queue_behaviour(db.clone()).await;
    db.pool.close().await;
    tokio::task::spawn_blocking(move || pg_exec(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
}
