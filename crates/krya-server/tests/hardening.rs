//! A server facing the internet: Secure cookies, the client's address through trusted
//! proxies only, sign-in throttling that never locks the owner out from another address,
//! registration policies, the one-time setup link for the first administrator, the Host
//! allow-list and the security headers.

mod common;

use common::client::Client;
use common::*;
use krya_server::Config;
use krya_server::infra::config::Registration;
use serde_json::{Value, json};

fn server(adjust: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    adjust(&mut config);
    Server::start(config, dir)
}

fn login(base: &str, email: &str, password: &str, client: &str) -> (u16, String) {
    let body = json!({"email": email, "password": password}).to_string();
    let (st, head, _) = raw(
        base,
        "POST",
        "/api/auth/login",
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", client),
        ],
        &body,
    );
    (st, head)
}

#[test]
fn cookies_are_secure_unless_turned_off() {
    for secure in [true, false] {
        let s = server(|c| c.server.secure_cookies = secure);
        let a = agent();
        let r = post(
            &a,
            &format!("{}/api/auth/register", s.base),
            r#"{"email":"c@example.com","password":"cookie monster","name":"C"}"#,
        );
        assert_eq!(r.status(), 201);
        let cookies: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(cookies.len(), 2);
        for c in cookies {
            assert_eq!(c.contains("; Secure"), secure, "{c}");
        }
    }
}

/// Behind a trusted proxy each client has its own budget; a wrong password from one
/// address does not lock the owner out from another; growing delays, then 429.
#[test]
fn sign_in_throttling_is_per_account_and_address_through_trusted_proxies() {
    let s = server(|c| c.server.trusted_proxies = vec!["127.0.0.1".into()]);
    Client::register(&s.base, "owner@example.com");
    let attacker = "198.51.100.7";
    for _ in 0..5 {
        assert_eq!(
            login(&s.base, "owner@example.com", "guess", attacker).0,
            401
        );
    }
    let (st, head) = login(&s.base, "owner@example.com", "guess", attacker);
    assert_eq!(st, 429, "{head}");
    assert!(head.contains("retry-after: "), "{head}");
    // The attacker's address waits even with the right password...
    assert_eq!(
        login(&s.base, "owner@example.com", "password123", attacker).0,
        429
    );
    // ...the owner, elsewhere, signs in.
    assert_eq!(
        login(&s.base, "owner@example.com", "password123", "203.0.113.20").0,
        200
    );
    // The client's own claim further left is not believed: this is still the attacker.
    let spoofed = format!("203.0.113.20, {attacker}");
    assert_eq!(
        login(&s.base, "owner@example.com", "password123", &spoofed).0,
        429
    );

    // Without a trusted proxy the header is ignored: every client here is 127.0.0.1.
    let s = server(|_| {});
    Client::register(&s.base, "owner@example.com");
    for i in 0..5 {
        let client = format!("198.51.100.{i}");
        assert_eq!(login(&s.base, "owner@example.com", "guess", &client).0, 401);
    }
    assert_eq!(
        login(&s.base, "owner@example.com", "guess", "198.51.100.99").0,
        429
    );
}

fn register(base: &str, email: &str, invite: Option<&str>) -> (u16, Value) {
    let mut body = json!({"email": email, "password": "password123", "name": "N"});
    if let Some(i) = invite {
        body["invite"] = json!(i);
    }
    let mut r = post(
        &agent(),
        &format!("{base}/api/auth/register"),
        &body.to_string(),
    );
    (r.status().as_u16(), json(&mut r))
}

