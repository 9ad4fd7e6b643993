//! Images from clients (uploads, canvas frames): the format sniffed from the bytes (never
//! the name or the Content-Type), the pixel count read from the header before anything is
//! decoded, so a decompression bomb is refused cheaply.

use crate::error::{CodedError, ErrorCode};

/// The formats accepted, from their magic bytes: MIME type and decoder.
pub fn sniff(bytes: &[u8]) -> Option<(&'static str, image::ImageFormat)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", image::ImageFormat::Png))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", image::ImageFormat::Jpeg))
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("image/webp", image::ImageFormat::WebP))
    } else {
        None
    }
}

/// The size from the header, refused when empty or over `max_pixels`; errors name `field`.
pub fn check_header(
    bytes: &[u8],
    max_pixels: u64,
    field: &str,
) -> Result<(u32, u32, image::ImageFormat), CodedError> {
    let (_, format) = sniff(bytes).ok_or_else(|| {
        CodedError::new(
            ErrorCode::UnsupportedMediaType,
            format!("{field}: not a PNG, JPEG or WebP image"),
        )
    })?;
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| {
            CodedError::new(
                ErrorCode::InvalidInput,
                format!("{field}: unreadable image ({e})"),
            )
        })?;
    if w == 0 || h == 0 {
        return Err(CodedError::new(
            ErrorCode::InvalidInput,
            format!("{field}: the image is empty"),
        ));
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(CodedError::new(
            ErrorCode::TooLarge,
            format!("{field}: {w}x{h} is more than the {max_pixels} pixels allowed"),
        ));
    }
    Ok((w, h, format))
}

/// Decodes within limits: the header first (size), then the pixels with the decoder's own
/// allocation limit as a second guard.
pub fn decode_limited(
    bytes: &[u8],
    max_pixels: u64,
    field: &str,
) -> Result<image::DynamicImage, CodedError> {
    let (w, h, format) = check_header(bytes, max_pixels, field)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| {
        CodedError::new(
            ErrorCode::InvalidInput,
            format!("{field}: cannot decode the image ({e})"),
        )
    })
}
