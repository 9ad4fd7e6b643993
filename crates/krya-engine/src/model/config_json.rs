//! Config files as Python writes them. `json.dumps` writes non-finite floats as the bare
//! words `NaN`, `Infinity` and `-Infinity` (diffusers puts `"lambda_min_clipped": -Infinity`
//! in every `DPMSolverMultistepScheduler` config it saves), which strict JSON, and so
//! serde_json, refuses. They are read here as the largest finite `f64` of that sign (a
//! bound of ±Infinity acts the same on every finite number) and `NaN` as `null`.

use serde::de::DeserializeOwned;

/// `f64::MAX` as JSON; serde_json reads it back exactly.
const HUGE: &str = "1.7976931348623157e308";

/// Parses a config that Python's `json` module may have written.
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        // Only rewrite (and pay for the copy) when the strict parse failed.
        Err(e) => match finite(text) {
            Some(fixed) => serde_json::from_str(&fixed),
            None => Err(e),
        },
    }
}

/// `text` with the non-finite literals outside strings replaced, or `None` if it has none.
fn finite(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut changed = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let word = [
                ("-Infinity", format!("-{HUGE}")),
                ("Infinity", HUGE.to_string()),
                ("NaN", "null".to_string()),
            ]
            .into_iter()
            .find(|(w, _)| rest.starts_with(w) && !continues_word(&rest[w.len()..]));
            if let Some((w, with)) = word {
                out.push_str(&with);
                rest = &rest[w.len()..];
                changed = true;
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

fn continues_word(rest: &str) -> bool {
    rest.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::from_str;

    #[test]
    fn python_non_finite_numbers_load() {
        // As diffusers 0.42 writes a DPMSolverMultistepScheduler config.
        let text = r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "lambda_min_clipped": -Infinity,
  "upper": Infinity,
  "nan": NaN,
  "list": [1.0, -Infinity, NaN],
  "text": "NaN and -Infinity stay \" Infinity in strings"
}"#;
        assert!(serde_json::from_str::<Value>(text).is_err());
        let v: Value = from_str(text).unwrap();
        assert_eq!(v["lambda_min_clipped"].as_f64(), Some(f64::MIN));
        assert_eq!(v["upper"].as_f64(), Some(f64::MAX));
        assert!(v["nan"].is_null());
        assert_eq!(v["list"][1].as_f64(), Some(f64::MIN));
        assert!(v["list"][2].is_null());
        assert_eq!(
            v["text"].as_str(),
            Some("NaN and -Infinity stay \" Infinity in strings")
        );
    }

    #[test]
    fn other_errors_are_kept() {
        let e = from_str::<Value>("{\"a\": Infinityx}").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(from_str::<Value>("{\"a\": 1,}").is_err());
    }
}
