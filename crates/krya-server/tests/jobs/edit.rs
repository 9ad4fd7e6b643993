//! The edit kind through `POST /api/edit/image` with the tiny SD 1.5 model: inpainting a
//! painted mask leaves every pixel the feathered mask does not reach as it was (exactly)
//! and repaints inside it; outpainting to 16:9 gives the wider canvas; restyling and an
//! instruction (the tiny InstructPix2Pix model) re-draw the image at its size; each output's
//! parent is the image it edits, so versions chain (an edit of an edit); bad requests get
//! a 422 naming the field (a mask of another size, an empty one, no mask, no extension).

use super::*;
use krya_engine::pipelines::edit::mask;

fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A file of the engine's golden references.
fn golden(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden")
        .join(rel)
}

/// Submits an edit, waits for it to complete, and reads its output image.
fn edited(c: &Client, body: Value) -> (Value, image::DynamicImage) {
    let (st, j) = c.post("/api/edit/image", body.clone());
    assert_eq!(st, 202, "{body}: {j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    let (_, bytes) = c.bytes(&format!(
        "/api/assets/{}",
        done["outputs"][0]["id"].as_str().unwrap()
    ));
    (done, image::load_from_memory(&bytes).unwrap())
}

fn upload_png(c: &Client, img: image::DynamicImage) -> String {
    let (st, a) = c.upload(png(img), "image/png");
    assert_eq!(st, 201, "{a}");
    a["id"].as_str().unwrap().to_string()
}

