//! The durable queue on SQLite and PostgreSQL: fair order across users, leases that
//! expire and are taken over, ends that only the lease holder can write, and many
//! concurrent claimers that never take the same job twice.

mod common;

use std::collections::HashSet;

use common::*;
use krya_server::db::Db;
use krya_server::jobs;

async fn user(db: &Db, name: &str) -> String {
    let u = krya_server::auth::create_user(
        db,
        &format!("{name}@example.com"),
        name,
        "password123",
        Some(false),
    )
    .await
    .unwrap();
    u.id
}

async fn enqueue(db: &Db, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = format!("{:x}", rand::random::<u64>());
        let mut conn = db.pool.acquire().await.unwrap();
        jobs::enqueue(
            &mut conn,
            &id,
            jobs::IMAGE,
            &format!("ref-{id}"),
            user,
            3,
            None,
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids
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
    assert_eq!(
        db.queue_position(&format!("ref-{}", one[0])).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        db.queue_position(&format!("ref-{}", two[0])).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        db.queue_position(&format!("ref-{}", three[0]))
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        db.queue_position(&format!("ref-{}", one[1])).await.unwrap(),
        Some(3)
    );
    let mut order = Vec::new();
    while let Some(j) = db.claim_job("w1", 60_000, jobs::IMAGE).await.unwrap() {
        assert_eq!(j.attempts, 1);
        order.push(j.id.clone());
        let mut tx = db.pool.begin().await.unwrap();
        assert!(
            Db::finish_job(&mut tx, &j.id, "w1", "completed", None)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
    }
    // Round robin by rank: one's first, two's, three's, then the rest of one's.
    assert_eq!(
        order[..3],
        [one[0].clone(), two[0].clone(), three[0].clone()]
    );
    assert_eq!(order[3..], one[1..]);

    // A lease that runs out is taken over; the first holder can no longer end the job.
    let ids = enqueue(&db, &u1, 1).await;
    let first = db
        .claim_job("w-dead", 50, jobs::IMAGE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, ids[0]);
    assert!(
        db.claim_job("w2", 60_000, jobs::IMAGE)
            .await
            .unwrap()
            .is_none(),
        "claimed a leased job"
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let again = db
        .claim_job("w2", 60_000, jobs::IMAGE)
        .await
        .unwrap()
        .unwrap();
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
    let third = db
        .claim_job("w3", 60_000, jobs::IMAGE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.attempts, 3);
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(Db::cancel_jobs(&mut tx, &third.ref_id).await.unwrap(), 1);
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
                .claim_job(&format!("racer-{w}"), 60_000, jobs::IMAGE)
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
