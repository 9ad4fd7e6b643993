//! A1111's extra-network tags in prompts: `<lora:NAME>`, `<lora:NAME:WEIGHT>`,
//! `<lora:NAME:TE:UNET>`, named `te=`/`unet=` arguments, and `<lyco:…>` as the same
//! (AUTOMATIC1111 `modules/extra_networks.py` `parse_prompt`, the Lora extension's
//! `te`/`unet` multipliers: unet defaults to te, te to 1). Tags leave the prompt.

use std::sync::OnceLock;

use regex::Regex;

use super::Strength;
use crate::{EngineError, Result};

/// One `<lora:…>` tag.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLora {
    pub name: String,
    pub strength: Strength,
}

/// The prompt without its LoRA tags, and the tags in order. A malformed weight is an
/// error; other extra networks (`<hypernet:…>`) are left in the prompt.
pub fn extract(prompt: &str) -> Result<(String, Vec<PromptLora>)> {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"<(lora|lyco):([^>]+)>").unwrap());
    let mut loras = Vec::new();
    for c in tag.captures_iter(prompt) {
        let mut args = c[2].split(':');
        let name = args.next().unwrap_or("").trim().to_string();
        if name.is_empty() {
            return Err(EngineError::InvalidInput(format!(
                "{:?}: a LoRA tag needs a name",
                &c[0]
            )));
        }
        let (mut te, mut unet) = (None, None);
        let mut positional = 0;
        for arg in args {
            let number = |s: &str| {
                s.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| {
                        EngineError::InvalidInput(format!("{:?}: {s:?} is not a weight", &c[0]))
                    })
            };
            match arg.split_once('=') {
                Some(("te", v)) => te = Some(number(v)?),
                Some(("unet", v)) => unet = Some(number(v)?),
                Some(_) => {} // `dyn=` and others this engine has no use for
                None => {
                    match positional {
                        0 => te = Some(number(arg)?),
                        1 => unet = Some(number(arg)?),
                        _ => {}
                    }
                    positional += 1;
                }
            }
        }
        let te = te.unwrap_or(1.0);
        loras.push(PromptLora {
            name,
            strength: Strength {
                text: te,
                unet: unet.unwrap_or(te),
            },
        });
    }
    if loras.is_empty() {
        return Ok((prompt.to_string(), loras));
    }
    // CLIP's tokenizer splits on whitespace, so the spaces a tag leaves do not matter;
    // they are collapsed for the image's recorded parameters.
    let cleaned = tag
        .replace_all(prompt, " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Ok((cleaned, loras))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_leave_the_prompt_with_their_weights() {
        let (p, l) =
            extract("a cat <lora:pixel art:0.8>, red sofa<lyco:soft:0.5:1.2> <lora:x>").unwrap();
        assert_eq!(p, "a cat , red sofa");
        assert_eq!(
            l,
            vec![
                PromptLora {
                    name: "pixel art".into(),
                    strength: Strength::new(0.8)
                },
                PromptLora {
                    name: "soft".into(),
                    strength: Strength {
                        text: 0.5,
                        unet: 1.2
                    }
                },
                PromptLora {
                    name: "x".into(),
                    strength: Strength::new(1.0)
                },
            ]
        );
        let (_, l) = extract("<lora:a:unet=0.3:te=0>").unwrap();
        assert_eq!(
            l[0].strength,
            Strength {
                text: 0.0,
                unet: 0.3
            }
        );
        assert_eq!(
            extract("plain (prompt:1.2)").unwrap(),
            ("plain (prompt:1.2)".into(), vec![])
        );
        assert!(extract("<lora:a:lots>").is_err());
        assert!(extract("<lora::1>").is_err());
    }
}