/// The first administrator comes from the setup link, once; registering never makes one;
/// `open`, `invite` and `closed` registration.
#[test]
fn registration_policies_and_the_setup_link() {
    let s = server(|c| c.accounts.registration = Registration::Invite);
    let info = |c: &str| -> Value {
        let mut r = agent()
            .get(format!("{}/api/auth/registration", s.base))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{c}");
        json(&mut r)
    };
    assert_eq!(
        info("before"),
        json!({"registration": "invite", "setup_pending": true})
    );
    let link = s.dir.path().join("setup-link");
    let text = std::fs::read_to_string(&link).unwrap();
    assert!(text.starts_with("/setup?token="), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&link).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner reads the link");
    }
    // A wrong token is refused.
    let mut r = post(
        &agent(),
        &format!("{}/api/auth/setup", s.base),
        &json!({"token": "0".repeat(48), "email": "x@example.com", "password": "password123", "name": "X"}).to_string(),
    );
    assert_eq!(
        (r.status().as_u16(), json(&mut r)["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let root = Client::setup_admin(&s.base, s.dir.path(), "root@example.com");
    assert!(!link.exists(), "the link is spent");
    assert_eq!(info("after")["setup_pending"], false);
    let token = text.trim().split("token=").nth(1).unwrap();
    let mut r = post(
        &agent(),
        &format!("{}/api/auth/setup", s.base),
        &json!({"token": token, "email": "y@example.com", "password": "password123", "name": "Y"})
            .to_string(),
    );
    assert_eq!(r.status(), 403, "{}", json(&mut r));

    // By invite: none, a made-up one, then the administrator's, once.
    let (st, e) = register(&s.base, "ann@example.com", None);
    assert_eq!(
        (
            st,
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("invite")
        ),
        (403, true),
        "{e}"
    );
    assert_eq!(register(&s.base, "ann@example.com", Some("nope")).0, 403);
    let (st, inv) = root.post("/api/admin/invites", json!({"days": 2}));
    assert_eq!(st, 201, "{inv}");
    let code = inv["code"].as_str().unwrap();
    assert!(inv["url"].as_str().unwrap().ends_with(code));
    let (st, made) = register(&s.base, "ann@example.com", Some(code));
    assert_eq!(
        (st, made["user"]["is_admin"].as_bool()),
        (201, Some(false)),
        "{made}"
    );
    assert_eq!(
        register(&s.base, "bob@example.com", Some(code)).0,
        403,
        "used"
    );
    let ann = Client::login(&s.base, "ann@example.com");
    assert_eq!(
        ann.post("/api/admin/invites", json!({})).0,
        403,
        "only administrators make invites"
    );
    let (_, list) = root.get("/api/admin/invites");
    assert_eq!(list["items"][0]["used_by"], made["user"]["id"]);
    assert_eq!(list["items"][0]["code"], Value::Null, "kept as a hash");
    // A taken email does not spend an invite.
    let (_, inv2) = root.post("/api/admin/invites", json!({}));
    let code2 = inv2["code"].as_str().unwrap();
    assert_eq!(register(&s.base, "ann@example.com", Some(code2)).0, 409);
    assert_eq!(register(&s.base, "bob@example.com", Some(code2)).0, 201);
    drop(s);

    let s = server(|c| c.accounts.registration = Registration::Closed);
    let (st, e) = register(&s.base, "ann@example.com", None);
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let s = server(|_| {});
    let (st, made) = register(&s.base, "first@example.com", None);
    assert_eq!(
        (st, made["user"]["is_admin"].as_bool()),
        (201, Some(false)),
        "open"
    );
}

#[test]
fn only_this_servers_names_are_answered() {
    // Listening on loopback: localhost and loopback addresses only.
    let s = server(|_| {});
    let port = s.base.rsplit(':').next().unwrap().to_string();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "LOCALHOST".into(),
    ] {
        let (st, _, body) = raw(&s.base, "GET", "/api/health", &[("Host", &host)], "");
        assert_eq!(st, 200, "{host}: {body}");
    }
    for host in [
        "attacker.example",
        "attacker.example:80",
        "127.0.0.1.nip.io",
    ] {
        let (st, _, body) = raw(&s.base, "GET", "/api/health", &[("Host", host)], "");
        assert_eq!(st, 403, "{host}");
        assert!(
            body.contains("\"code\":\"forbidden\"") && body.contains("host:"),
            "{body}"
        );
    }
    let s = server(|c| c.server.allowed_hosts = vec!["krya.example.com".into()]);
    assert_eq!(
        raw(
            &s.base,
            "GET",
            "/api/health",
            &[("Host", "krya.example.com")],
            ""
        )
        .0,
        200
    );
    assert_eq!(
        raw(
            &s.base,
            "GET",
            "/api/health",
            &[("Host", "Krya.Example.com:443")],
            ""
        )
        .0,
        200
    );
    assert_eq!(
        raw(&s.base, "GET", "/api/health", &[("Host", "localhost")], "").0,
        403
    );
}

#[test]
fn security_headers_on_every_answer() {
    let s = server(|c| c.server.trusted_proxies = vec!["127.0.0.1".into()]);
    for path in ["/api/health", "/api/nothing-here"] {
        let (_, head, _) = raw(&s.base, "GET", path, &[], "");
        for h in [
            "x-content-type-options: nosniff",
            "referrer-policy: same-origin",
            "x-frame-options: deny",
        ] {
            assert!(head.contains(h), "{path}: {h} in {head}");
        }
        assert!(
            !head.contains("strict-transport-security"),
            "plain http: no HSTS"
        );
    }
    let (_, head, _) = raw(
        &s.base,
        "GET",
        "/api/health",
        &[("X-Forwarded-Proto", "https")],
        "",
    );
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    // From an untrusted peer the header means nothing.
    let s = server(|_| {});
    let (_, head, _) = raw(
        &s.base,
        "GET",
        "/api/health",
        &[("X-Forwarded-Proto", "https")],
        "",
    );
    assert!(!head.contains("strict-transport-security"), "{head}");
}

/// Registrations per address, uploads and submissions per address and per user: 429 with
/// `Retry-After` beyond the limit, others unaffected.
#[test]
fn requests_are_limited_per_address_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    config.limits.register_per_hour = 2;
    config.limits.uploads_per_minute = 2;
    config.limits.submissions_per_minute = 2;
    let (base, stop, handle) = start_limited(config);
    let s = Server::from_parts(base, stop, handle, dir);
    let reg = |email: &str, client: &str| {
        let body = json!({"email": email, "password": "password123", "name": "N"}).to_string();
        raw(
            &s.base,
            "POST",
            "/api/auth/register",
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", client),
            ],
            &body,
        )
    };
    assert_eq!(reg("a@example.com", "198.51.100.1").0, 201);
    assert_eq!(reg("b@example.com", "198.51.100.1").0, 201);
    let (st, head, body) = reg("c@example.com", "198.51.100.1");
    assert_eq!(st, 429, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(body.contains("\"code\":\"rate-limited\""), "{body}");
    assert_eq!(
        reg("c@example.com", "198.51.100.2").0,
        201,
        "another address"
    );

    let a = Client::login(&s.base, "a@example.com");
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../krya-engine/tests/golden/init.png"
    ))
    .unwrap();
    let upload = |c: &Client, client: &str| {
        let mut r =
            c.a.post(format!("{}/api/assets", s.base))
                .header("Authorization", format!("Bearer {}", c.token))
                .header("Content-Type", "image/png")
                .header("X-Forwarded-For", client)
                .send(&png[..])
                .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(upload(&a, "203.0.113.1").0, 201);
    assert_eq!(upload(&a, "203.0.113.2").0, 201);
    // Per user: a third from yet another address is refused.
    let (st, body) = upload(&a, "203.0.113.3");
    assert_eq!(st, 429, "{body}");
    let b = Client::login(&s.base, "b@example.com");
    assert_eq!(upload(&b, "203.0.113.4").0, 201, "another user");

    let submit = |c: &Client| {
        c.post(
            "/api/generate/image",
            json!({"prompt": "x", "model": "nope"}),
        )
        .0
    };
    // Counted whatever the answer (here 422: no such model).
    assert_eq!(submit(&b), 422);
    assert_eq!(submit(&b), 422);
    assert_eq!(submit(&b), 429);
}

