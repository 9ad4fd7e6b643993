//! The public gallery (seed §6.1 Gallery/Feed): completed public jobs of any kind with
//! their output assets, newest or most liked; likes counted once per user; remix (a new job
//! of the same kind from the same request, the body's fields on top); public profiles by
//! handle. A page takes three queries whatever its length: the jobs with their authors,
//! their outputs, and which of them the viewer likes.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::generations::{self, search_pattern};
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::{ApiError, ErrorCode, internal, invalid};
use crate::jobs::AssetView;
use crate::jobs::http::{Submission, task_of};
use crate::persistence::db::{User, placeholders};
use crate::tasks::image::KIND as IMAGE;
use crate::{AppState, http::auth};

#[derive(Deserialize)]
pub struct FeedQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// `new` (default) or `top`.
    sort: Option<String>,
    /// Only prompts containing this.
    q: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
}

/// Who made a public item.
#[derive(Serialize, ToSchema)]
pub struct Author {
    pub handle: String,
    pub name: String,
    pub avatar_url: Option<String>,
}

/// A public job of any kind in the feed: its request, its outputs, its author and whether
/// the viewer likes it.
#[derive(Serialize, ToSchema)]
pub struct FeedItem {
    /// The job's id.
    pub id: String,
    pub kind: String,
    /// Its prompt, where its kind has one.
    pub prompt: Option<String>,
    /// The request, as its kind checked it.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub outputs: Vec<AssetView>,
    pub likes_count: i64,
    /// Whether the viewer likes it.
    pub liked: bool,
    /// Whether it is public (a viewer's own item may not be).
    pub is_public: bool,
    /// The job it remixes.
    pub remix_of: Option<String>,
    /// Its record in its kind's own API, when it has one (an image job's generation).
    pub ref_id: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    pub author: Author,
}

#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A job with its author, as the feed reads it.
pub(crate) const POST_COLUMNS: &str = "j.id, j.kind, j.ref_id, j.user_id, j.params, j.prompt, j.likes_count, j.is_public, j.remix_of, j.created_at, j.seq, u.handle, u.name, u.avatar_url";
pub(crate) const POSTS: &str = "jobs j JOIN users u ON u.id = j.user_id";
/// What everyone sees.
const SHOWN: &str = "j.is_public = 1 AND j.status = 'completed'";

struct Post {
    item: FeedItem,
    seq: i64,
}

fn post(r: &sqlx::any::AnyRow) -> Result<Post, sqlx::Error> {
    let id: String = r.try_get("id")?;
    let ref_id: String = r.try_get("ref_id")?;
    let params: Option<String> = r.try_get("params")?;
    Ok(Post {
        seq: r.try_get("seq")?,
        item: FeedItem {
            kind: r.try_get("kind")?,
            prompt: r.try_get("prompt")?,
            params: params
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default(),
            outputs: Vec::new(),
            likes_count: r.try_get("likes_count")?,
            liked: false,
            is_public: r.try_get::<i64, _>("is_public")? != 0,
            remix_of: r.try_get("remix_of")?,
            ref_id: (ref_id != id).then_some(ref_id),
            created_at: r.try_get::<i64, _>("created_at")? / 1000,
            author: Author {
                handle: r.try_get("handle")?,
                name: r.try_get("name")?,
                avatar_url: r.try_get("avatar_url")?,
            },
            id,
        },
    })
}

