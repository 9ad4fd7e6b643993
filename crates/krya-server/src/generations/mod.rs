//! Image generation (seed §6.1, §6.3 shapes): submit, poll, list, cancel, delete, batch.
//!
//! A submission checks the request, reserves its credits, stores the generation and
//! enqueues its job in one transaction: either all of it happens or none. Failed and
//! cancelled generations are refunded in the transaction that ends them, so credits are
//! charged exactly once whatever crashes when.

use krya_engine::SchedulerKind;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::http::auth::{self, now};
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::{ApiError, ErrorCode};
use crate::persistence::db::{Db, User};
use crate::tasks::image::KIND as IMAGE;
use crate::{AppState, jobs, persistence::registry};

pub(crate) use crate::infra::credits::log_usage;
pub(crate) use crate::infra::error::{internal, invalid};
pub(crate) use crate::infra::ids::random_id;

pub mod http;
mod listing;
pub mod upgrade;
pub use http::*;
pub(crate) use listing::*;

/// An image as the API shows it (generation views, `completed` events, webhooks).
pub fn image_json(id: &str, width: i64, height: i64, seed: i64) -> serde_json::Value {
    serde_json::to_value(ImageView::new(id, width, height, seed)).unwrap_or_default()
}

/// `POST /api/generate/image`, as the seed's §6.3 shows it (plus what the studio sends).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    /// What to make (A1111 emphasis like `(word:1.2)` works).
    #[schema(min_length = 1, max_length = 4000)]
    pub prompt: String,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub negative_prompt: Option<String>,
    /// A model id from `GET /api/models` (default: the first installed one).
    #[serde(default)]
    pub model: Option<String>,
    /// A multiple of 8 (default: the model's size, or `aspect_ratio`'s).
    #[serde(default)]
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    pub width: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 8, maximum = 2048, multiple_of = 8)]
    pub height: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 30)]
    pub cfg_scale: Option<f64>,
    /// Absent or -1: random.
    #[serde(default)]
    #[schema(minimum = -1, maximum = 4294967295_i64)]
    pub seed: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    #[schema(pattern = "^(euler|euler_a|ddim|dpmpp_2m|dpmpp_2m_karras|lcm|pndm)$")]
    pub scheduler: Option<String>,
    /// `W:H`, used when width and height are not given.
    #[serde(default)]
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)?:[0-9]+(\\.[0-9]+)?$")]
    pub aspect_ratio: Option<String>,
    /// A style id from `GET /api/styles`.
    #[serde(default)]
    pub style: Option<String>,
    /// Asset id of the image-to-image source.
    #[serde(default)]
    pub init_image: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub strength: Option<f64>,
    /// Asset id of the inpainting mask (white = repaint); needs `init_image`.
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub is_public: Option<bool>,
    /// An http(s) URL that gets a signed POST when the generation ends.
    #[serde(default)]
    #[schema(pattern = "^https?://[^/?#@\\s]+")]
    pub webhook_url: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4)]
    pub clip_skip: Option<u32>,
    /// LoRAs to apply, each with its weight (`<lora:ID:WEIGHT>` in the prompt adds more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<crate::tasks::lora::LoraRef>,
}

/// What a job needs besides the generation's columns, stored as its `parameters` JSON.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Params {
    pub steps: Option<u32>,
    pub cfg_scale: Option<f64>,
    pub scheduler: Option<String>,
    pub style: Option<String>,
    pub aspect_ratio: Option<String>,
    pub strength: Option<f64>,
    pub init_image: Option<String>,
    pub mask: Option<String>,
    #[serde(default)]
    pub clip_skip: u32,
    /// The request's `loras` (its prompt's tags stay in the prompt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<crate::tasks::lora::LoraRef>,
}

/// A checked request, ready to store.
struct Checked {
    prompt: String,
    negative_prompt: Option<String>,
    model: String,
    width: u32,
    height: u32,
    seed: i64,
    batch: u32,
    is_public: bool,
    webhook_url: Option<String>,
    params: Params,
    cost: i64,
}

impl Checked {
    /// The job's params: the request as checked (the model's defaults filled in).
    fn job_params(&self) -> String {
        let mut params = serde_json::json!({"prompt": self.prompt, "negative_prompt": self.negative_prompt, "model": self.model,
            "width": (self.width > 0).then_some(self.width), "height": (self.height > 0).then_some(self.height), "seed": self.seed,
            "batch_size": self.batch, "is_public": self.is_public});
        if let (Some(p), Ok(serde_json::Value::Object(extra))) =
            (params.as_object_mut(), serde_json::to_value(&self.params))
        {
            p.extend(extra);
        }
        params.to_string()
    }
}

