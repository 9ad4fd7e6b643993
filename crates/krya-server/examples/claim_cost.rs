//! What a queue claim costs with a long history: the median time of a claim on an empty
//! `jobs` table and with 100,000 finished jobs of 1,000 users (two databases claimed from
//! in turn), and their ratio.
//!
//!   cargo run --release -p krya-server --example claim_cost              # SQLite
//!   cargo run --release -p krya-server --example claim_cost -- postgres://root@127.0.0.1/test
//!
//! (On PostgreSQL it works in a schema of its own and drops it after.)

use std::time::Instant;

use krya_server::jobs::{self, NewJob};
use krya_server::persistence::db::Db;

const HISTORY: usize = 100_000;
const USERS: usize = 1_000;
const RUNS: usize = 300;

/// Seconds of one claim of a job just queued (user `i % 10`), which then finishes.
async fn claim(db: &Db, tag: &str, i: usize) -> f64 {
    let id = format!("{tag}-{i}");
    let user = format!("live-{}", i % 10);
    let mut conn = db.pool.acquire().await.unwrap();
    jobs::enqueue(
        &mut conn,
        NewJob {
            id: &id,
            kind: "image",
            ref_id: &id,
            user_id: &user,
            max_attempts: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    drop(conn);
    let t = Instant::now();
    let claimed = db
        .claim_job("bench", 60_000, &["image", "webhook"])
        .await
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let claimed = claimed.expect("the job just queued");
    sqlx::query("UPDATE jobs SET status = 'completed', completed_at = $1 WHERE id = $2")
        .bind(jobs::now_ms())
        .bind(&claimed.id)
        .execute(&db.pool)
        .await
        .unwrap();
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `HISTORY` finished jobs of `USERS` users, claimed long ago, as a busy server keeps.
async fn history(db: &Db) {
    let mut tx = db.pool.begin().await.unwrap();
    for chunk in (0..HISTORY).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                let t = 1_000_000 + *i as i64;
                format!(
                    "('old-{i}', '{}', 'old-{i}', 'user-{}', 'completed', 1, 3, {t}, {t}, {t}, {t})",
                    if i % 10 == 0 { "webhook" } else { "image" },
                    i % USERS
                )
            })
            .collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (id, kind, ref_id, user_id, status, attempts, max_attempts, run_after, created_at, claimed_at, completed_at) VALUES {}",
            values.join(", ")
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    // What the claims that finished them recorded.
    sqlx::query(
        "INSERT INTO job_claims (user_id, kind, last_claimed_at) \
         SELECT user_id, kind, MAX(claimed_at) FROM jobs WHERE claimed_at IS NOT NULL GROUP BY user_id, kind \
         ON CONFLICT (user_id, kind) DO UPDATE SET last_claimed_at = excluded.last_claimed_at",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // As the database's own statistics, and SQLite's write-ahead log, would be after a while
    // (not the moment after a bulk insert).
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
    if db.backend == krya_server::persistence::db::Backend::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&db.pool)
            .await
            .unwrap();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pg = std::env::args().nth(1);
    let dir = tempfile_dir();
    // Two databases, one empty and one with the history, claimed from in turn: drift in the
    // machine's speed over the run falls on both alike.
    let mut schemas = Vec::new();
    let mut dbs = Vec::new();
    for name in ["empty", "full"] {
        let url = match &pg {
            Some(base) => {
                let schema = format!("krya_bench_{}_{name}", std::process::id());
                // A plain connection (Db::connect would migrate the default schema).
                sqlx::any::install_default_drivers();
                let admin = sqlx::AnyPool::connect(base).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                schemas.push((admin, schema.clone()));
                format!("{base}?options=-c%20search_path%3D{schema}")
            }
            None => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        };
        let db = Db::connect(&url).await.unwrap();
        if std::env::var_os("KRYA_BENCH_OLD_INDEXES").is_some() {
            // The indexes before migration 0012, for the comparison in docs/benchmarks.md.
            for sql in [
                "DROP INDEX idx_jobs_runnable",
                "DROP INDEX idx_jobs_finished",
                "CREATE INDEX idx_jobs_status ON jobs(status, run_after)",
                "CREATE INDEX idx_jobs_user_claimed ON jobs(user_id, claimed_at)",
                "CREATE INDEX idx_jobs_kind_status ON jobs(kind, status, completed_at)",
            ] {
                sqlx::query(sql).execute(&db.pool).await.unwrap();
            }
        }
        dbs.push(db);
    }
    history(&dbs[1]).await;
    let (mut empty, mut full) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        if i % 2 == 0 {
            empty.push(claim(&dbs[0], "bench", i).await);
            full.push(claim(&dbs[1], "bench", i).await);
        } else {
            full.push(claim(&dbs[1], "bench", i).await);
            empty.push(claim(&dbs[0], "bench", i).await);
        }
    }
    let (empty, full) = (median(empty), median(full));
    println!(
        "{}: claim median {:.3} ms on an empty table, {:.3} ms with {HISTORY} finished jobs: ratio {:.2}",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" },
        empty * 1000.0,
        full * 1000.0,
        full / empty
    );
    for (admin, schema) in schemas {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }
    if std::env::var_os("KRYA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept {}", dir.display());
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("krya-claim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