/// Avatars are the user's own uploads (public once chosen): the studio's pages load images
/// from this server only.
#[test]
fn avatars_are_uploads() {
    let s = server(|_| {});
    let a = Client::register(&s.base, "ann@example.com");
    let b = Client::register(&s.base, "bob@example.com");
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../krya-engine/tests/golden/init.png"
    ))
    .unwrap();
    let (_, mine) = a.upload(png.clone(), "image/png");
    let (_, theirs) = b.upload(png.clone(), "image/png");
    let put =
        |c: &Client, url: &str| c.send("PUT", "/api/user/profile", json!({"avatar_url": url}), &[]);
    for bad in [
        "https://example.com/a.png".to_string(),
        format!("/api/assets/{}", theirs["id"].as_str().unwrap()),
        "/api/health".into(),
    ] {
        let (st, e) = put(&a, &bad);
        assert_eq!(
            (
                st,
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("avatar_url")
            ),
            (422, true),
            "{bad}: {e}"
        );
    }
    let url = format!("/api/assets/{}", mine["id"].as_str().unwrap());
    let (st, p) = put(&a, &url);
    assert_eq!(
        (st, p["avatar_url"].as_str()),
        (200, Some(url.as_str())),
        "{p}"
    );
    let mut r = agent().get(format!("{}{url}", s.base)).call().unwrap();
    assert_eq!(r.status(), 200, "anyone sees an avatar");
    assert_eq!(r.body_mut().read_to_vec().unwrap(), png);
    assert_eq!(put(&a, "").0, 200);
}