/// Credits a request costs: one per image per started megapixel (at least one).
pub fn cost(width: u32, height: u32, batch: u32) -> i64 {
    let mp = ((width as u64 * height as u64).div_ceil(1024 * 1024) as i64).max(1);
    mp * batch as i64
}

fn parse_aspect(ar: &str) -> Option<(f64, f64)> {
    let (a, b) = ar.split_once(':')?;
    let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
    (a >= 1.0 && b >= 1.0 && a <= 32.0 && b <= 32.0 && a / b <= 4.0 && b / a <= 4.0)
        .then_some((a, b))
}

/// The size an aspect ratio `W:H` gives on a model trained at `base`² pixels: the same
/// pixel count, sides multiples of 64 (of 8 for models under 512).
pub fn aspect_size(base: u32, ar: &str) -> Option<(u32, u32)> {
    let (a, b) = parse_aspect(ar)?;
    let base = base as f64;
    let scale = base / (a * b).sqrt();
    let unit = if base >= 512.0 { 64.0 } else { 8.0 };
    let snap = |x: f64| ((((x / unit).round() as u32).max(1) as f64 * unit) as u32).min(2048);
    Some((snap(a * scale), snap(b * scale)))
}

/// The aspect ratios the studio offers, in its order.
pub const ASPECT_RATIOS: [&str; 5] = ["1:1", "16:9", "9:16", "4:3", "3:4"];

