//! The OpenAPI document (`GET /api/openapi.json`, `krya openapi`): every route is in it
//! and routed, every answer has a typed schema, what can go wrong is documented, and the
//! studio's committed copy is the server's.

mod common;

use common::*;

/// The OpenAPI document lists exactly the server's endpoints, each with its responses, and
/// request bodies where they take one.
#[test]
fn openapi_document_covers_every_endpoint() {
    let (base, stop, handle, _dir) = start();
    let a = agent();
    let mut r = a.get(format!("{base}/api/openapi.json")).call().unwrap();
    assert_eq!(r.status(), 200);
    let doc = json(&mut r);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("get", "/api/health"),
        ("get", "/api/openapi.json"),
        ("post", "/api/auth/register"),
        ("post", "/api/auth/login"),
        ("post", "/api/auth/refresh"),
        ("post", "/api/auth/logout"),
        ("get", "/api/auth/me"),
        ("post", "/api/user/api-keys"),
        ("get", "/api/user/api-keys"),
        ("delete", "/api/user/api-keys/{id}"),
        ("get", "/api/user/webhook-secret"),
        ("get", "/api/user/profile"),
        ("put", "/api/user/profile"),
        ("get", "/api/user/usage"),
        ("get", "/api/user/subscription"),
        ("post", "/api/admin/users/{id}/credits"),
        ("get", "/api/admin/users"),
        ("patch", "/api/admin/users/{id}"),
        ("get", "/api/admin/reports"),
        ("patch", "/api/admin/jobs/{id}"),
        ("delete", "/api/admin/jobs/{id}"),
        ("delete", "/api/admin/jobs/{id}/reports"),
        ("post", "/api/feed/{id}/report"),
        ("post", "/api/enhance/image"),
        ("get", "/api/enhance/{id}"),
        ("post", "/api/caption"),
        ("get", "/api/caption/{id}"),
        ("post", "/api/edit/image"),
        ("get", "/api/edit/{id}"),
        ("post", "/api/segment"),
        ("get", "/api/assets/{id}/versions"),
        ("get", "/api/auth/registration"),
        ("get", "/api/auth/session"),
        ("post", "/api/auth/setup"),
        ("post", "/api/admin/invites"),
        ("get", "/api/admin/invites"),
        ("delete", "/api/admin/invites/{id}"),
        ("get", "/api/models"),
        ("get", "/api/styles"),
        ("post", "/api/generate/image"),
        ("post", "/api/generate/image/batch"),
        ("get", "/api/generate/image/{id}"),
        ("delete", "/api/generate/image/{id}"),
        ("patch", "/api/generate/image/{id}"),
        ("post", "/api/generate/image/{id}/cancel"),
        ("get", "/api/generate/images"),
        ("post", "/api/jobs"),
        ("get", "/api/jobs"),
        ("get", "/api/jobs/{id}"),
        ("delete", "/api/jobs/{id}"),
        ("patch", "/api/jobs/{id}"),
        ("post", "/api/jobs/{id}/cancel"),
        ("get", "/api/jobs/kinds"),
        ("post", "/api/assets"),
        ("get", "/api/assets/{id}"),
        ("delete", "/api/assets/{id}"),
        ("get", "/api/assets/{id}/thumbnail"),
        ("get", "/api/assets/{id}/tiles"),
        ("get", "/api/assets/{id}/tiles/{level}/{x}/{y}"),
        ("get", "/api/images/{id}"),
        ("get", "/api/images/{id}/thumbnail"),
        ("post", "/api/train/model"),
        ("get", "/api/train/model/{id}"),
        ("get", "/api/train/model/{id}/samples/{step}"),
        ("get", "/api/train/models"),
        ("get", "/api/events"),
        ("get", "/api/feed"),
        ("get", "/api/feed/{id}"),
        ("post", "/api/feed/{id}/like"),
        ("post", "/api/feed/{id}/remix"),
        ("get", "/api/profiles/{handle}"),
        ("post", "/api/realtime/captures"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let listed: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        listed,
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (method, path) in expected {
        let op = &doc["paths"][path][method];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}"
        );
        if path.contains('{') {
            assert!(
                op["parameters"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["in"] == "path")),
                "{method} {path} has no path parameter"
            );
        }
        // Every endpoint the router knows answers something other than the 404 fallback.
        let url = format!(
            "{base}{}",
            path.replace("{id}", "x").replace("{handle}", "x")
        );
        let req = ureq::http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(url)
            .body(String::new())
            .unwrap();
        let mut resp = a.run(req).unwrap();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        assert!(
            !body.contains("no endpoint at"),
            "{method} {path} is documented but not routed"
        );
    }
    // The studio's copy, which its types are generated from (web/scripts/api-types.mjs).
    let committed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/src/api/openapi.json");
    let served = krya_server::http::router::openapi_document() + "\n";
    if std::env::var_os("KRYA_UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed, &served).unwrap();
    }
    assert!(
        std::fs::read_to_string(&committed).unwrap_or_default() == served,
        "web/src/api/openapi.json is not the server's document: run \
         `cargo run -- openapi > web/src/api/openapi.json && (cd web && npm run api-types)`"
    );
    // Every answer is a typed schema: only the document itself is free-form.
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().unwrap() {
                let schema = &r["content"]["application/json"]["schema"];
                if path != "/api/openapi.json" && !schema.is_null() {
                    assert!(
                        schema.get("$ref").is_some() || schema["type"] == "array",
                        "{method} {path} {status} answers a free-form object: {schema}"
                    );
                }
            }
        }
    }
    // What every JSON body, query string and token can go wrong with is documented.
    for (path, method, statuses) in [
        ("/api/auth/login", "post", &["400", "413", "415", "422"][..]),
        (
            "/api/generate/image/{id}",
            "patch",
            &["400", "401", "415", "422"][..],
        ),
        ("/api/images/{id}", "get", &["422"][..]),
        ("/api/jobs", "get", &["401", "422"][..]),
    ] {
        for st in statuses {
            assert!(
                doc["paths"][path][method]["responses"][st].is_object(),
                "{method} {path} does not document {st}"
            );
        }
    }
    let create = &doc["paths"]["/api/generate/image"]["post"];
    assert!(create["requestBody"]["content"]["application/json"].is_object());
    let schemas = &doc["components"]["schemas"];
    for field in [
        "prompt",
        "negative_prompt",
        "model",
        "width",
        "height",
        "steps",
        "cfg_scale",
        "seed",
        "batch_size",
        "scheduler",
        "aspect_ratio",
        "style",
        "init_image",
        "strength",
        "mask",
        "is_public",
        "webhook_url",
    ] {
        assert!(
            schemas["ImageRequest"]["properties"][field].is_object(),
            "ImageRequest.{field}"
        );
    }
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}