fn edit(s: &Server) {
    let c = Client::register(&s.base, "edit@example.com");
    let (input, input_png) = upload(&c); // 64×48
    let original = image::load_from_memory(&input_png).unwrap().into_rgb8();
    let painted = image::GrayImage::from_fn(64, 48, |x, y| {
        image::Luma([if (20..40).contains(&x) && (16..32).contains(&y) {
            255
        } else {
            0
        }])
    });
    let mask_id = upload_png(&c, image::DynamicImage::ImageLuma8(painted.clone()));

    let before = c.credits();
    let (st, j) = c.post(
        "/api/edit/image",
        json!({"image": input, "operation": "inpaint", "mask": mask_id, "prompt": "a fox",
               "seed": 3, "steps": 2, "grow": 2, "blur": 1.5}),
    );
    assert_eq!(st, 202, "{j}");
    assert_eq!(j["kind"], "edit");
    let id = j["id"].as_str().unwrap();
    let done = c.wait_until(&format!("/api/edit/{id}"), |j| {
        ["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap())
    });
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!((done["cost"].as_i64(), c.credits()), (Some(1), before - 1));
    assert_eq!(
        done["params"]["model"], "tiny",
        "the default model is recorded"
    );
    let out = &done["outputs"][0];
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(out["parent_id"], input.as_str());
    let inpainted_id = out["id"].as_str().unwrap().to_string();
    let (_, bytes) = c.bytes(&format!("/api/assets/{inpainted_id}"));
    let got = image::load_from_memory(&bytes).unwrap().into_rgb8();
    let soft = mask::feather(&mask::grow(&mask::hard(&painted), 2), 1.5);
    let (mut kept, mut changed) = (0, 0);
    for (x, y, p) in got.enumerate_pixels() {
        match soft.get_pixel(x, y).0[0] {
            0 => {
                assert_eq!(
                    p,
                    original.get_pixel(x, y),
                    "({x}, {y}) is outside the mask"
                );
                kept += 1;
            }
            255 => changed += (p != original.get_pixel(x, y)) as usize,
            _ => {}
        }
    }
    assert!(
        kept > 64 * 48 / 2 && changed > 100,
        "{kept} kept, {changed} changed"
    );

    // Outpaint the new version to 16:9: a version of a version.
    let (st, j) = c.post(
        "/api/edit/image",
        json!({"image": inpainted_id, "operation": "outpaint", "aspect": "16:9", "steps": 2}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    let out = &done["outputs"][0];
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(86), Some(48))
    );
    assert_eq!(out["parent_id"], inpainted_id.as_str());
    // The versions: original → inpainted → outpainted; the original's children.
    let outpainted_id = out["id"].as_str().unwrap();
    let (st, v) = c.get(&format!("/api/assets/{outpainted_id}/versions"));
    assert_eq!(st, 200, "{v}");
    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&v["versions"]),
        [
            input.clone(),
            inpainted_id.clone(),
            outpainted_id.to_string()
        ]
    );
    assert_eq!(ids(&v["children"]), Vec::<String>::new());
    let (_, v) = c.get(&format!("/api/assets/{input}/versions"));
    assert_eq!(ids(&v["versions"]), [input.clone()]);
    assert_eq!(ids(&v["children"]), [inpainted_id.clone()]);
    let stranger = Client::register(&s.base, "versions@example.com");
    let (st, _) = stranger.get(&format!("/api/assets/{outpainted_id}/versions"));
    assert_eq!(st, 404);

    // Restyle with a style preset, and an instruction with the InstructPix2Pix model (the
    // only one listed for instructions, and not for inpainting): the image's own size.
    let (_, styles) = c.get("/api/styles");
    let style = styles["styles"][1]["id"].as_str().unwrap().to_string();
    let listed = |cap: &str| -> Vec<String> {
        let (_, m) = c.get(&format!("/api/models?capability={cap}"));
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["installed"] == true)
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed("instruct"), ["ip2p"]);
    assert_eq!(listed("inpaint"), ["tiny"]);
    for body in [
        json!({"image": input, "operation": "restyle", "style": style, "strength": 0.5, "steps": 2}),
        json!({"image": input, "operation": "instruct", "prompt": "make it winter", "image_guidance": 1.5, "steps": 2}),
    ] {
        let (st, j) = c.post("/api/edit/image", body.clone());
        assert_eq!(st, 202, "{body}: {j}");
        let done = c.wait_job(j["id"].as_str().unwrap());
        assert_eq!(done["status"], "completed", "{done}");
        let out = &done["outputs"][0];
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(64), Some(48))
        );
        assert_eq!(out["parent_id"], input.as_str());
        let (_, bytes) = c.bytes(&format!("/api/assets/{}", out["id"].as_str().unwrap()));
        let got = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert_ne!(got.as_raw(), original.as_raw(), "{body}: re-drawn");
    }
    let (_, j) = c.get("/api/jobs?kind=edit");
    assert_eq!(j["items"][0]["params"]["model"], "ip2p", "{j}");

    // Erase: the masked part repainted from nothing but its surroundings; outside the
    // (more grown) mask the image is as it was.
    let (_, got) = edited(
        &c,
        json!({"image": input, "operation": "erase", "mask": mask_id, "model": "tiny", "steps": 2}),
    );
    let got = got.into_rgb8();
    let soft = mask::feather(&mask::grow(&mask::hard(&painted), 12), 4.0);
    for (x, y, p) in got.enumerate_pixels() {
        if soft.get_pixel(x, y).0[0] == 0 {
            assert_eq!(p, original.get_pixel(x, y), "erase changed ({x}, {y})");
        }
    }

    // Erase with LaMa (the installed object-removal model is the default): the engine's
    // fill for the mask grown by 4, every other pixel exactly the input's.
    assert_eq!(listed("erase"), ["lama"]);
    let (done, got) = edited(
        &c,
        json!({"image": input, "operation": "erase", "mask": mask_id}),
    );
    assert_eq!(done["params"]["model"], "lama");
    let got = got.into_rgb8();
    let eraser =
        krya_engine::pipelines::erase::Eraser::load(&golden("erase/lama.safetensors")).unwrap();
    let want = eraser
        .erase(&original, &mask::grow(&mask::hard(&painted), 4))
        .unwrap();
    assert_eq!(got.as_raw(), want.as_raw(), "the engine's erase");
    assert_ne!(got.as_raw(), original.as_raw());

    // Remove the background: a PNG whose alpha is the engine's matte; replace it with an
    // uploaded picture (the subject laid over it by the matte) or a painted one (the
    // subject's pixels kept).
    assert_eq!(listed("matte"), ["isnet"]);
    let matter =
        krya_engine::pipelines::matte::Matter::load(&golden("matte/isnet.safetensors")).unwrap();
    let matte = matter.matte(&original).unwrap();
    let (done, cut) = edited(
        &c,
        json!({"image": input, "operation": "remove_background"}),
    );
    assert_eq!(done["params"]["matte_model"], "isnet");
    assert_eq!(done["outputs"][0]["parent_id"], input.as_str());
    assert!(cut.color().has_alpha(), "a PNG with alpha");
    let cut = cut.into_rgba8();
    assert_eq!(
        cut,
        krya_engine::pipelines::matte::cut_out(&original, &matte),
        "the engine's cut-out"
    );
    let backdrop =
        image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, 40, y as u8 * 8]));
    let backdrop_id = upload_png(&c, image::DynamicImage::ImageRgb8(backdrop.clone()));
    let (_, got) = edited(
        &c,
        json!({"image": input, "operation": "replace_background", "background": backdrop_id}),
    );
    let got = got.into_rgb8();
    // 32×32 covers 64×48 at 2× (64×64), cropped to the middle 48 rows.
    let covered = image::imageops::crop_imm(
        &image::imageops::resize(&backdrop, 64, 64, image::imageops::FilterType::Triangle),
        0,
        8,
        64,
        48,
    )
    .to_image();
    assert_eq!(
        got,
        krya_engine::pipelines::matte::composite(&original, &matte, &covered)
    );
    let (_, got) = edited(
        &c,
        json!({"image": input, "operation": "replace_background", "prompt": "a beach",
               "model": "tiny", "steps": 2}),
    );
    let got = got.into_rgb8();
    for (x, y, a) in matte.enumerate_pixels() {
        if a.0[0] == 255 {
            assert_eq!(
                got.get_pixel(x, y),
                original.get_pixel(x, y),
                "subject at ({x}, {y})"
            );
        }
    }

    // Bad requests, each naming its field.
    let small = upload_png(
        &c,
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(32, 32, image::Luma([255]))),
    );
    let empty = upload_png(
        &c,
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 48, image::Luma([90]))),
    );
    for (body, field) in [
        (
            json!({"image": input, "operation": "inpaint", "mask": small}),
            "mask",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": empty}),
            "mask",
        ),
        (json!({"image": input, "operation": "inpaint"}), "mask"),
        (json!({"image": input, "operation": "outpaint"}), "extend"),
        (
            json!({"image": input, "operation": "outpaint", "aspect": "wide"}),
            "aspect",
        ),
        (
            json!({"image": input, "operation": "outpaint", "aspect": "4:3"}),
            "aspect",
        ),
        (
            json!({"image": input, "operation": "outpaint", "extend": {"left": 9000}}),
            "extend",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": mask_id, "extend": {"left": 8}}),
            "extend",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": mask_id, "strength": 2}),
            "strength",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": mask_id, "model": "nope"}),
            "model",
        ),
        (json!({"image": input, "operation": "paint"}), "params"),
        (
            json!({"image": "nope", "operation": "outpaint", "aspect": "1:1"}),
            "image",
        ),
        (json!({"image": input, "operation": "instruct"}), "prompt"),
        (json!({"image": input, "operation": "erase"}), "mask"),
        (
            json!({"image": input, "operation": "erase", "mask": mask_id, "prompt": "a cat"}),
            "prompt",
        ),
        (
            json!({"image": input, "operation": "restyle", "strength": 0.2, "steps": 2}),
            "strength",
        ),
        (
            json!({"image": input, "operation": "instruct", "prompt": "snow", "model": "tiny"}),
            "model",
        ),
        (
            json!({"image": input, "operation": "instruct", "prompt": "snow", "strength": 0.5}),
            "strength",
        ),
        (
            json!({"image": input, "operation": "restyle", "image_guidance": 2}),
            "image_guidance",
        ),
        (
            json!({"image": input, "operation": "restyle", "style": "nope"}),
            "style",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": mask_id, "style": style}),
            "style",
        ),
        (
            json!({"image": input, "operation": "outpaint", "aspect": "1:1", "mask": mask_id}),
            "mask",
        ),
        (
            json!({"image": input, "operation": "erase", "mask": mask_id, "steps": 3}),
            "steps",
        ),
        (
            json!({"image": input, "operation": "erase", "mask": mask_id, "model": "ip2p"}),
            "model",
        ),
        (
            json!({"image": input, "operation": "replace_background"}),
            "background",
        ),
        (
            json!({"image": input, "operation": "replace_background", "background": backdrop_id,
                   "prompt": "a beach"}),
            "background",
        ),
        (
            json!({"image": input, "operation": "replace_background", "background": backdrop_id,
                   "model": "tiny"}),
            "model",
        ),
        (
            json!({"image": input, "operation": "replace_background", "background": "nope"}),
            "background",
        ),
        (
            json!({"image": input, "operation": "remove_background", "mask": mask_id}),
            "mask",
        ),
        (
            json!({"image": input, "operation": "remove_background", "matte_model": "sam"}),
            "matte_model",
        ),
        (
            json!({"image": input, "operation": "inpaint", "mask": mask_id, "matte_model": "isnet"}),
            "matte_model",
        ),
    ] {
        let (st, e) = c.post("/api/edit/image", body.clone());
        assert_eq!(st, 422, "{body}: {e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{body}: {m}");
    }
    // Click to segment: the mask is the engine's for the same image and click, stored as a
    // new image of the caller's; the second click reuses the image's embedding.
    assert_eq!(listed("segment"), ["sam"]);
    let (st, r) = c.post(
        "/api/segment",
        json!({"image": input, "points": [{"x": 20, "y": 15}]}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["embedded"].as_bool(), r["model"].as_str()),
        (Some(true), Some("sam"))
    );
    let mask = &r["mask"];
    assert_eq!(
        (mask["width"].as_u64(), mask["height"].as_u64()),
        (Some(64), Some(48))
    );
    let (_, bytes) = c.bytes(&format!("/api/assets/{}", mask["id"].as_str().unwrap()));
    let got = image::load_from_memory(&bytes).unwrap().into_luma8();
    let seg = krya_engine::pipelines::segment::Segmenter::load(std::path::Path::new(&format!(
        "{}/../krya-engine/tests/golden/segment/sam_original.safetensors",
        env!("CARGO_MANIFEST_DIR")
    )))
    .unwrap();
    let click = krya_engine::pipelines::segment::sam::Point {
        x: 20.0,
        y: 15.0,
        positive: true,
    };
    let want = seg
        .segment(&seg.embed(&original).unwrap(), &[click], None)
        .unwrap();
    assert_eq!(got.as_raw(), want.mask.as_raw(), "the engine's mask");
    assert_eq!(r["score"].as_f64().unwrap() as f32, want.score);
    let (st, r) = c.post(
        "/api/segment",
        json!({"image": input, "points": [{"x": 20, "y": 15}, {"x": 50, "y": 40, "label": 0}],
               "box": [2, 2, 60, 44]}),
    );
    assert_eq!((st, r["embedded"].as_bool()), (200, Some(false)), "{r}");
    for (body, field) in [
        (json!({"image": input}), "points"),
        (
            json!({"image": input, "points": [{"x": 1, "y": 1, "label": 2}]}),
            "points",
        ),
        (
            json!({"image": input, "points": [{"x": 90, "y": 1}]}),
            "points",
        ),
        (json!({"image": input, "box": [30, 2, 10, 20]}), "box"),
        (
            json!({"image": input, "points": [{"x": 1, "y": 1}], "model": "tiny"}),
            "model",
        ),
        (
            json!({"image": "nope", "points": [{"x": 1, "y": 1}]}),
            "image",
        ),
        (
            json!({"image": input, "clicks": []}),
            "Failed to deserialize",
        ),
    ] {
        let (st, e) = c.post("/api/segment", body.clone());
        assert_eq!(st, 422, "{body}: {e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{body}: {m}");
    }

    // Another user's image is not the caller's to edit.
    let other = Client::register(&s.base, "other-edit@example.com");
    let (st, _) = other.post(
        "/api/edit/image",
        json!({"image": input, "operation": "outpaint", "aspect": "1:1"}),
    );
    assert_eq!(st, 422);
    let (st, _) = other.post(
        "/api/segment",
        json!({"image": input, "points": [{"x": 1, "y": 1}]}),
    );
    assert_eq!(st, 422);
}

#[test]
fn edit_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": format!("{}/../krya-engine/tests/golden/sd15", env!("CARGO_MANIFEST_DIR")),
               "ip2p": format!("{}/../krya-engine/tests/golden/pix2pix", env!("CARGO_MANIFEST_DIR")),
               "sam": format!("{}/../krya-engine/tests/golden/segment/sam_original.safetensors", env!("CARGO_MANIFEST_DIR")),
               "lama": golden("erase/lama.safetensors"),
               "isnet": golden("matte/isnet.safetensors")})
        .to_string(),
    )
    .unwrap();
    let s = start(config(dir.path()), dir);
    edit(&s);
}
