//! Moderation on a public echo job: a user reports it (once per person), an administrator
//! sees the report, hides the item (gone from the feed, the profile and its output's
//! readers, and its owner cannot share it again), shows it again, dismisses reports,
//! suspends its author (sign-in, tokens and keys refused, public items hidden, queued
//! work cancelled and refunded) and lifts the suspension, and deletes it.

use super::*;

fn shared_echo(c: &Client) -> (String, String) {
    let (asset, _) = upload(c);
    let j = submit(c, json!({"asset": asset, "steps": 1}));
    let id = j["id"].as_str().unwrap().to_string();
    let done = c.wait_job(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let (st, v) = c.send(
        "PATCH",
        &format!("/api/jobs/{id}"),
        json!({"is_public": true}),
        &[],
    );
    assert_eq!(st, 200, "{v}");
    let url = v["outputs"][0]["url"].as_str().unwrap().to_string();
    (id, url)
}

fn in_feed(c: &Client, id: &str) -> bool {
    c.get("/api/feed").1["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id)
}

pub fn moderation(s: &Server) {
    let admin = Client::setup_admin(&s.base, s.dir.path(), "mod@example.com");
    let author = Client::register(&s.base, "author@example.com");
    let reader = Client::register(&s.base, "reader@example.com");
    let (id, url) = shared_echo(&author);
    assert!(in_feed(&reader, &id));
    assert_eq!(reader.bytes(&url).0, 200);

    // Reports: a reason is needed; one per person; only public items.
    let report = |c: &Client, reason: &str| {
        c.post(&format!("/api/feed/{id}/report"), json!({"reason": reason}))
    };
    assert_eq!(report(&reader, "  ").0, 422);
    let (st, r) = report(&reader, "spam");
    assert_eq!((st, &r["new"]), (201, &json!(true)), "{r}");
    assert_eq!(report(&reader, "spam again").0, 200);
    assert_eq!(
        reader
            .post("/api/feed/nope/report", json!({"reason": "x"}))
            .0,
        404
    );
    // Only administrators read reports or moderate.
    assert_eq!(reader.get("/api/admin/reports").0, 403);
    let hide = |c: &Client, hidden: bool| {
        c.send(
            "PATCH",
            &format!("/api/admin/jobs/{id}"),
            json!({"hidden": hidden}),
            &[],
        )
    };
    assert_eq!(hide(&reader, true).0, 403);
    let (st, list) = admin.get("/api/admin/reports");
    assert_eq!(st, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["item"]["id"], id.as_str());
    assert_eq!(items[0]["hidden"], false);
    assert_eq!(items[0]["reports"].as_array().unwrap().len(), 1);
    assert_eq!(items[0]["reports"][0]["reason"], "spam");
    assert_eq!(items[0]["reports"][0]["reporter"], reader.user["handle"]);

    // Hidden: gone from the feed, the item page, the profile and the output for everyone
    // but its owner; the reports are resolved; the owner cannot share it again.
    let (st, m) = hide(&admin, true);
    assert_eq!((st, &m["hidden"]), (200, &json!(true)), "{m}");
    assert!(!in_feed(&reader, &id));
    assert_eq!(reader.get(&format!("/api/feed/{id}")).0, 404);
    assert_eq!(reader.bytes(&url).0, 404);
    let handle = author.user["handle"].as_str().unwrap();
    assert_eq!(
        reader.get(&format!("/api/profiles/{handle}")).1["public_items"],
        0
    );
    assert_eq!(author.bytes(&url).0, 200);
    assert!(
        admin.get("/api/admin/reports").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (st, e) = author.send(
        "PATCH",
        &format!("/api/jobs/{id}"),
        json!({"is_public": true}),
        &[],
    );
    assert_eq!((st, &e["error"]["code"]), (403, &json!("forbidden")), "{e}");
    // Reported again while hidden: reports of private items are refused.
    assert_eq!(report(&reader, "still there?").0, 404);
    // Shown again: public as before.
    assert_eq!(hide(&admin, false).0, 200);
    assert!(in_feed(&reader, &id));
    assert_eq!(reader.bytes(&url).0, 200);
    assert_eq!(hide(&admin, false).0, 200, "asking for what holds is fine");

    // Dismissed reports leave the item as it is.
    let other = Client::register(&s.base, "other@example.com");
    let (st, _) = other.post(&format!("/api/feed/{id}/report"), json!({"reason": "meh"}));
    assert_eq!(st, 201);
    let dismiss = format!("/api/admin/jobs/{id}/reports");
    assert_eq!(admin.send("DELETE", &dismiss, Value::Null, &[]).0, 204);
    assert_eq!(admin.send("DELETE", &dismiss, Value::Null, &[]).0, 404);
    assert!(in_feed(&reader, &id));

    // Suspension: the author's tokens and sign-in are refused, their public items hidden,
    // their queued work cancelled and refunded.
    let author_id = author.user["id"].as_str().unwrap().to_string();
    let (asset, _) = upload(&author);
    let before = author.credits();
    let slow = submit(
        &author,
        json!({"asset": asset, "steps": 1000, "step_ms": 50}),
    );
    let slow_id = slow["id"].as_str().unwrap();
    let (st, key) = author.post("/api/user/api-keys", json!({"name": "k"}));
    assert_eq!(st, 201, "{key}");
    let suspend = |suspended: bool| {
        admin.send(
            "PATCH",
            &format!("/api/admin/users/{author_id}"),
            json!({"suspended": suspended}),
            &[],
        )
    };
    assert_eq!(
        admin
            .send(
                "PATCH",
                &format!("/api/admin/users/{}", admin.user["id"].as_str().unwrap()),
                json!({"suspended": true}),
                &[]
            )
            .0,
        409,
        "an administrator suspending themselves"
    );
    let (st, u) = suspend(true);
    assert_eq!((st, &u["suspended"]), (200, &json!(true)), "{u}");
    let (st, e) = author.get("/api/auth/me");
    assert_eq!(st, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    let key_client = Client {
        a: agent(),
        base: s.base.clone(),
        token: key["key"].as_str().unwrap().to_string(),
        user: Value::Null,
    };
    assert_eq!(key_client.get("/api/jobs").0, 403);
    let login = post(
        &agent(),
        &format!("{}/api/auth/login", s.base),
        &json!({"email": "author@example.com", "password": "password123"}).to_string(),
    );
    assert_eq!(login.status(), 403);
    assert!(!in_feed(&reader, &id));
    assert_eq!(reader.bytes(&url).0, 404);
    let found = admin.get("/api/admin/users?q=AUTHOR").1;
    assert_eq!(found["users"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["users"][0]["suspended"], true, "{found}");
    // Hidden by the suspension: an administrator's unhide does not override it.
    assert_eq!(hide(&admin, false).0, 409);

    // Lifted: signs in again; the items show again; the work was cancelled and refunded.
    assert_eq!(suspend(false).1["suspended"], false);
    let author = Client::login(&s.base, "author@example.com");
    let slow_after = author.get(&format!("/api/jobs/{slow_id}")).1;
    assert_eq!(slow_after["status"], "cancelled", "{slow_after}");
    assert_eq!(author.credits(), before);
    assert!(in_feed(&reader, &id));
    assert_eq!(reader.bytes(&url).0, 200);

    // Reported again after its report was resolved: open again (still one per person);
    // while open, a second report from the same person changes nothing.
    let (st, _) = reader.post(
        &format!("/api/feed/{id}/report"),
        json!({"reason": "again"}),
    );
    assert_eq!(st, 201);
    let (st, _) = reader.post(
        &format!("/api/feed/{id}/report"),
        json!({"reason": "and again"}),
    );
    assert_eq!(st, 200);
    let open = admin.get("/api/admin/reports").1;
    assert_eq!(
        open["items"][0]["reports"].as_array().unwrap().len(),
        1,
        "{open}"
    );
    assert_eq!(open["items"][0]["reports"][0]["reason"], "again");

    // Deleted by an administrator: the job, its files and its reports.
    assert_eq!(
        admin
            .send("DELETE", &format!("/api/admin/jobs/{id}"), Value::Null, &[])
            .0,
        204
    );
    assert_eq!(author.get(&format!("/api/jobs/{id}")).0, 404);
    assert_eq!(author.bytes(&url).0, 404);
    assert!(
        admin.get("/api/admin/reports").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        admin
            .send("DELETE", &format!("/api/admin/jobs/{id}"), Value::Null, &[])
            .0,
        404
    );
}

#[test]
fn moderation_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path()), dir);
    moderation(&s);
}

#[test]
fn moderation_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = postgres_schema();
    let mut c = config(dir.path());
    c.database.url = url;
    let s = start(c, dir);
    moderation(&s);
    drop(s);
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}
