//! A canvas session's input: the parameters a message sets (checked, applied over the
//! session's), its canvas (header checked, decoded only when rendered), and the JPEG a
//! rendered frame goes out as.

use super::*;

/// The largest side a frame may have.
pub(crate) const MAX_SIDE: u32 = 2048;

pub(crate) fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new("invalid-input", message)
}

/// Checks a client's parameters and applies them over `base`.
pub(crate) fn apply(base: &Settings, p: &Params) -> Result<Settings, ProtocolError> {
    let mut s = base.clone();
    if let Some(prompt) = &p.prompt {
        if prompt.chars().count() > 4000 {
            return Err(invalid("prompt: must be at most 4000 characters"));
        }
        s.prompt = prompt.trim().to_string();
    }
    if let Some(v) = p.strength {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err(invalid("strength: must be above 0 and at most 1"));
        }
        s.strength = v;
    }
    match p.seed {
        None => {}
        Some(-1) => s.seed = rand::random::<u32>() as u64,
        Some(v) if (0..=u32::MAX as i64).contains(&v) => s.seed = v as u64,
        Some(_) => return Err(invalid("seed: must be -1 (random) or from 0 to 4294967295")),
    }
    if let Some(m) = &p.model {
        if m.len() > 200 {
            return Err(invalid("model: must be a model id (see GET /api/models)"));
        }
        s.model = Some(m.clone()).filter(|m| !m.is_empty());
    }
    match (p.width, p.height) {
        (None, None) => {}
        (Some(w), Some(h)) => {
            for (name, v) in [("width", w), ("height", h)] {
                if !(8..=2048).contains(&v) || v % 8 != 0 {
                    return Err(invalid(format!(
                        "{name}: must be a multiple of 8 from 8 to 2048"
                    )));
                }
            }
            s.size = Some((w, h));
        }
        _ => return Err(invalid("width, height: give both or neither")),
    }
    if let Some(list) = &p.loras {
        if list.len() > crate::tasks::lora::MAX_LORAS {
            return Err(invalid(format!(
                "loras: at most {} LoRAs",
                crate::tasks::lora::MAX_LORAS
            )));
        }
        for l in list {
            if l.id.is_empty() || l.id.len() > 200 {
                return Err(invalid(
                    "loras: each needs a model id (see GET /api/models?capability=lora)",
                ));
            }
            if !(l.weight.is_finite() && (-5.0..=5.0).contains(&l.weight)) {
                return Err(invalid(format!(
                    "loras: {:?}: weights must be from -5 to 5",
                    l.id
                )));
            }
        }
        s.loras = list
            .iter()
            .map(|l| crate::tasks::lora::LoraRef {
                id: l.id.clone(),
                weight: l.weight,
                text_weight: None,
            })
            .collect();
    }
    if let Some(v) = p.steps {
        if !(1..=MAX_STEPS as u32).contains(&v) {
            return Err(invalid(format!("steps: must be from 1 to {MAX_STEPS}")));
        }
        s.steps = v as usize;
    }
    Ok(s)
}

pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Applies one message to a session: new settings and/or canvas, queued as its latest
/// input when anything changed.
pub(crate) fn handle(hub: &Hub, s: &Session, bytes: &[u8]) -> Result<(), ProtocolError> {
    let msg = protocol::parse(bytes)?;
    let (params, canvas, frame_id, is_generate) = match msg {
        ClientMessage::Generate(g) => (g.params, g.canvas_data, g.frame_id, true),
        ClientMessage::UpdateParams(p) => (p, None, None, false),
    };
    // Absent: the last canvas stays; empty: text only from now on.
    let canvas = match canvas {
        Some(b) if !b.is_empty() => {
            let b = b.into_vec();
            if b.len() as u64 > hub.config.max_frame_bytes {
                return Err(ProtocolError::new(
                    "too-large",
                    format!(
                        "canvas_data: {} bytes, more than the {} allowed",
                        b.len(),
                        hub.config.max_frame_bytes
                    ),
                ));
            }
            check_canvas_header(&b, hub.config.max_frame_pixels)?;
            Some(Some(Canvas {
                hash: hash_bytes(&b),
                bytes: Arc::new(b),
            }))
        }
        Some(_) => Some(None),
        None => None,
    };
    let mut st = s.state.lock().unwrap();
    let base = st.settings.clone().unwrap_or_else(|| Settings {
        prompt: String::new(),
        strength: 0.5,
        seed: rand::random::<u32>() as u64,
        model: None,
        size: None,
        steps: 1,
        loras: Vec::new(),
    });
    let settings = apply(&base, &params)?;
    st.settings = Some(settings.clone());
    if let Some(c) = canvas {
        st.canvas = c;
    }
    let job = Job {
        settings,
        canvas: st.canvas.clone(),
        input_frame_id: frame_id,
        received: Instant::now(),
    };
    let key = job.key();
    let changed = match &st.pending {
        Some(p) => p.key() != key || is_generate,
        None => st.last_key.as_ref() != Some(&key),
    };
    if changed {
        if st.pending.replace(job).is_some() {
            st.dropped += 1;
        }
        drop(st);
        hub.wake();
    }
    Ok(())
}
