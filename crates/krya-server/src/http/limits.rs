//! Request limits, in one place: registrations and sign-ins per client address, uploads and
//! submitted jobs per address and per signed-in user (`[limits]`). Beyond a limit: 429 with
//! `Retry-After`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::http::auth;
use crate::http::guard::ClientIp;
use crate::infra::config;
use crate::infra::error::{ApiError, ErrorCode};
use crate::infra::throttle::Throttle;

pub struct Limits {
    register: Throttle,
    login: Throttle,
    uploads: Throttle,
    submissions: Throttle,
}

impl Limits {
    pub fn new(c: &config::Limits) -> Limits {
        let minute = Duration::from_secs(60);
        Limits {
            register: Throttle::new(c.register_per_hour as usize, Duration::from_secs(3600)),
            login: Throttle::new(c.login_per_minute as usize, minute),
            uploads: Throttle::new(c.uploads_per_minute as usize, minute),
            submissions: Throttle::new(c.submissions_per_minute as usize, minute),
        }
    }
}

/// The limit a request counts against, and whether it counts per user too.
fn classify<'a>(
    limits: &'a Limits,
    method: &Method,
    path: &str,
) -> Option<(&'a Throttle, &'static str, bool)> {
    if method != Method::POST {
        return None;
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "api", "auth", "register"] => Some((&limits.register, "registrations", false)),
        ["", "api", "auth", "login"] => Some((&limits.login, "sign-in attempts", false)),
        ["", "api", "assets"] => Some((&limits.uploads, "uploads", true)),
        ["", "api", "generate", "image"]
        | ["", "api", "generate", "image", "batch"]
        | ["", "api", "jobs"]
        | ["", "api", "feed", _, "remix"]
        | ["", "api", "realtime", "captures"] => Some((&limits.submissions, "submissions", true)),
        _ => None,
    }
}

fn limited(what: &str, wait: u64) -> Response {
    let mut e = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many {what}; try again in {wait} s"),
    );
    e.retry_after = Some(wait);
    e.into_response()
}

pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some((throttle, what, per_user)) = classify(&state.limits, req.method(), req.uri().path())
    else {
        return next.run(req).await;
    };
    let ip = req.extensions().get::<ClientIp>().map(|c| c.0.to_string());
    if let Some(ip) = ip
        && let Err(wait) = throttle.hit(&format!("address {ip}"))
    {
        return limited(what, wait);
    }
    if per_user && let Ok(user) = auth::current_user(&state, req.headers()).await {
        if let Err(wait) = throttle.hit(&format!("user {}", user.id)) {
            return limited(what, wait);
        }
        // Outputs take storage: no submission past the quota. (An upload checks the
        // quota itself, with its size.)
        if what == "submissions"
            && let Err(e) = crate::http::storage::check_quota(&state, &user.id, 0).await
        {
            return e.into_response();
        }
    }
    next.run(req).await
}