/// The feed items of `rows`: their outputs and the viewer's likes, one query each.
pub(crate) async fn items(
    state: &AppState,
    rows: &[sqlx::any::AnyRow],
    viewer: Option<&User>,
) -> Result<Vec<FeedItem>, ApiError> {
    let mut posts: Vec<FeedItem> = rows
        .iter()
        .map(|r| post(r).map(|p| p.item))
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    let ids: Vec<String> = posts.iter().map(|p| p.id.clone()).collect();
    let mut outputs = state.db.outputs_of(&ids).await.map_err(internal)?;
    let liked: HashSet<String> = match viewer {
        Some(v) if !ids.is_empty() => {
            let sql = format!(
                "SELECT job_id FROM job_likes WHERE user_id = $1 AND job_id IN ({})",
                placeholders(2, ids.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&v.id);
            for id in &ids {
                q = q.bind(id);
            }
            q.fetch_all(&state.db.pool)
                .await
                .map_err(internal)?
                .iter()
                .map(|r| r.try_get("job_id"))
                .collect::<Result<_, _>>()
                .map_err(internal)?
        }
        _ => HashSet::new(),
    };
    for p in &mut posts {
        p.outputs = outputs.remove(&p.id).unwrap_or_default();
        p.liked = liked.contains(&p.id);
    }
    Ok(posts)
}

/// A page from `limit + 1` rows: the items, and the cursor (a `seq`) when there are more.
async fn page(
    state: &AppState,
    mut rows: Vec<sqlx::any::AnyRow>,
    limit: usize,
    viewer: Option<&User>,
) -> Result<FeedPage, ApiError> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = match rows.last() {
        Some(r) if more => Some(post(r).map_err(internal)?.seq.to_string()),
        _ => None,
    };
    Ok(FeedPage {
        items: items(state, &rows, viewer).await?,
        next_cursor,
    })
}

fn limit_of(limit: Option<u32>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "must be from 1 to 100"));
    }
    Ok(limit as i64)
}

/// A `seq` cursor (`i64::MAX` for the first page) or an offset cursor (0).
fn cursor_of(cursor: Option<&str>, first: i64) -> Result<i64, ApiError> {
    match cursor {
        Some(c) => c
            .parse()
            .ok()
            .filter(|o: &i64| *o >= 0)
            .ok_or_else(|| invalid("cursor", "is not a cursor this API returned")),
        None => Ok(first),
    }
}

/// `GET /api/feed`: completed public jobs of any kind, `sort=new` or `sort=top`.
#[utoipa::path(get, path = "/api/feed", tag = "feed", security((), ("bearer" = [])), params(("sort" = Option<String>, Query, pattern = "^(new|top)$", description = "new (default) or top"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query), ("q" = Option<String>, Query, description = "Only prompts containing this"), ("kind" = Option<String>, Query, description = "Only jobs of this kind")), responses((status = 200, description = "Public items", body = FeedPage), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::infra::error::ApiQuery(q): crate::infra::error::ApiQuery<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let viewer = auth::current_user(&state, &headers).await.ok();
    let limit = limit_of(q.limit)?;
    if let Some(k) = &q.kind {
        task_of(&state, k)?;
    }
    let search = search_pattern(q.q.as_deref())?;
    let (order, by_offset, first) = match q.sort.as_deref().unwrap_or("new") {
        "new" => ("j.seq < $3 ORDER BY j.seq DESC LIMIT $4", false, i64::MAX),
        // Most liked shifts as people like: an offset is the honest cursor here.
        "top" => (
            "1 = 1 ORDER BY j.likes_count DESC, j.seq DESC LIMIT $4 OFFSET $3",
            true,
            0,
        ),
        _ => return Err(invalid("sort", "must be new or top")),
    };
    let cursor = cursor_of(q.cursor.as_deref(), first)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {POST_COLUMNS} FROM {POSTS} WHERE {SHOWN} AND ($1 = '' OR j.kind = $1) \
         AND ($2 = '' OR LOWER(j.prompt) LIKE $2 ESCAPE '\\') AND {order}"
    )))
    .bind(q.kind.as_deref().unwrap_or(""))
    .bind(search)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    let mut page = page(&state, rows, limit as usize, viewer.as_ref()).await?;
    if by_offset && page.next_cursor.is_some() {
        page.next_cursor = Some((cursor + limit).to_string());
    }
    Ok(Json(page))
}

