//! What a data directory made before jobs held everything needs, done at the first start
//! after the upgrade where SQL alone cannot (then recorded as done in `settings`, so later
//! starts read no table for it). Each step finds only what is not done yet, so an
//! interrupted run completes at the next start:
//! - image jobs without params (made before jobs had them) get them from their generation;
//! - images without an asset (made before outputs were assets) get one, its size read from
//!   the store, so the feed, listings and storage counts see every file.

use super::*;
use crate::persistence::blobs::BlobStore;

/// Its name in `settings` once done.
const DONE: &str = "upgrade_0007_assets";

pub async fn run(db: &Db, blobs: &dyn BlobStore) -> Result<(), String> {
    let sql_err = |e: sqlx::Error| format!("upgrading image jobs: {e}");
    let done = sqlx::query("SELECT 1 AS x FROM settings WHERE name = $1")
        .bind(DONE)
        .fetch_optional(&db.pool)
        .await
        .map_err(sql_err)?;
    if done.is_some() {
        return Ok(());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT j.id AS job_id, {GENERATION_COLUMNS} FROM {GENERATIONS} WHERE j.params IS NULL"
    )))
    .fetch_all(&db.pool)
    .await
    .map_err(sql_err)?;
    for r in &rows {
        let g = Generation::from_row(r).map_err(sql_err)?;
        let job_id: String = r.try_get("job_id").map_err(sql_err)?;
        let c = Checked {
            prompt: g.prompt,
            negative_prompt: g.negative_prompt,
            model: g.model,
            width: g.width.max(0) as u32,
            height: g.height.max(0) as u32,
            seed: g.seed,
            batch: g.batch_size.max(0) as u32,
            is_public: g.is_public,
            webhook_url: None,
            params: g.params,
            cost: g.credits_used,
        };
        sqlx::query("UPDATE jobs SET params = $1 WHERE id = $2 AND params IS NULL")
            .bind(c.job_params())
            .bind(&job_id)
            .execute(&db.pool)
            .await
            .map_err(sql_err)?;
    }

    let rows = sqlx::query(
        "SELECT i.png_key, i.thumb_key, i.width, i.height, g.user_id, g.created_at, g.parameters, j.id AS job_id \
         FROM images i JOIN generations g ON g.id = i.generation_id JOIN jobs j ON j.ref_id = g.id AND j.kind = 'image' \
         WHERE NOT EXISTS (SELECT 1 FROM assets a WHERE a.blob_key = i.png_key) ORDER BY i.generation_id, i.idx",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(sql_err)?;
    for r in &rows {
        let key: String = r.try_get("png_key").map_err(sql_err)?;
        let Some(bytes) = blobs.size(&key).await.map_err(|e| e.to_string())? else {
            tracing::warn!(
                key,
                "an image's file is missing from the store; no asset made"
            );
            continue;
        };
        let params: String = r.try_get("parameters").map_err(sql_err)?;
        // An img2img or inpaint result comes from its init image.
        let parent = serde_json::from_str::<Params>(&params)
            .ok()
            .and_then(|p| p.init_image);
        sqlx::query("INSERT INTO assets (id, user_id, blob_key, mime, width, height, bytes, created_at, kind, job_id, parent_id, thumb_key) \
                     VALUES ($1, $2, $3, 'image/png', $4, $5, $6, $7, 'image', $8, $9, $10) ON CONFLICT DO NOTHING")
            .bind(random_id())
            .bind(r.try_get::<String, _>("user_id").map_err(sql_err)?)
            .bind(&key)
            .bind(r.try_get::<i64, _>("width").map_err(sql_err)?)
            .bind(r.try_get::<i64, _>("height").map_err(sql_err)?)
            .bind(bytes as i64)
            .bind(r.try_get::<i64, _>("created_at").map_err(sql_err)?)
            .bind(r.try_get::<String, _>("job_id").map_err(sql_err)?)
            .bind(parent)
            .bind(r.try_get::<String, _>("thumb_key").map_err(sql_err)?)
            .execute(&db.pool)
            .await
            .map_err(sql_err)?;
    }
    if !rows.is_empty() {
        tracing::info!(images = rows.len(), "earlier images recorded as assets");
    }
    // New image jobs always have params and assets: nothing can be left to do.
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, 'done') ON CONFLICT DO NOTHING")
        .bind(DONE)
        .execute(&db.pool)
        .await
        .map_err(sql_err)?;
    Ok(())
}
