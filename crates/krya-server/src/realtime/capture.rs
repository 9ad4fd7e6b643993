//! Saving a live-canvas frame to the gallery: `POST /api/realtime/captures` turns an
//! uploaded frame into a completed generation of the caller's (a PNG with A1111
//! parameters and a thumbnail), private unless asked otherwise, like any other.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::generations::{Generation, GenerationView, Params, random_id, view};
#[allow(unused_imports)]
use crate::http::openapi::{ErrorBody, Object};
use crate::infra::error::{ApiError, internal, invalid};
use crate::{AppState, http::auth, http::media};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// The frame, uploaded with `POST /api/assets`.
    image: String,
    prompt: String,
    model: String,
    seed: Option<i64>,
    strength: Option<f64>,
    steps: Option<u32>,
    #[serde(default)]
    is_public: bool,
}

#[utoipa::path(post, path = "/api/realtime/captures", tag = "realtime", request_body = Capture, responses((status = 201, description = "The saved generation", body = GenerationView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn save(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Capture>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(c) = body?;
    let prompt = c.prompt.trim().to_string();
    if prompt.chars().count() > 4000 {
        return Err(invalid("prompt", "must be at most 4000 characters"));
    }
    let models = crate::http::models::offered(&state).await?;
    if !models.iter().any(|m| m.id == c.model) {
        return Err(invalid(
            "model",
            "must name the model that rendered the frame (see GET /api/models)",
        ));
    }
    let seed = match c.seed {
        None => 0,
        Some(s) if (0..=u32::MAX as i64).contains(&s) => s,
        Some(_) => return Err(invalid("seed", "must be from 0 to 4294967295")),
    };
    if c.strength
        .is_some_and(|s| !(s.is_finite() && (0.0..=1.0).contains(&s)))
    {
        return Err(invalid("strength", "must be from 0 to 1"));
    }
    let asset = state
        .db
        .asset(&c.image, &user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid("image", "no uploaded asset with this id (POST /api/assets)"))?;
    let bytes = state
        .blobs
        .get(&asset.blob_key)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("an asset's file is missing"))?;
    // Only a frame this server rendered for this user: a capture cannot publish an
    // arbitrary upload as a free generation.
    let hub = state
        .realtime
        .as_ref()
        .ok_or_else(|| invalid("image", "the live canvas is off on this server"))?;
    if !hub.rendered_for(&user.id, &bytes) {
        return Err(invalid(
            "image",
            "is not a frame this server rendered for you on the live canvas",
        ));
    }
    let max_pixels = state.config.server.max_upload_pixels;
    let (model, steps, strength) = (c.model.clone(), c.steps, c.strength);
    let text_prompt = prompt.clone();
    // Decoding and encoding off the async threads.
    let (img, png, thumb) = tokio::task::spawn_blocking(move || {
        let img = media::decode_limited(&bytes, max_pixels)?.into_rgb8();
        let (w, h) = img.dimensions();
        let mut settings = vec![
            ("Seed", seed.to_string()),
            ("Size", format!("{w}x{h}")),
            ("Model", model),
        ];
        if let Some(s) = steps {
            settings.insert(0, ("Steps", s.to_string()));
        }
        if let Some(s) = strength {
            settings.push(("Denoising strength", format!("{s}")));
        }
        settings.push(("Source", "live canvas".into()));
        let text = krya_engine::image_io::a1111_parameters(&text_prompt, None, &settings);
        let png = krya_engine::image_io::png_bytes(&img, &text).map_err(internal)?;
        let thumb = media::thumbnail_webp(&img, 384).map_err(internal)?;
        Ok::<_, ApiError>((img, png, thumb))
    })
    .await
    .map_err(internal)??;
    let (w, h) = img.dimensions();

    let id = random_id();
    let (png_key, thumb_key) = (
        format!("generations/{id}/capture-0.png"),
        format!("generations/{id}/capture-0-thumb.webp"),
    );
    state
        .blobs
        .put(&png_key, png.clone())
        .await
        .map_err(internal)?;
    if let Err(e) = state.blobs.put(&thumb_key, thumb).await {
        let _ = state.blobs.delete(&png_key).await;
        return Err(internal(e));
    }
    let params = Params {
        steps: c.steps,
        strength: c.strength,
        ..Default::default()
    };
    let stored = async {
        let t = auth::now();
        let mut tx = state.db.pool.begin().await?;
        sqlx::query("INSERT INTO generations (id, user_id, type, prompt, negative_prompt, model, parameters, status, seed, width, height, batch_size, credits_used, created_at, started_at, completed_at) \
             VALUES ($1, $2, 'image', $3, NULL, $4, $5, 'completed', $6, $7, $8, 1, 0, $9, $9, $9)")
            .bind(&id)
            .bind(&user.id)
            .bind(&prompt)
            .bind(&c.model)
            .bind(serde_json::to_string(&params).unwrap())
            .bind(seed)
            .bind(w as i64)
            .bind(h as i64)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO images (id, generation_id, idx, seed, width, height, png_key, thumb_key) VALUES ($1, $2, 0, $3, $4, $5, $6, $7)")
            .bind(random_id())
            .bind(&id)
            .bind(seed)
            .bind(w as i64)
            .bind(h as i64)
            .bind(&png_key)
            .bind(&thumb_key)
            .execute(&mut *tx)
            .await?;
        // A job that ended as it began, so the capture is an image job like any other:
        // listed, its picture an asset (from the canvas upload), deleted the same way.
        let job_id = random_id();
        crate::jobs::record_completed(
            &mut tx,
            crate::jobs::NewJob {
                id: &job_id,
                kind: crate::tasks::image::KIND,
                ref_id: &id,
                user_id: &user.id,
                max_attempts: 1,
                payload: None,
                params: Some(&serde_json::json!({"prompt": prompt, "model": c.model, "seed": seed, "source": "live canvas"}).to_string()),
                is_public: c.is_public,
                ..Default::default()
            },
        )
        .await?;
        let output = crate::tasks::Output {
            kind: "image",
            mime: "image/png",
            ext: "png",
            body: crate::tasks::Body::Bytes(png),
            thumbnail: None,
            tiles: None,
            width: Some(w),
            height: Some(h),
            duration_ms: None,
            parent_id: Some(c.image.clone()),
            meta: serde_json::Value::Null,
        };
        let job = crate::tasks::Job {
            id: job_id,
            kind: crate::tasks::image::KIND.into(),
            ref_id: id.clone(),
            user_id: user.id.clone(),
            attempt: 1,
            max_attempts: 1,
            params: serde_json::Value::Null,
            state: None,
            cost: 0,
            webhook_url: None,
        };
        let stored = crate::tasks::Stored {
            output: &output,
            asset_id: random_id(),
            key: png_key.clone(),
            thumb_key: Some(thumb_key.clone()),
        };
        crate::jobs::insert_output(&mut tx, &job, &stored).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = stored {
        // Files first, rows second: without rows the files are removed again.
        for k in [&png_key, &thumb_key] {
            let _ = state.blobs.delete(k).await;
        }
        return Err(internal(e));
    }
    let g: Generation = state
        .db
        .generation(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("vanished"))?;
    Ok((StatusCode::CREATED, Json(view(&state, &g, false).await?)).into_response())
}