async fn check(state: &AppState, user: &User, r: ImageRequest) -> Result<Checked, ApiError> {
    let prompt = r.prompt.trim().to_string();
    if prompt.is_empty() {
        return Err(invalid("prompt", "must not be empty"));
    }
    if prompt.chars().count() > 4000 {
        return Err(invalid("prompt", "must be at most 4000 characters"));
    }
    if r.negative_prompt
        .as_ref()
        .is_some_and(|n| n.chars().count() > 4000)
    {
        return Err(invalid(
            "negative_prompt",
            "must be at most 4000 characters",
        ));
    }
    let models = crate::http::models::offered(state).await?;
    use crate::persistence::registry::Capability;
    let entry = match &r.model {
        Some(id) => models
            .iter()
            .find(|m| &m.id == id)
            .ok_or_else(|| invalid("model", format!("no model {id:?} (see GET /api/models)")))?,
        None => models
            .iter()
            .find(|m| m.installed && m.capabilities.contains(&Capability::Txt2img))
            .ok_or_else(|| {
                invalid(
                    "model",
                    "no model is installed; name one (see GET /api/models)",
                )
            })?,
    };
    if !entry.capabilities.is_empty() && !entry.capabilities.contains(&Capability::Txt2img) {
        return Err(invalid(
            "model",
            format!(
                "{} does not make images from prompts (it is an upscaler: see POST /api/enhance/image)",
                entry.id
            ),
        ));
    }
    let mut with_own = models.clone();
    with_own.extend(
        crate::tasks::lora::own_entries(
            &state.services(),
            &user.id,
            Some(&crate::tasks::lora::ids_in(&prompt, &r.loras)),
        )
        .await
        .map_err(crate::infra::error::internal)?,
    );
    crate::tasks::lora::check(&with_own, entry, &prompt, &r.loras)?;
    let dims = |v: Option<u32>, field: &str| -> Result<Option<u32>, ApiError> {
        match v {
            Some(x) if !(8..=2048).contains(&x) || x % 8 != 0 => {
                Err(invalid(field, "must be a multiple of 8 from 8 to 2048"))
            }
            v => Ok(v),
        }
    };
    let (w, h) = (dims(r.width, "width")?, dims(r.height, "height")?);
    let base = entry.resolution.unwrap_or(512);
    let (width, height) = match (w, h, &r.aspect_ratio) {
        (Some(w), Some(h), _) => (w, h),
        (None, None, Some(ar)) => aspect_size(base, ar)
            .ok_or_else(|| invalid("aspect_ratio", "must be W:H, like 16:9, at most 4:1"))?,
        (Some(w), None, _) => (w, w),
        (None, Some(h), _) => (h, h),
        (None, None, None) => (0, 0),
    };
    crate::tasks::in_range("steps", r.steps.map(f64::from), 1.0, 150.0)?;
    crate::tasks::in_range("cfg_scale", r.cfg_scale, 0.0, 30.0)?;
    let seed = crate::tasks::job_seed(r.seed)?;
    let batch = r.batch_size.unwrap_or(1);
    if !(1..=4).contains(&batch) {
        return Err(invalid("batch_size", "must be from 1 to 4"));
    }
    if let Some(s) = &r.scheduler {
        SchedulerKind::parse(s).map_err(|e| invalid("scheduler", e))?;
    }
    let style = r.style.clone();
    if let Some(s) = &style
        && !registry::styles().iter().any(|x| &x.id == s)
    {
        return Err(invalid(
            "style",
            format!("no style {s:?} (see GET /api/styles)"),
        ));
    }
    if let Some(s) = r.strength
        && !(s.is_finite() && (0.0..=1.0).contains(&s))
    {
        return Err(invalid("strength", "must be from 0 to 1"));
    }
    if r.mask.is_some() && r.init_image.is_none() {
        return Err(invalid("mask", "needs init_image (the image to inpaint)"));
    }
    let mut init_size = None;
    for (field, id) in [("init_image", &r.init_image), ("mask", &r.mask)] {
        if let Some(id) = id {
            let asset = state.db.asset(id, &user.id).await.map_err(internal)?;
            let Some(asset) = asset else {
                return Err(invalid(
                    field,
                    format!("no uploaded asset {id:?} (upload with POST /api/assets)"),
                ));
            };
            if field == "init_image" {
                init_size = Some((asset.width, asset.height));
            }
        }
    }
    // Image-to-image without a size renders at the init image's size (down to multiples
    // of 8): that is the size to check and to price.
    let (width, height) = match ((width, height), init_size) {
        ((0, 0), Some((iw, ih))) => {
            let (w, h) = ((iw / 8 * 8) as u32, (ih / 8 * 8) as u32);
            if !(8..=2048).contains(&w) || !(8..=2048).contains(&h) {
                return Err(invalid(
                    "init_image",
                    format!("is {iw}x{ih}; give width and height (at most 2048) to scale it"),
                ));
            }
            (w, h)
        }
        (size, _) => size,
    };
    if let Some(u) = &r.webhook_url {
        if u.len() > 2048 || u.contains(char::is_whitespace) {
            return Err(invalid("webhook_url", "must be an http(s) URL"));
        }
        crate::tasks::webhook::outbox::check_target(u, state.config.webhooks.allow_private)
            .await
            .map_err(|e| invalid("webhook_url", e))?;
    }
    let clip_skip = r.clip_skip.unwrap_or(0);
    if clip_skip > 4 {
        return Err(invalid("clip_skip", "must be from 0 to 4"));
    }
    Ok(Checked {
        prompt,
        negative_prompt: r.negative_prompt.filter(|n| !n.trim().is_empty()),
        model: entry.id.clone(),
        width,
        height,
        seed,
        batch,
        is_public: r.is_public.unwrap_or(false),
        webhook_url: r.webhook_url,
        // Unknown size (the model's default): priced at its native resolution.
        cost: if width == 0 {
            let r = entry.resolution.unwrap_or(512);
            cost(r, r, batch)
        } else {
            cost(width, height, batch)
        },
        params: Params {
            steps: r.steps.or(entry.default_steps),
            cfg_scale: r.cfg_scale.or(entry.default_cfg),
            scheduler: r.scheduler,
            style,
            aspect_ratio: r.aspect_ratio,
            strength: r.strength,
            init_image: r.init_image,
            mask: r.mask,
            clip_skip,
            loras: r.loras,
        },
    })
}

/// Stores checked requests, reserving their credits and enqueuing their jobs, all or none.
/// With an idempotency key (single requests only), a repeat returns the first generation.
/// What a remix remixes: the generation and its job.
#[derive(Clone, Copy)]
struct Remixed<'a> {
    generation: &'a str,
    job: &'a str,
}

