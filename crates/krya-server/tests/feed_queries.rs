//! The feed answers a page in a fixed number of database queries, whatever its length:
//! counted from sqlx's statement events inside the request's span (on PostgreSQL, whose
//! driver logs on the request's task).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::client::Client;
use common::*;
use serde_json::json;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

static QUERIES: AtomicUsize = AtomicUsize::new(0);

/// Counts sqlx statements run inside a `request` span (not the runner's).
struct CountQueries;

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S>
    for CountQueries
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        if ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|s| s.name() == "request"))
        {
            QUERIES.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn queries_for(c: &Client, path: &str) -> (usize, usize) {
    let before = QUERIES.load(Ordering::SeqCst);
    let (st, page) = c.get(path);
    assert_eq!(st, 200, "{page}");
    (
        QUERIES.load(Ordering::SeqCst) - before,
        page["items"].as_array().unwrap().len(),
    )
}

#[test]
fn a_feed_page_takes_the_same_queries_for_one_item_or_twenty() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountQueries))
        .unwrap();
    let (url, schema) = postgres_schema();
    let s = common::tiny::server(Some(url));
    let a = Client::register(&s.base, "ann@example.com");
    let b = Client::register(&s.base, "bob@example.com");
    let mut ids = Vec::new();
    for i in 0..20 {
        let (st, g) = a.post(
            "/api/generate/image",
            json!({"prompt": format!("fox {i}"), "model": "tiny", "steps": 1, "is_public": true}),
        );
        assert_eq!(st, 202, "{g}");
        ids.push(g["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        a.wait(id);
    }
    // Likes, so the viewer's likes are read too.
    for item in b.get("/api/feed?limit=5").1["items"].as_array().unwrap() {
        b.post(
            &format!("/api/feed/{}/like", item["id"].as_str().unwrap()),
            serde_json::Value::Null,
        );
    }
    let (one, n1) = queries_for(&b, "/api/feed?limit=1");
    let (twenty, n20) = queries_for(&b, "/api/feed?limit=20");
    let (top, _) = queries_for(&b, "/api/feed?limit=20&sort=top");
    let (profile, _) = queries_for(&b, "/api/profiles/ann");
    assert_eq!((n1, n20), (1, 20));
    assert!(one > 0, "no statement was counted");
    assert_eq!(
        one, twenty,
        "a page of 20 took more queries than a page of 1"
    );
    assert_eq!(top, twenty);
    assert!(profile <= twenty + 2, "{profile}");
    drop(s);
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}

/// On PostgreSQL, prompt search (`LOWER(prompt) LIKE '%…%'`) can use a trigram index on
/// jobs and generations instead of reading every row.
#[test]
fn prompt_search_has_a_trigram_index_on_postgres() {
    let (url, schema) = postgres_schema();
    let s = common::tiny::server(Some(url.clone()));
    let a = Client::register(&s.base, "ann@example.com");
    assert_eq!(a.get("/api/feed?q=fox").0, 200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plans = rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let mut plans = Vec::new();
        for table in ["jobs", "generations"] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN SELECT 1 FROM {table} WHERE LOWER(prompt) LIKE '%fox%'"
            )))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            use sqlx::Row;
            plans.push(
                rows.iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        plans
    });
    assert!(plans[0].contains("idx_jobs_prompt_trgm"), "{}", plans[0]);
    assert!(
        plans[1].contains("idx_generations_prompt_trgm"),
        "{}",
        plans[1]
    );
    drop(s);
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}
