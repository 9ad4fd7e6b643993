//! Sharing, on image generations: a private generation does not exist for others; made
//! public it is in the feed (searchable, by its job and its generation), its files readable
//! by anyone; likes count once per user; a remix is the remixer's own private job; deleting
//! it takes it out of the feed with its files. Profiles. On SQLite and PostgreSQL.

mod common;

use common::client::*;
use common::tiny::*;
use common::*;
use serde_json::{Value, json};

fn isolation_feed_likes_remix(s: &Server) {
    let a = Client::register(&s.base, "ann@example.com");
    let b = Client::register(&s.base, "bob@example.com");
    let (_, sub) = a.post("/api/generate/image", json!({"prompt": "a secret", "model": "tiny", "width": 64, "height": 64, "steps": 1, "seed": 9}));
    let id = sub["id"].as_str().unwrap().to_string();
    let job = sub["job_id"].as_str().unwrap().to_string();
    let g = a.wait(&id);
    let url = g["images"][0]["url"].as_str().unwrap().to_string();
    let thumb = g["images"][0]["thumbnail_url"]
        .as_str()
        .unwrap()
        .to_string();
    // B: A's private generation does not exist.
    let output = a.get(&format!("/api/jobs/{job}")).1["outputs"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/api/generate/image/{id}"),
        format!("/api/feed/{id}"),
        format!("/api/feed/{job}"),
        format!("/api/jobs/{job}"),
        output.clone(),
        url.clone(),
        thumb.clone(),
    ] {
        assert_eq!(b.bytes(&path).0, 404, "{path}");
    }
    assert_eq!(
        b.post(&format!("/api/generate/image/{id}/cancel"), Value::Null)
            .0,
        404
    );
    assert_eq!(
        b.send(
            "DELETE",
            &format!("/api/generate/image/{id}"),
            Value::Null,
            &[]
        )
        .0,
        404
    );
    assert_eq!(
        b.send(
            "PATCH",
            &format!("/api/generate/image/{id}"),
            json!({"is_public": true}),
            &[]
        )
        .0,
        404
    );
    assert_eq!(b.post(&format!("/api/feed/{id}/remix"), json!({})).0, 404);
    assert_eq!(b.post(&format!("/api/feed/{id}/like"), Value::Null).0, 404);
    assert_eq!(
        agent()
            .get(format!("{}{url}", s.base))
            .call()
            .unwrap()
            .status(),
        404
    );
    assert!(b.get("/api/feed").1["items"].as_array().unwrap().is_empty());
    assert!(
        b.get("/api/generate/images").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A makes it public: B sees it in the feed, and its files.
    let (st, g) = a.send(
        "PATCH",
        &format!("/api/generate/image/{id}"),
        json!({"is_public": true}),
        &[],
    );
    assert_eq!((st, g["is_public"].as_bool()), (200, Some(true)));
    // The feed lists jobs of any kind: this one by its job's id, its generation its ref_id,
    // its file an asset anyone can read now.
    let feed = b.get("/api/feed").1;
    let item = &feed["items"][0];
    assert_eq!(
        (
            item["id"].as_str(),
            item["ref_id"].as_str(),
            item["kind"].as_str()
        ),
        (Some(job.as_str()), Some(id.as_str()), Some("image"))
    );
    assert_eq!(item["author"]["handle"], a.user["handle"]);
    assert_eq!(item["prompt"], "a secret");
    assert_eq!(
        (
            item["params"]["seed"].as_i64(),
            item["params"]["steps"].as_i64()
        ),
        (Some(9), Some(1))
    );
    assert_eq!(item["outputs"][0]["url"], output.as_str());
    assert_eq!(item["outputs"][0]["visibility"], "public");
    assert_eq!(b.bytes(&output).0, 200);
    assert_eq!(
        b.bytes(&output).1,
        a.bytes(&url).1,
        "the asset is the image's file"
    );
    assert_eq!(
        b.get(&format!("/api/feed/{id}")).1["id"],
        job.as_str(),
        "found by its generation"
    );
    assert_eq!(
        b.get("/api/feed?kind=image").1["items"][0]["id"],
        job.as_str()
    );
    assert!(
        b.get("/api/feed?kind=echo").0 == 422,
        "not a kind of this server"
    );
    // Search by prompt: case-insensitive, and `%`/`_` are plain characters, not wildcards.
    let found = |c: &Client, path: &str| -> Vec<String> {
        let (st, v) = c.get(path);
        assert_eq!(st, 200, "{path}: {v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    for path in [
        "/api/feed?q=SECRET",
        "/api/feed?q=a%20sec",
        "/api/feed?sort=top&q=secret",
    ] {
        assert_eq!(found(&b, path), vec![job.clone()], "{path}");
    }
    for path in [
        "/api/feed?q=fox",
        "/api/feed?q=%25",
        "/api/feed?q=a_secret",
        "/api/feed?sort=top&q=fox",
    ] {
        assert!(found(&b, path).is_empty(), "{path}");
    }
    assert_eq!(found(&a, "/api/generate/images?q=Secret"), vec![id.clone()]);
    assert!(found(&a, "/api/generate/images?q=_").is_empty());
    let (st, e) = b.get(&format!("/api/feed?q={}", "x".repeat(201)));
    assert_eq!(
        (
            st,
            e["error"]["message"].as_str().unwrap().starts_with("q:")
        ),
        (422, true)
    );
    assert_eq!(b.bytes(&url).0, 200);
    assert_eq!(
        agent()
            .get(format!("{}{thumb}", s.base))
            .call()
            .unwrap()
            .status(),
        200
    );
    // Likes count once per user and toggle.
    let (st, l) = b.post(&format!("/api/feed/{id}/like"), Value::Null);
    assert_eq!(
        (st, l["liked"].as_bool(), l["likes_count"].as_i64()),
        (200, Some(true), Some(1))
    );
    assert_eq!(b.get(&format!("/api/feed/{id}")).1["likes_count"], 1);
    assert_eq!(b.get(&format!("/api/feed/{id}")).1["liked"], true);
    let (_, l) = b.post(&format!("/api/feed/{id}/like"), Value::Null);
    assert_eq!(
        (l["liked"].as_bool(), l["likes_count"].as_i64()),
        (Some(false), Some(0))
    );
    let (_, l) = a.post(&format!("/api/feed/{id}/like"), Value::Null);
    assert_eq!(l["likes_count"], 1);
    let top = b.get("/api/feed?sort=top").1;
    assert_eq!(top["items"][0]["likes_count"], 1);
    let profile = b
        .get(&format!(
            "/api/profiles/{}",
            a.user["handle"].as_str().unwrap()
        ))
        .1;
    assert_eq!(
        (
            profile["public_items"].as_i64(),
            profile["likes_received"].as_i64()
        ),
        (Some(1), Some(1))
    );
    // B remixes with a new prompt: B's own generation, same settings.
    let (st, r) = b.post(
        &format!("/api/feed/{id}/remix"),
        json!({"prompt": "a secret, remixed"}),
    );
    assert_eq!(st, 202, "{r}");
    let rg = b.wait(r["id"].as_str().unwrap());
    let rjob = b
        .get(&format!("/api/jobs/{}", r["job_id"].as_str().unwrap()))
        .1;
    assert_eq!(rjob["ref_id"], r["id"]);
    let mine = b
        .get(&format!("/api/feed/{}", r["job_id"].as_str().unwrap()))
        .1;
    assert_eq!(
        (mine["remix_of"].as_str(), mine["is_public"].as_bool()),
        (Some(job.as_str()), Some(false))
    );
    assert_eq!(
        (
            rg["status"].as_str(),
            rg["remix_of"].as_str(),
            rg["seed"].as_i64()
        ),
        (Some("completed"), Some(id.as_str()), Some(9))
    );
    assert_eq!(rg["prompt"], "a secret, remixed");
    assert_eq!(
        a.bytes(rg["images"][0]["url"].as_str().unwrap()).0,
        404,
        "A sees B's private remix"
    );
    // A deletes it: gone from the feed, its files gone.
    assert_eq!(
        a.send(
            "DELETE",
            &format!("/api/generate/image/{id}"),
            Value::Null,
            &[]
        )
        .0,
        204
    );
    assert_eq!(b.get(&format!("/api/feed/{id}")).0, 404);
    assert_eq!(b.get(&format!("/api/feed/{job}")).0, 404);
    assert_eq!(b.bytes(&url).0, 404);
    assert_eq!(b.bytes(&output).0, 404);
    assert!(b.get("/api/feed").1["items"].as_array().unwrap().is_empty());
    assert_eq!(a.get(&format!("/api/generate/image/{id}")).0, 404);
    // Profile edits.
    let (st, p) = a.send(
        "PUT",
        "/api/user/profile",
        json!({"bio": "I draw", "handle": "ann_draws"}),
        &[],
    );
    assert_eq!(
        (st, p["bio"].as_str(), p["handle"].as_str()),
        (200, Some("I draw"), Some("ann_draws"))
    );
    let (st, e) = b.send(
        "PUT",
        "/api/user/profile",
        json!({"handle": "ann_draws"}),
        &[],
    );
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
    let (st, e) = b.send("PUT", "/api/user/profile", json!({"handle": "../x"}), &[]);
    assert_eq!(
        (
            st,
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("handle")
        ),
        (422, true)
    );
}

#[test]
fn isolation_feed_likes_remix_on_sqlite() {
    isolation_feed_likes_remix(&server(None));
}

#[test]
fn isolation_feed_likes_remix_on_postgres() {
    on_postgres(isolation_feed_likes_remix);
}