async fn submit(
    state: &AppState,
    user: &User,
    items: Vec<Checked>,
    idempotency_key: Option<&str>,
    remix_of: Option<Remixed<'_>>,
) -> Result<Vec<String>, ApiError> {
    if let Some(key) = idempotency_key
        && let Some(id) = state
            .db
            .generation_by_key(&user.id, key)
            .await
            .map_err(internal)?
    {
        return Ok(vec![id]);
    }
    let total: i64 = items.iter().map(|c| c.cost).sum();
    let inputs: Vec<String> = items
        .iter()
        .flat_map(|c| [c.params.init_image.clone(), c.params.mask.clone()])
        .flatten()
        .collect();
    let tx = state.db.pool.begin().await.map_err(internal)?;
    let mut tx = crate::infra::credits::reserve(&state.db, tx, user, total).await?;
    let mut ids = Vec::new();
    let t = now();
    for c in items {
        let id = random_id();
        let r = sqlx::query("INSERT INTO generations (id, user_id, type, prompt, negative_prompt, model, parameters, status, seed, width, height, batch_size, credits_used, idempotency_key, webhook_url, remix_of, created_at) \
             VALUES ($1, $2, 'image', $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13, $14, $15)")
            .bind(&id)
            .bind(&user.id)
            .bind(&c.prompt)
            .bind(&c.negative_prompt)
            .bind(&c.model)
            .bind(serde_json::to_string(&c.params).unwrap())
            .bind(c.seed)
            .bind(c.width as i64)
            .bind(c.height as i64)
            .bind(c.batch as i64)
            .bind(c.cost)
            .bind(idempotency_key)
            .bind(&c.webhook_url)
            .bind(remix_of.map(|r| r.generation))
            .bind(t)
            .execute(&mut *tx)
            .await;
        match r {
            Ok(_) => {}
            // The same key raced in from a concurrent retry: that one wins.
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && idempotency_key.is_some() =>
            {
                drop(tx);
                let id = state
                    .db
                    .generation_by_key(&user.id, idempotency_key.unwrap())
                    .await
                    .map_err(internal)?;
                return id
                    .map(|i| vec![i])
                    .ok_or_else(|| internal("idempotency race"));
            }
            Err(e) => return Err(internal(e)),
        }
        log_usage(&mut tx, &user.id, "image_gen", c.cost, &id)
            .await
            .map_err(internal)?;
        let params = c.job_params();
        jobs::enqueue(
            &mut tx,
            jobs::NewJob {
                id: &random_id(),
                kind: IMAGE,
                ref_id: &id,
                user_id: &user.id,
                max_attempts: state.config.jobs.max_attempts as i64,
                payload: None,
                params: Some(&params),
                cost: c.cost,
                webhook_url: c.webhook_url.as_deref(),
                is_public: c.is_public,
                remix_of: remix_of.map(|r| r.job),
            },
        )
        .await
        .map_err(internal)?;
        ids.push(id);
    }
    tx.commit().await.map_err(internal)?;
    crate::http::storage::mark_used(&state.db, &inputs)
        .await
        .map_err(internal)?;
    state.wake.notify();
    for id in &ids {
        state.bus.publish(
            &user.id,
            "queued",
            id,
            crate::tasks::runner::with_kind(serde_json::json!({"status": "pending"}), IMAGE),
        );
    }
    Ok(ids)
}

/// A generation row.
#[derive(Debug, Clone)]
pub struct Generation {
    pub id: String,
    pub user_id: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    pub params: Params,
    pub status: String,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    pub batch_size: i64,
    pub is_public: bool,
    pub likes_count: i64,
    pub credits_used: i64,
    pub progress_step: i64,
    pub progress_total: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub webhook_url: Option<String>,
    pub remix_of: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

/// Generations with their job (which holds what sharing needs: public, likes).
pub const GENERATIONS: &str = "generations g JOIN jobs j ON j.ref_id = g.id AND j.kind = 'image'";

pub const GENERATION_COLUMNS: &str = "g.id, g.user_id, g.prompt, g.negative_prompt, g.model, g.parameters, g.status, g.seed, g.width, g.height, g.batch_size, j.is_public, j.likes_count, g.credits_used, g.progress_step, g.progress_total, g.error_code, g.error_message, g.webhook_url, g.remix_of, g.created_at, g.started_at, g.completed_at";

impl Generation {
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let params: String = r.try_get("parameters")?;
        Ok(Generation {
            id: r.try_get("id")?,
            user_id: r.try_get("user_id")?,
            prompt: r.try_get("prompt")?,
            negative_prompt: r.try_get("negative_prompt")?,
            model: r.try_get("model")?,
            params: serde_json::from_str(&params).unwrap_or_default(),
            status: r.try_get("status")?,
            seed: r.try_get("seed")?,
            width: r.try_get("width")?,
            height: r.try_get("height")?,
            batch_size: r.try_get("batch_size")?,
            is_public: r.try_get::<i64, _>("is_public")? != 0,
            likes_count: r.try_get("likes_count")?,
            credits_used: r.try_get("credits_used")?,
            progress_step: r.try_get("progress_step")?,
            progress_total: r.try_get("progress_total")?,
            error_code: r.try_get("error_code")?,
            error_message: r.try_get("error_message")?,
            webhook_url: r.try_get("webhook_url")?,
            remix_of: r.try_get("remix_of")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            completed_at: r.try_get("completed_at")?,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == "pending" || self.status == "processing"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub id: String,
    pub idx: i64,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    #[serde(skip)]
    pub png_key: String,
    #[serde(skip)]
    pub thumb_key: String,
}

impl Db {
    pub async fn generation(&self, id: &str) -> Result<Option<Generation>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {GENERATION_COLUMNS} FROM {GENERATIONS} WHERE g.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Generation::from_row(&r)).transpose()
    }