/// A job the viewer may see, by its id (or an image job by its generation's): public and
/// completed, or their own. Its row, and the row read.
pub(crate) async fn visible(
    state: &AppState,
    id: &str,
    viewer: Option<&User>,
) -> Result<(sqlx::any::AnyRow, FeedItem), ApiError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {POST_COLUMNS} FROM {POSTS} WHERE (j.id = $1 OR (j.kind = '{IMAGE}' AND j.ref_id = $1)) \
         AND (({SHOWN}) OR j.user_id = $2)"
    )))
    .bind(id)
    .bind(viewer.map_or("", |v| v.id.as_str()))
    .fetch_optional(&state.db.pool)
    .await
    .map_err(internal)?;
    let missing = || ApiError::not_found(format!("no public item {id}"));
    let row = row.ok_or_else(missing)?;
    let item = post(&row).map_err(internal)?.item;
    // Deliveries and other internal kinds are nobody's items.
    task_of(state, &item.kind).map_err(|_| missing())?;
    Ok((row, item))
}

#[utoipa::path(get, path = "/api/feed/{id}", tag = "feed", security((), ("bearer" = [])), params(("id" = String, Path, description = "Job id (or an image's generation id)")), responses((status = 200, description = "A public item", body = FeedItem), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_item(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FeedItem>, ApiError> {
    let viewer = auth::current_user(&state, &headers).await.ok();
    let (row, _) = visible(&state, &id, viewer.as_ref()).await?;
    let mut one = items(&state, &[row], viewer.as_ref()).await?;
    Ok(Json(one.remove(0)))
}

/// A like, toggled.
#[derive(Serialize, ToSchema)]
pub struct LikeResult {
    /// The job's id.
    pub id: String,
    /// Whether the caller likes it now.
    pub liked: bool,
    pub likes_count: i64,
}

