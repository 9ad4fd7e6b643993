//! The real server on 127.0.0.1:0: health, the JSON error shape for unknown routes and
//! methods, graceful shutdown, and accounts on SQLite and on PostgreSQL (a schema per run).

mod common;

use common::*;
use krya_server::Config;

#[test]
fn health_errors_and_shutdown() {
    let (base, stop, handle, _dir) = start();
    let a = agent();
    let mut r = a.get(format!("{base}/api/health")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&mut r)["status"], "ok");

    let mut r = a.get(format!("{base}/api/no-such-thing")).call().unwrap();
    assert_eq!(r.status(), 404);
    let body = json(&mut r);
    assert_eq!(body["error"]["code"], "not-found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/no-such-thing")
    );

    assert_eq!(
        r.headers()["x-request-id"].len(),
        16,
        "every response names its request"
    );
    let r = a
        .get(format!("{base}/api/health"))
        .header("x-request-id", "abc-123")
        .call()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");

    let mut r = a.post(format!("{base}/api/health")).send("").unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(json(&mut r)["error"]["code"], "method-not-allowed");

    // A query string that does not parse is the API's error naming the parameter (axum's
    // own answer is a plain-text 400).
    for (path, field) in [
        ("/api/feed?limit=abc", "limit"),
        ("/api/feed?limit=0", "limit"),
        ("/api/images/x?download=7", "download"),
        ("/api/profiles/x?limit=-1", "limit"),
    ] {
        let mut r = a.get(format!("{base}{path}")).call().unwrap();
        assert_eq!(r.status(), 422, "{path}");
        let e = json(&mut r);
        assert_eq!(e["error"]["code"], "invalid-input", "{path}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{path}: {e}"
        );
    }

    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
    assert!(
        a.get(format!("{base}/api/health")).call().is_err(),
        "server still answering after shutdown"
    );
}