    async fn generation_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let row =
            sqlx::query("SELECT id FROM generations WHERE user_id = $1 AND idempotency_key = $2")
                .bind(user_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| r.try_get("id")).transpose()
    }

    pub async fn images(&self, generation_id: &str) -> Result<Vec<ImageRow>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, idx, seed, width, height, png_key, thumb_key FROM images WHERE generation_id = $1 ORDER BY idx")
            .bind(generation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ImageRow {
                    id: r.try_get("id")?,
                    idx: r.try_get("idx")?,
                    seed: r.try_get("seed")?,
                    width: r.try_get("width")?,
                    height: r.try_get("height")?,
                    png_key: r.try_get("png_key")?,
                    thumb_key: r.try_get("thumb_key")?,
                })
            })
            .collect()
    }

    /// Seconds a job of `model` took recently (for estimates); 5 when there is no history.
    pub async fn typical_seconds(&self, model: &str) -> Result<f64, sqlx::Error> {
        let rows = sqlx::query("SELECT completed_at - started_at AS d FROM generations WHERE model = $1 AND status = 'completed' AND started_at IS NOT NULL ORDER BY completed_at DESC LIMIT 20")
            .bind(model)
            .fetch_all(&self.pool)
            .await?;
        let d: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.try_get::<i64, _>("d").ok())
            .collect();
        Ok(if d.is_empty() {
            5.0
        } else {
            (d.iter().sum::<i64>() as f64 / d.len() as f64).max(1.0)
        })
    }
}

/// Submits a remix: `source`'s parameters (its job is `source_job`) with `overrides` on top,
/// by `user`.
pub async fn remix(
    state: &AppState,
    user: &User,
    source: &Generation,
    source_job: &str,
    overrides: serde_json::Value,
) -> Result<String, ApiError> {
    let base = ImageRequest {
        prompt: source.prompt.clone(),
        negative_prompt: source.negative_prompt.clone(),
        model: Some(source.model.clone()),
        width: (source.width > 0).then_some(source.width as u32),
        height: (source.height > 0).then_some(source.height as u32),
        steps: source.params.steps,
        cfg_scale: source.params.cfg_scale,
        seed: Some(source.seed),
        batch_size: Some(1),
        scheduler: source.params.scheduler.clone(),
        aspect_ratio: None,
        style: source.params.style.clone(),
        clip_skip: Some(source.params.clip_skip),
        loras: source.params.loras.clone(),
        // Someone else's uploads are not the remixer's to use.
        ..Default::default()
    };
    let mut merged = serde_json::to_value(&base).map_err(internal)?;
    match overrides {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                merged[k] = v;
            }
        }
        serde_json::Value::Null => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                "body: must be a JSON object of overrides",
            ));
        }
    }
    let req: ImageRequest = serde_json::from_value(merged)
        .map_err(|e| ApiError::new(ErrorCode::InvalidInput, e.to_string()))?;
    let checked = check(state, user, req).await?;
    let remixed = Remixed {
        generation: &source.id,
        job: source_job,
    };
    let ids = submit(state, user, vec![checked], None, Some(remixed)).await?;
    Ok(ids.into_iter().next().unwrap())
}