/// `POST /api/feed/:id/like`: toggles the caller's like; the count moves by the rows the
/// same transaction changed, so it stays exact under concurrent likes.
#[utoipa::path(post, path = "/api/feed/{id}/like", tag = "feed", params(("id" = String, Path, description = "Job id (or an image's generation id)")), responses((status = 200, description = "The like, toggled", body = LikeResult), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn like(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LikeResult>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let job_id = visible(&state, &id, Some(&user)).await?.1.id;
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    let removed = sqlx::query("DELETE FROM job_likes WHERE user_id = $1 AND job_id = $2")
        .bind(&user.id)
        .bind(&job_id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?
        .rows_affected();
    let added = if removed == 0 {
        sqlx::query("INSERT INTO job_likes (user_id, job_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&user.id)
            .bind(&job_id)
            .bind(auth::now())
            .execute(&mut *tx)
            .await
            .map_err(internal)?
            .rows_affected()
    } else {
        0
    };
    // A delta, not a recount: a recount's snapshot can miss a like committed meanwhile.
    sqlx::query("UPDATE jobs SET likes_count = likes_count + $1 WHERE id = $2")
        .bind(added as i64 - removed as i64)
        .bind(&job_id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    let count: i64 = sqlx::query("SELECT likes_count FROM jobs WHERE id = $1")
        .bind(&job_id)
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get("likes_count"))
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok(Json(LikeResult {
        id: job_id,
        liked: removed == 0,
        likes_count: count,
    }))
}

/// `POST /api/feed/:id/remix`: a new job of the same kind for the caller from this one's
/// request, with the body's fields on top. Someone else's uploads are not the remixer's:
/// a kind whose request names input files needs the caller's own in the body.
#[utoipa::path(post, path = "/api/feed/{id}/remix", tag = "feed", params(("id" = String, Path, description = "Job id (or an image's generation id)")), request_body(content = Object, description = "Any fields of the kind's request, over the original's"), responses((status = 202, description = "Queued", body = Accepted), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn remix(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let source = visible(&state, &id, Some(&user)).await?.1;
    let overrides: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("body: {e}")))?
    };
    if !matches!(
        overrides,
        serde_json::Value::Object(_) | serde_json::Value::Null
    ) {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "body: must be a JSON object of overrides",
        ));
    }
    if source.kind == IMAGE {
        let g = state
            .db
            .generation(source.ref_id.as_deref().unwrap_or(&source.id))
            .await
            .map_err(internal)?
            .ok_or_else(|| internal(format!("image job {} without a generation", source.id)))?;
        let new_id = generations::remix(&state, &user, &g, &source.id, overrides).await?;
        return generations::remix_response(&state, &new_id).await;
    }
    let task = task_of(&state, &source.kind)?;
    let mut params = source.params;
    if let (Some(p), serde_json::Value::Object(o)) = (params.as_object_mut(), overrides) {
        p.extend(o);
    }
    let submitted = Submission {
        params,
        webhook_url: None,
        is_public: false,
        remix_of: Some(&source.id),
    };
    let job_id = crate::jobs::http::submit(&state, &user, &*task, submitted).await?;
    let queue_position = state
        .db
        .queue_position(&job_id, &state.tasks.kinds(task.slot()))
        .await
        .map_err(internal)?;
    let accepted = Accepted {
        id: job_id.clone(),
        job_id,
        status: "pending".into(),
        estimated_time: None,
        queue_position,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// A public profile and a page of its public items.
#[derive(Serialize, ToSchema)]
pub struct PublicProfile {
    pub handle: String,
    pub name: String,
    pub bio: String,
    pub avatar_url: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Public items of any kind.
    pub public_items: i64,
    pub likes_received: i64,
    pub items: Vec<FeedItem>,
    pub next_cursor: Option<String>,
}

/// `GET /api/profiles/:handle`: a public profile and its public items.
#[utoipa::path(get, path = "/api/profiles/{handle}", tag = "feed", security((), ("bearer" = [])), params(("handle" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)), responses((status = 200, description = "A public profile and its public items", body = PublicProfile), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(handle): Path<String>,
    crate::infra::error::ApiQuery(q): crate::infra::error::ApiQuery<FeedQuery>,
) -> Result<Json<PublicProfile>, ApiError> {
    let viewer = auth::current_user(&state, &headers).await.ok();
    let row = sqlx::query(
        "SELECT id, handle, name, bio, avatar_url, created_at FROM users WHERE handle = $1",
    )
    .bind(&handle)
    .fetch_optional(&state.db.pool)
    .await
    .map_err(internal)?
    .ok_or_else(|| ApiError::not_found(format!("no profile @{handle}")))?;
    let uid: String = row.try_get("id").map_err(internal)?;
    let limit = limit_of(q.limit)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {POST_COLUMNS} FROM {POSTS} WHERE {SHOWN} AND j.user_id = $1 AND j.seq < $2 \
         ORDER BY j.seq DESC LIMIT $3"
    )))
    .bind(&uid)
    .bind(cursor_of(q.cursor.as_deref(), i64::MAX)?)
    .bind(limit + 1)
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    let page = page(&state, rows, limit as usize, viewer.as_ref()).await?;
    let stats = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(j.likes_count), 0) AS BIGINT) AS likes FROM jobs j \
         WHERE j.user_id = $1 AND {SHOWN}"
    )))
    .bind(&uid)
    .fetch_one(&state.db.pool)
    .await
    .map_err(internal)?;
    Ok(Json(PublicProfile {
        handle: row.try_get("handle").map_err(internal)?,
        name: row.try_get("name").map_err(internal)?,
        bio: row.try_get("bio").map_err(internal)?,
        avatar_url: row.try_get("avatar_url").map_err(internal)?,
        created_at: row.try_get("created_at").map_err(internal)?,
        public_items: stats.try_get("n").map_err(internal)?,
        likes_received: stats.try_get("likes").map_err(internal)?,
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