/// Register, log in and `me` on one server; run on SQLite and on PostgreSQL.
fn accounts(base: &str) {
    let a = agent();
    let reg = format!("{base}/api/auth/register");
    let mut r = post(
        &a,
        &reg,
        r#"{"email":"Alice@Example.com","password":"correct horse","name":"Alice"}"#,
    );
    assert_eq!(r.status(), 201);
    let cookies = set_cookies(&r);
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("krya_session="))
        .expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("krya_refresh="))
        .expect("a refresh cookie");
    assert!(
        refresh_cookie.contains("HttpOnly")
            && refresh_cookie.contains("SameSite=Strict")
            && refresh_cookie.contains("Path=/api/auth;"),
        "the refresh token goes only to the auth endpoints: {refresh_cookie}"
    );
    let body = json(&mut r);
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(
        body["user"]["is_admin"], false,
        "registering first does not make an administrator"
    );
    assert_eq!(body["user"]["credits_remaining"], 50);
    assert_eq!(body["user"]["handle"], "alice");
    assert!(
        body["access_token"].as_str().unwrap().len() >= 32 && body["refresh_token"].is_string()
    );

    let mut r = post(
        &a,
        &reg,
        r#"{"email":"bob@example.com","password":"hunter2hunter2","name":"Bob"}"#,
    );
    assert_eq!(r.status(), 201);
    assert_eq!(json(&mut r)["user"]["is_admin"], false);

    let mut r = post(
        &a,
        &reg,
        r#"{"email":"alice@example.com","password":"another one","name":"A2"}"#,
    );
    assert_eq!(r.status(), 409);
    assert_eq!(json(&mut r)["error"]["code"], "conflict");

    for (body, status, code, needle) in [
        (
            r#"{"email":"not-an-email","password":"longenough","name":"X"}"#,
            422,
            "invalid-input",
            "email",
        ),
        (
            r#"{"email":"x@example.com","password":"short","name":"X"}"#,
            422,
            "invalid-input",
            "password",
        ),
        (
            r#"{"email":"x@example.com","password":"longenough","name":"  "}"#,
            422,
            "invalid-input",
            "name",
        ),
        (
            r#"{"email":"x@example.com","password":"longenough"}"#,
            422,
            "invalid-input",
            "name",
        ),
        (r#"{"email": "x@example.com", "#, 400, "invalid-json", ""),
    ] {
        let mut r = post(&a, &reg, body);
        assert_eq!(r.status(), status, "{body}");
        let e = json(&mut r);
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
    }
    let mut r = a
        .post(&reg)
        .header("Content-Type", "text/plain")
        .send("{}")
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(json(&mut r)["error"]["code"], "unsupported-media-type");

    let login = format!("{base}/api/auth/login");
    for body in [
        r#"{"email":"alice@example.com","password":"wrong password"}"#,
        r#"{"email":"nobody@example.com","password":"whatever1"}"#,
    ] {
        let mut r = post(&a, &login, body);
        assert_eq!(r.status(), 401);
        assert_eq!(json(&mut r)["error"]["message"], "wrong email or password");
    }
    let mut r = post(
        &a,
        &login,
        r#"{"email":"ALICE@example.com","password":"correct horse"}"#,
    );
    assert_eq!(r.status(), 200);
    let token = json(&mut r)["access_token"].as_str().unwrap().to_string();

    let me = format!("{base}/api/auth/me");
    let mut r = a
        .get(&me)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&mut r)["email"], "alice@example.com");
    let mut r = a
        .get(&me)
        .header("Cookie", format!("theme=dark; krya_session={token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&mut r)["name"], "Alice");
    for auth in ["Bearer nonsense", "Basic abc"] {
        let mut r = a.get(&me).header("Authorization", auth).call().unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(json(&mut r)["error"]["code"], "unauthorized");
    }
    assert_eq!(a.get(&me).call().unwrap().status(), 401);

    // Refresh rotates: the new pair works, the old refresh token is single-use, and
    // replaying it revokes every session of the user.
    let mut r = post(
        &a,
        &login,
        r#"{"email":"bob@example.com","password":"hunter2hunter2"}"#,
    );
    let b = json(&mut r);
    let (bob_access, bob_refresh) = (
        b["access_token"].as_str().unwrap().to_string(),
        b["refresh_token"].as_str().unwrap().to_string(),
    );
    let refresh = format!("{base}/api/auth/refresh");
    let mut r = post(
        &a,
        &refresh,
        &format!(r#"{{"refresh_token":"{bob_refresh}"}}"#),
    );
    assert_eq!(r.status(), 200);
    let n = json(&mut r);
    let new_access = n["access_token"].as_str().unwrap().to_string();
    assert_ne!(new_access, bob_access);
    assert_eq!(
        a.get(&me)
            .header("Authorization", format!("Bearer {bob_access}"))
            .call()
            .unwrap()
            .status(),
        401,
        "the old access token ends with its session"
    );
    assert_eq!(
        a.get(&me)
            .header("Authorization", format!("Bearer {new_access}"))
            .call()
            .unwrap()
            .status(),
        200
    );
    let mut r = post(
        &a,
        &refresh,
        &format!(r#"{{"refresh_token":"{bob_refresh}"}}"#),
    );
    assert_eq!(r.status(), 401);
    assert_eq!(json(&mut r)["error"]["code"], "unauthorized");
    assert_eq!(
        a.get(&me)
            .header("Authorization", format!("Bearer {new_access}"))
            .call()
            .unwrap()
            .status(),
        401,
        "a replayed refresh token revokes all sessions"
    );
    assert_eq!(
        post(&a, &refresh, r#"{"refresh_token":"made-up"}"#).status(),
        401
    );

    // API keys: shown once, listed by prefix, accepted as bearer tokens, revocable only by
    // their owner.
    let keys = format!("{base}/api/user/api-keys");
    let bearer = format!("Bearer {token}");
    let mut r = a
        .post(&keys)
        .header("Authorization", &bearer)
        .header("Content-Type", "application/json")
        .send(r#"{"name":"ci"}"#)
        .unwrap();
    assert_eq!(r.status(), 201);
    let k = json(&mut r);
    let key = k["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("krya_") && key.starts_with(k["prefix"].as_str().unwrap()));
    let mut r = a
        .get(&keys)
        .header("Authorization", &bearer)
        .call()
        .unwrap();
    let listed = json(&mut r);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(
        listed["items"][0].get("key").is_none(),
        "the key is never listed"
    );
    let mut r = a
        .get(&me)
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .unwrap();
    let body = json(&mut r);
    assert_eq!(body["email"], "alice@example.com", "{body}");
    let mut r = post(
        &a,
        &login,
        r#"{"email":"bob@example.com","password":"hunter2hunter2"}"#,
    );
    let bob = json(&mut r)["access_token"].as_str().unwrap().to_string();
    let del = format!("{keys}/{}", k["id"].as_str().unwrap());
    assert_eq!(
        a.delete(&del)
            .header("Authorization", format!("Bearer {bob}"))
            .call()
            .unwrap()
            .status(),
        404,
        "not bob's key"
    );
    assert_eq!(
        a.get(&keys)
            .header("Authorization", format!("Bearer {bob}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
        r#"{"items":[]}"#
    );
    assert_eq!(
        a.delete(&del)
            .header("Authorization", &bearer)
            .call()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        a.get(&me)
            .header("Authorization", format!("Bearer {key}"))
            .call()
            .unwrap()
            .status(),
        401,
        "a revoked key stops working"
    );
    assert_eq!(
        a.post(&keys)
            .header("Content-Type", "application/json")
            .send(r#"{"name":"x"}"#)
            .unwrap()
            .status(),
        401
    );

    // Logout ends the session and clears the cookie.
    let logout = format!("{base}/api/auth/logout");
    let r = a
        .post(&logout)
        .header("Authorization", format!("Bearer {token}"))
        .send("")
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared = set_cookies(&r);
    assert!(
        ["krya_session=;", "krya_refresh=;"]
            .iter()
            .all(|name| cleared
                .iter()
                .any(|c| c.starts_with(name) && c.contains("Max-Age=0"))),
        "{cleared:?}"
    );
    assert_eq!(
        a.get(&me)
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(a.post(&logout).send("").unwrap().status(), 401);
}

fn set_cookies(r: &ureq::http::Response<ureq::Body>) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The `name=value` part of a response's cookie `name`.
fn cookie_pair(r: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    set_cookies(r)
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next().map(str::to_string))
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// A browser keeps no token in reach of scripts: the refresh cookie alone renews the
/// session (single use, like the body's token), and signs out once the access token has
/// expired.
#[test]
fn browser_sessions_live_in_cookies() {
    let (base, stop, handle, _dir) = start();
    let a = agent();
    let r = post(
        &a,
        &format!("{base}/api/auth/register"),
        r#"{"email":"c@example.com","password":"cookie monster","name":"C"}"#,
    );
    assert_eq!(r.status(), 201);
    let refresh = cookie_pair(&r, "krya_refresh");
    let refresh_url = format!("{base}/api/auth/refresh");
    let me = format!("{base}/api/auth/me");

    let r = a
        .post(&refresh_url)
        .header("Cookie", &refresh)
        .send("")
        .unwrap();
    assert_eq!(r.status(), 200);
    let (session, next_refresh) = (
        cookie_pair(&r, "krya_session"),
        cookie_pair(&r, "krya_refresh"),
    );
    assert_ne!(next_refresh, refresh, "the refresh token rotates");
    assert_eq!(
        a.get(&me)
            .header("Cookie", &session)
            .call()
            .unwrap()
            .status(),
        200
    );

    // Two tabs refresh at once with the same cookie: one wins, the other is refused
    // without signing the user out everywhere.
    let again = a
        .post(&refresh_url)
        .header("Cookie", &refresh)
        .send("")
        .unwrap();
    assert_eq!(again.status(), 401, "a spent token was exchanged twice");
    assert_eq!(
        a.get(&me)
            .header("Cookie", &session)
            .call()
            .unwrap()
            .status(),
        200,
        "the winner's session survives the other tab's late refresh"
    );

    // No body and no cookie: not signed in. A body that is not JSON: a JSON error.
    let mut r = a.post(&refresh_url).send("").unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(&mut r)["error"]["code"], "unauthorized");
    let mut r = a
        .post(&refresh_url)
        .header("Content-Type", "application/json")
        .send("{")
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(&mut r)["error"]["code"], "invalid-json");

    // Logout with only the refresh cookie (the access cookie has expired) ends the session.
    let r = a
        .post(format!("{base}/api/auth/logout"))
        .header("Cookie", &next_refresh)
        .send("")
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        a.get(&me)
            .header("Cookie", &session)
            .call()
            .unwrap()
            .status(),
        401,
        "the session's access token ends with it"
    );
    let r = a
        .post(&refresh_url)
        .header("Cookie", &next_refresh)
        .send("")
        .unwrap();
    assert_eq!(r.status(), 401);
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

/// The studio is served beside the API: its files with the right types and cache
/// lifetimes, its page for every route of its own, and the API's JSON 404s untouched.
#[test]
fn studio_is_served_beside_the_api() {
    static FILES: &[(&str, &[u8])] = &[
        (
            "index.html",
            b"<!doctype html><script src=\"/assets/app-3f2a.js\"></script>",
        ),
        ("assets/app-3f2a.js", b"console.log(1)"),
        // Compressed at build time (these stand-ins only need to differ).
        ("assets/app-3f2a.js.br", b"brotli bytes"),
        ("assets/app-3f2a.js.gz", b"gzip bytes"),
        ("favicon.svg", b"<svg/>"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    let (base, stop, handle) = start_serving(config, krya_server::http::studio::Studio::new(FILES));
    // The copy the browser accepts: brotli first, then gzip, else the file itself.
    for (accept, body, encoding) in [
        ("gzip, deflate, br, zstd", "brotli bytes", Some("br")),
        ("gzip", "gzip bytes", Some("gzip")),
        ("br;q=0, gzip", "gzip bytes", Some("gzip")),
        ("identity", "console.log(1)", None),
    ] {
        let (st, head, got) = raw(
            &base,
            "GET",
            "/assets/app-3f2a.js",
            &[("Accept-Encoding", accept)],
            "",
        );
        assert_eq!((st, got.as_str()), (200, body), "{accept}");
        match encoding {
            Some(e) => assert!(head.contains(&format!("content-encoding: {e}")), "{head}"),
            None => assert!(!head.contains("content-encoding"), "{head}"),
        }
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(head.contains("content-type: text/javascript"), "{head}");
    }
    let a = agent();
    for path in ["/", "/image", "/feed/abc123", "/profile/ada"] {
        let mut r = a.get(format!("{base}{path}")).call().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("default-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && csp.contains("img-src 'self' data: blob:;"),
            "{csp}"
        );
        assert!(
            r.body_mut()
                .read_to_string()
                .unwrap()
                .contains("/assets/app-3f2a.js")
        );
    }
    let r = a.get(format!("{base}/assets/app-3f2a.js")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = a.get(format!("{base}/favicon.svg")).call().unwrap();
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    // A file that is not there (an old build's asset) is a 404, not the page.
    assert_eq!(
        a.get(format!("{base}/assets/old-1111.js"))
            .call()
            .unwrap()
            .status(),
        404
    );
    // The API keeps its JSON errors.
    for path in ["/api/nope", "/api", "/ws/nope"] {
        let mut r = a.get(format!("{base}{path}")).call().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(json(&mut r)["error"]["code"], "not-found");
    }
    let mut r = a.post(format!("{base}/image")).send("").unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json(&mut r)["error"]["code"], "not-found");
    let r = a.head(format!("{base}/feed")).call().unwrap();
    assert_eq!(r.status(), 200);
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();

    // Without a studio, `/` says how this binary was built.
    let (base, stop, handle, _dir) = start();
    let mut r = a.get(format!("{base}/")).call().unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        json(&mut r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without the studio")
    );
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

#[test]
fn failed_logins_are_throttled_per_account() {
    let (base, stop, handle, _dir) = start();
    let a = agent();
    assert_eq!(
        post(
            &a,
            &format!("{base}/api/auth/register"),
            r#"{"email":"carol@example.com","password":"right password","name":"Carol"}"#
        )
        .status(),
        201
    );
    let login = format!("{base}/api/auth/login");
    for _ in 0..5 {
        assert_eq!(
            post(
                &a,
                &login,
                r#"{"email":"carol@example.com","password":"wrong guess"}"#
            )
            .status(),
            401
        );
    }
    // Now even the right password waits.
    let mut r = post(
        &a,
        &login,
        r#"{"email":"carol@example.com","password":"right password"}"#,
    );
    assert_eq!(r.status(), 429);
    let wait: u64 = r
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 15 * 60, "{wait}");
    assert_eq!(json(&mut r)["error"]["code"], "rate-limited");
    // Another account from the same address is not locked out.
    assert_eq!(
        post(
            &a,
            &format!("{base}/api/auth/register"),
            r#"{"email":"dan@example.com","password":"dan's password","name":"Dan"}"#
        )
        .status(),
        201
    );
    assert_eq!(
        post(
            &a,
            &login,
            r#"{"email":"dan@example.com","password":"dan's password"}"#
        )
        .status(),
        200
    );
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

/// Settings where any reuse of a refresh token counts as theft (no grace for two tabs).
fn strict(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.to_path_buf();
    config.server.refresh_reuse_secs = 0;
    config
}

#[test]
fn accounts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (base, stop, handle) = start_with(strict(dir.path()));
    accounts(&base);
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
    assert!(dir.path().join("krya.db").is_file());
}

#[test]
fn accounts_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = strict(dir.path());
    let (url, schema) = postgres_schema();
    config.database.url = url;
    let (base, stop, handle) = start_with(config);
    accounts(&base);
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
    assert!(
        !dir.path().join("krya.db").exists(),
        "PostgreSQL was configured, not SQLite"
    );
}

/// By default a webhook may not target the server's own network.
#[test]
fn webhooks_to_private_addresses_are_refused() {
    let (base, stop, handle, _dir) = start();
    let a = agent();
    let mut r = post(
        &a,
        &format!("{base}/api/auth/register"),
        r#"{"email":"w@example.com","password":"password123","name":"W"}"#,
    );
    let token = json(&mut r)["access_token"].as_str().unwrap().to_string();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://localhost/x",
    ] {
        let body =
            serde_json::json!({"prompt": "x", "model": "sd-turbo", "webhook_url": url}).to_string();
        let mut r = a
            .post(format!("{base}/api/generate/image"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(&body)
            .unwrap();
        assert_eq!(r.status(), 422, "{url}");
        let e = json(&mut r);
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("webhook_url"),
            "{e}"
        );
    }
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

/// A client that sends its body slowly cannot hold a handler: past
/// `server.request_timeout_secs` it gets the API's 408, and the server answers others.
#[test]
fn slow_requests_time_out() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.request_timeout_secs = 0.5;
    let s = Server::start(config, dir);
    let c = client::Client::register(&s.base, "slow@example.com");
    let addr = s.base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    // Half a body, then nothing.
    write!(
        tcp,
        "POST /api/assets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n",
        c.token
    )
    .unwrap();
    tcp.write_all(&[0u8; 500]).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("\"code\":\"timeout\""), "{head}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(c.get("/api/auth/me").0, 200);
}

/// A client that sends its headers slowly (or opens a connection and says nothing) is let
/// go after `server.header_read_timeout_secs`; one that keeps to it is answered on the same
/// connection, more than once.
#[test]
fn slow_headers_close_the_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.header_read_timeout_secs = 1.0;
    let s = Server::start(config, dir);
    let addr = s.base.trim_start_matches("http://").to_string();
    let closed_within = |tcp: &mut std::net::TcpStream| {
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        // Closed: end of stream (or a reset), not a read timeout.
        match tcp.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        t0.elapsed()
    };
    // Half a request line, a header a second: the deadline holds whatever trickles in.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(slow, "GET /api/health HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
    let trickle = {
        let mut w = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..30 {
                std::thread::sleep(std::time::Duration::from_millis(300));
                if write!(w, "X-Slow-{i}: 1\r\n").is_err() {
                    return i;
                }
            }
            30
        })
    };
    let waited = closed_within(&mut slow);
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    assert!(
        trickle.join().unwrap() < 30,
        "the trickle was never cut off"
    );
    // A connection that says nothing.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(&mut silent) < std::time::Duration::from_secs(5));
    // Prompt requests on one keep-alive connection are answered.
    let mut ok = std::net::TcpStream::connect(&addr).unwrap();
    ok.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    for _ in 0..2 {
        write!(ok, "GET /api/health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = ok.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}
