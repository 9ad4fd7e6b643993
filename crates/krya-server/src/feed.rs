//! The public gallery (seed §6.1 Gallery/Feed): public generations, newest or most liked,
//! likes counted once per user, remix; and public profiles by handle.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::db::User;
use crate::error::{ApiError, ErrorCode};
use crate::generations::{
    self, Filter, GENERATION_COLUMNS, Generation, GenerationView, Page, internal, invalid, page_of,
};
#[allow(unused_imports)]
use crate::openapi::{Accepted, ErrorBody, Object, Session};
use crate::{AppState, auth};

#[derive(Deserialize)]
pub struct FeedQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// `new` (default) or `top`.
    sort: Option<String>,
    /// Only prompts containing this.
    q: Option<String>,
}

/// Who made a public generation.
#[derive(Serialize, ToSchema)]
pub struct Author {
    pub handle: String,
    pub name: String,
    pub avatar_url: Option<String>,
}

/// A public generation in the feed: the generation, its author and whether the viewer
/// likes it.
#[derive(Serialize, ToSchema)]
pub struct FeedItem {
    #[serde(flatten)]
    pub generation: GenerationView,
    pub author: Author,
    pub liked: bool,
}

#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

async fn item(
    state: &AppState,
    g: &Generation,
    viewer: Option<&User>,
) -> Result<FeedItem, ApiError> {
    let generation = generations::view(state, g, false).await?;
    let author = sqlx::query("SELECT handle, name, avatar_url FROM users WHERE id = $1")
        .bind(&g.user_id)
        .fetch_one(&state.db.pool)
        .await
        .map_err(internal)?;
    let author = Author {
        handle: author.try_get("handle").map_err(internal)?,
        name: author.try_get("name").map_err(internal)?,
        avatar_url: author.try_get("avatar_url").map_err(internal)?,
    };
    let liked = match viewer {
        Some(u) => {
            sqlx::query("SELECT 1 AS x FROM likes WHERE user_id = $1 AND generation_id = $2")
                .bind(&u.id)
                .bind(&g.id)
                .fetch_optional(&state.db.pool)
                .await
                .map_err(internal)?
                .is_some()
        }
        None => false,
    };
    Ok(FeedItem {
        generation,
        author,
        liked,
    })
}

async fn items(
    state: &AppState,
    gens: &[Generation],
    viewer: Option<&User>,
) -> Result<Vec<FeedItem>, ApiError> {
    let mut out = Vec::new();
    for g in gens {
        out.push(item(state, g, viewer).await?);
    }
    Ok(out)
}

/// `GET /api/feed`: completed public generations, `sort=new` (cursor) or `sort=top`.
#[utoipa::path(get, path = "/api/feed", tag = "feed", security((), ("bearer" = [])), params(("sort" = Option<String>, Query, pattern = "^(new|top)$", description = "new (default) or top"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query), ("q" = Option<String>, Query, description = "Only prompts containing this")), responses((status = 200, description = "Public generations", body = FeedPage), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::error::ApiQuery(q): crate::error::ApiQuery<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let viewer = auth::current_user(&state, &headers).await.ok();
    match q.sort.as_deref().unwrap_or("new") {
        "new" => {
            let page = Page::new(q.limit, q.cursor.as_deref())?;
            let filter = Filter {
                public_only: true,
                search: q.q.as_deref(),
                ..Default::default()
            };
            let gens = page_of(&state.db, &filter, &page).await?;
            let next = page.next(&gens);
            Ok(Json(FeedPage {
                items: items(&state, &gens, viewer.as_ref()).await?,
                next_cursor: next,
            }))
        }
        "top" => {
            let limit = q.limit.unwrap_or(20);
            if !(1..=100).contains(&limit) {
                return Err(invalid("limit", "must be from 1 to 100"));
            }
            // Most liked shifts as people like: an offset is the honest cursor here.
            let offset: i64 = match &q.cursor {
                Some(c) => c
                    .parse()
                    .ok()
                    .filter(|o| *o >= 0)
                    .ok_or_else(|| invalid("cursor", "is not a cursor this API returned"))?,
                None => 0,
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {GENERATION_COLUMNS} FROM generations g WHERE g.is_public = 1 AND g.status = 'completed' \
                 AND ($3 = '' OR LOWER(g.prompt) LIKE $3 ESCAPE '\\') \
                 ORDER BY g.likes_count DESC, g.created_at DESC, g.id DESC LIMIT $1 OFFSET $2"
            )))
            .bind(limit as i64)
            .bind(offset)
            .bind(generations::search_pattern(q.q.as_deref())?)
            .fetch_all(&state.db.pool)
            .await
            .map_err(internal)?;
            let gens = rows
                .iter()
                .map(Generation::from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?;
            let next = (gens.len() == limit as usize).then(|| (offset + limit as i64).to_string());
            Ok(Json(FeedPage {
                items: items(&state, &gens, viewer.as_ref()).await?,
                next_cursor: next,
            }))
        }
        _ => Err(invalid("sort", "must be new or top")),
    }
}

