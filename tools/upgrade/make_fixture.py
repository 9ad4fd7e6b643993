#!/usr/bin/env python3
"""Makes a data directory with a released `krya` binary, for the upgrade test
(crates/krya-server/tests/upgrade.rs): accounts, generations (completed, image-to-image,
failed), an upload, a public image with a like, credits spent and refunded.

    git worktree add /tmp/old <release commit>
    (cd /tmp/old && KRYA_SKIP_WEB=1 cargo build -p krya)
    python3 tools/upgrade/make_fixture.py /tmp/old/target/debug/krya \
        crates/krya-server/tests/fixtures/data-aa8eba6

It writes the data directory (krya.db after a WAL checkpoint, blobs/) and manifest.json:
what the test must find there after the upgrade.
"""
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "crates/krya-engine/tests/golden"


def call(base, method, path, token=None, body=None, raw=None, ctype="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", ctype)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait(base, token, gid):
    for _ in range(600):
        _, g = call(base, "GET", f"/api/generate/image/{gid}", token)
        if g["status"] in ("completed", "failed", "cancelled"):
            return g
        time.sleep(0.1)
    raise SystemExit(f"generation {gid} did not end")


def main(krya, out):
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    broken = out / "not-a-model"
    broken.mkdir()
    def serve(**env):
        p = subprocess.Popen(
            [krya, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(out),
             "--model", f"tiny={GOLDEN / 'turbo'}", "--model", f"broken={broken}"],
            stdout=subprocess.PIPE, text=True, env={**__import__("os").environ, **env})
        return p, p.stdout.readline().strip().removeprefix("Krya listening on ")

    server, base = serve()
    try:
        users = {}
        for email, name in [("ann@example.com", "Ann"), ("bob@example.com", "Bob")]:
            st, r = call(base, "POST", "/api/auth/register", body={"email": email, "password": "password123", "name": name})
            assert st == 201, r
            users[email] = r["access_token"]
        ann, bob = users["ann@example.com"], users["bob@example.com"]
        st, asset = call(base, "POST", "/api/assets", ann, raw=(GOLDEN / "init.png").read_bytes(), ctype="image/png")
        assert st == 201, asset
        gens = []
        for body in [
            {"prompt": "a red fox in the snow", "model": "tiny", "steps": 2, "seed": 5, "batch_size": 2, "is_public": True},
            {"prompt": "a watercolor lake", "model": "tiny", "steps": 2, "seed": 6, "init_image": asset["id"], "strength": 0.6},
            {"prompt": "this fails", "model": "broken"},
        ]:
            st, r = call(base, "POST", "/api/generate/image", ann, body=body)
            assert st == 202, r
            gens.append(wait(base, ann, r["id"]))
        st, r = call(base, "POST", f"/api/generate/image", bob, body={"prompt": "bob's boat", "model": "tiny", "steps": 1, "seed": 9})
        assert st == 202, r
        gens.append(wait(base, bob, r["id"]))
        st, r = call(base, "POST", f"/api/feed/{gens[0]['id']}/like", bob)
        assert st == 200, r
        # A live-canvas capture: a generation without a job in this release.
        st, capture = call(base, "POST", "/api/realtime/captures", ann,
                           body={"image": asset["id"], "prompt": "saved from the canvas", "model": "tiny", "seed": 3})
        assert st == 201, capture
    finally:
        server.terminate()
        server.wait()
    # Two generations left pending (no jobs run in this server): the upgraded server runs
    # them, one to completion and one to failure (refunded).
    server, base = serve(KRYA__JOBS__IN_PROCESS="false")
    try:
        pending = []
        for token, body in [(bob, {"prompt": "queued before the upgrade", "model": "tiny", "steps": 1, "seed": 4}),
                            (ann, {"prompt": "fails after the upgrade", "model": "broken", "width": 1536, "height": 1024})]:
            st, r = call(base, "POST", "/api/generate/image", token, body=body)
            assert st == 202, r
            _, g = call(base, "GET", f"/api/generate/image/{r['id']}", token)
            assert g["status"] == "pending", g
            pending.append(g)
        credits = {e: call(base, "GET", "/api/auth/me", t)[1]["credits_remaining"] for e, t in users.items()}
    finally:
        server.terminate()
        server.wait()
    db = sqlite3.connect(out / "krya.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for extra in ["krya.db-wal", "krya.db-shm"]:
        (out / extra).unlink(missing_ok=True)
    broken.rmdir()
    manifest = {
        "password": "password123",
        "credits": credits,
        "asset": asset["id"],
        "capture": capture["id"],
        "generations": [{"id": g["id"], "owner": "bob@example.com" if g["prompt"] == "bob's boat" else "ann@example.com",
                         "status": g["status"], "credits_used": g["credits_used"], "is_public": g["is_public"],
                         "images": [i["id"] for i in g["images"]], "likes_count": 1 if i == 0 else 0}
                        for i, g in enumerate(gens)],
        "pending": [{"id": g["id"], "owner": "bob@example.com" if g["model"] == "tiny" else "ann@example.com",
                     "model": g["model"], "credits_used": g["credits_used"]} for g in pending],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