/// A generation the viewer may see: public and completed, or their own.
async fn visible(
    state: &AppState,
    id: &str,
    viewer: Option<&User>,
) -> Result<Generation, ApiError> {
    match state.db.generation(id).await.map_err(internal)? {
        Some(g)
            if (g.is_public && g.status == "completed")
                || viewer.is_some_and(|v| v.id == g.user_id) =>
        {
            Ok(g)
        }
        _ => Err(ApiError::not_found(format!("no public generation {id}"))),
    }
}

#[utoipa::path(get, path = "/api/feed/{id}", tag = "feed", security((), ("bearer" = [])), params(("id" = String, Path, description = "Generation id")), responses((status = 200, description = "A public generation", body = FeedItem), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_item(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FeedItem>, ApiError> {
    let viewer = auth::current_user(&state, &headers).await.ok();
    let g = visible(&state, &id, viewer.as_ref()).await?;
    Ok(Json(item(&state, &g, viewer.as_ref()).await?))
}

/// A like, toggled.
#[derive(Serialize, ToSchema)]
pub struct LikeResult {
    pub id: String,
    /// Whether the caller likes it now.
    pub liked: bool,
    pub likes_count: i64,
}

/// `POST /api/feed/:id/like`: toggles the caller's like; the count moves by the rows the
/// same transaction changed, so it stays exact under concurrent likes.
#[utoipa::path(post, path = "/api/feed/{id}/like", tag = "feed", params(("id" = String, Path, description = "Generation id")), responses((status = 200, description = "The like, toggled", body = LikeResult), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn like(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LikeResult>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let g = visible(&state, &id, Some(&user)).await?;
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    let removed = sqlx::query("DELETE FROM likes WHERE user_id = $1 AND generation_id = $2")
        .bind(&user.id)
        .bind(&g.id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?
        .rows_affected();
    let added = if removed == 0 {
        sqlx::query("INSERT INTO likes (user_id, generation_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&user.id)
            .bind(&g.id)
            .bind(auth::now())
            .execute(&mut *tx)
            .await
            .map_err(internal)?
            .rows_affected()
    } else {
        0
    };
    // A delta, not a recount: a recount's snapshot can miss a like committed meanwhile.
    sqlx::query("UPDATE generations SET likes_count = likes_count + $1 WHERE id = $2")
        .bind(added as i64 - removed as i64)
        .bind(&g.id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    let count: i64 = sqlx::query("SELECT likes_count FROM generations WHERE id = $1")
        .bind(&g.id)
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get("likes_count"))
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok(Json(LikeResult {
        id: g.id,
        liked: removed == 0,
        likes_count: count,
    }))
}

/// `POST /api/feed/:id/remix`: a new generation for the caller from this one's
/// parameters, with the body's fields (any of `POST /api/generate/image`'s) on top.
#[utoipa::path(post, path = "/api/feed/{id}/remix", tag = "feed", params(("id" = String, Path, description = "Generation id")), request_body(content = Object, description = "Any fields of an image request, over the original's"), responses((status = 202, description = "Queued", body = Accepted), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn remix(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let g = visible(&state, &id, Some(&user)).await?;
    let overrides: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("body: {e}")))?
    };
    let new_id = generations::remix(&state, &user, &g, overrides).await?;
    generations::remix_response(&state, &new_id).await
}

/// A public profile and a page of its public generations.
#[derive(Serialize, ToSchema)]
pub struct PublicProfile {
    pub handle: String,
    pub name: String,
    pub bio: String,
    pub avatar_url: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    pub public_generations: i64,
    pub likes_received: i64,
    pub items: Vec<FeedItem>,
    pub next_cursor: Option<String>,
}

/// `GET /api/profiles/:handle`: a public profile and its public generations.
#[utoipa::path(get, path = "/api/profiles/{handle}", tag = "feed", security((), ("bearer" = [])), params(("handle" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query)), responses((status = 200, description = "A public profile and its public generations", body = PublicProfile), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(handle): Path<String>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<FeedQuery>,
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
    let page = Page::new(q.limit, q.cursor.as_deref())?;
    let filter = Filter {
        user_id: Some(&uid),
        public_only: true,
        ..Default::default()
    };
    let gens = page_of(&state.db, &filter, &page).await?;
    let stats = sqlx::query("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(likes_count), 0) AS BIGINT) AS likes FROM generations WHERE user_id = $1 AND is_public = 1 AND status = 'completed'")
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
        public_generations: stats.try_get("n").map_err(internal)?,
        likes_received: stats.try_get("likes").map_err(internal)?,
        items: items(&state, &gens, viewer.as_ref()).await?,
        next_cursor: page.next(&gens),
    }))
}
