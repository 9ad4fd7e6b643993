//! A zoomable copy of a large image: levels of JPEG tiles, as Deep Zoom and OpenSeadragon
//! lay them out, so a viewer shows a 22,000-pixel output by fetching only the tiles in
//! view at the zoom it is at, never the whole bitmap.
//!
//! Level 0 is the image itself; level `l` is it halved `l` times (2×2 box averages, a side
//! of `n` pixels becoming `⌈n / 2⌉`); the last level is the first whose sides both fit in
//! one tile. Each level is cut into `tile × tile` tiles (smaller at the right and bottom
//! edges).
//!
//! [`Writer`] is fed the image's rows in order and keeps one band of `tile` rows per level
//! (at 22,000 px wide and 512-pixel tiles, 34 MB for level 0 and half as much for each
//! level after it): memory does not grow with the image's height. Tiles are written as
//! they are complete, into one file:
//!
//! ```text
//! tile bytes (JPEG), one after another
//! index: for every tile, level by level, row by row: offset u64, length u32 (LE)
//! footer (32 bytes): b"KRYAPYR1", width u32, height u32, tile u32, index offset u64,
//!                    tiles u32
//! ```
//!
//! [`Index`] reads the footer and index back (two reads at the end of the file), and says
//! where each tile is.

use std::io::Write;

use crate::{EngineError, Result};

const MAGIC: &[u8; 8] = b"KRYAPYR1";

/// Bytes of the footer.
pub const FOOTER: usize = 32;

/// The default tile side.
pub const TILE: usize = 512;

const QUALITY: u8 = 90;

/// A pyramid's shape: the image's size and the tile side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub width: usize,
    pub height: usize,
    pub tile: usize,
}

impl Shape {
    /// Its levels (at least one).
    pub fn levels(&self) -> usize {
        let mut n = 1;
        let (mut w, mut h) = (self.width, self.height);
        while w > self.tile || h > self.tile {
            (w, h) = (w.div_ceil(2), h.div_ceil(2));
            n += 1;
        }
        n
    }

    /// Level `l`'s size in pixels.
    pub fn level_size(&self, l: usize) -> (usize, usize) {
        let mut s = (self.width, self.height);
        for _ in 0..l {
            s = (s.0.div_ceil(2), s.1.div_ceil(2));
        }
        s
    }

    /// Level `l`'s tiles across and down.
    pub fn grid(&self, l: usize) -> (usize, usize) {
        let (w, h) = self.level_size(l);
        (w.div_ceil(self.tile), h.div_ceil(self.tile))
    }

    /// Tiles in all levels.
    pub fn tiles(&self) -> usize {
        (0..self.levels())
            .map(|l| {
                let (c, r) = self.grid(l);
                c * r
            })
            .sum()
    }

    /// The position of tile `(x, y)` of level `l` in the index, if there is such a tile.
    pub fn entry(&self, l: usize, x: usize, y: usize) -> Option<usize> {
        if l >= self.levels() {
            return None;
        }
        let (c, r) = self.grid(l);
        if x >= c || y >= r {
            return None;
        }
        let before: usize = (0..l)
            .map(|k| {
                let (c, r) = self.grid(k);
                c * r
            })
            .sum();
        Some(before + y * c + x)
    }
}

/// One level being built: a band of up to `tile` rows, and the row waiting for its pair.
struct Level {
    width: usize,
    height: usize,
    /// Rows of this band, RGB.
    band: Vec<u8>,
    /// Rows received so far in all.
    rows: usize,
    /// An even row kept until the odd one below it arrives, to make the next level's row.
    held: Option<Vec<u8>>,
}

/// Writes a pyramid to `out` from an image's rows, in order.
pub struct Writer<W: Write> {
    out: W,
    shape: Shape,
    levels: Vec<Level>,
    /// (offset, length) of each tile written, in index order once finished.
    index: Vec<Option<(u64, u32)>>,
    offset: u64,
    jpeg: Vec<u8>,
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::InvalidInput(format!("writing the tiles: {e}"))
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, width: usize, height: usize, tile: usize) -> Result<Self> {
        if width == 0 || height == 0 || tile < 16 {
            return Err(EngineError::InvalidInput(format!(
                "a pyramid of {width}×{height} in {tile}-pixel tiles"
            )));
        }
        let shape = Shape {
            width,
            height,
            tile,
        };
        let levels = (0..shape.levels())
            .map(|l| {
                let (width, height) = shape.level_size(l);
                Level {
                    width,
                    height,
                    band: Vec::with_capacity(width * 3 * tile.min(height)),
                    rows: 0,
                    held: None,
                }
            })
            .collect();
        Ok(Self {
            out,
            shape,
            levels,
            index: vec![None; shape.tiles()],
            offset: 0,
            jpeg: Vec::new(),
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The next row of level 0: `width` RGB pixels.
    pub fn push_row(&mut self, rgb: &[u8]) -> Result<()> {
        assert_eq!(rgb.len(), self.shape.width * 3);
        self.push(0, rgb.to_vec())
    }

    fn push(&mut self, l: usize, row: Vec<u8>) -> Result<()> {
        let (tile, last) = (self.shape.tile, l + 1 == self.levels.len());
        let level = &mut self.levels[l];
        level.band.extend_from_slice(&row);
        level.rows += 1;
        let (rows, height, width) = (level.rows, level.height, level.width);
        // The next level's row: this one averaged with the one above it, or alone when it is
        // the last of an odd height.
        let next = if !last {
            if rows % 2 == 1 && rows < height {
                level.held = Some(row);
                None
            } else {
                let above = level.held.take();
                Some(halve_rows(above.as_deref().unwrap_or(&row), &row, width))
            }
        } else {
            None
        };
        if rows % tile == 0 || rows == height {
            let band = std::mem::take(&mut self.levels[l].band);
            self.write_band(l, (rows - 1) / tile, &band)?;
            let mut band = band;
            band.clear();
            self.levels[l].band = band;
        }
        if let Some(next) = next {
            self.push(l + 1, next)?;
        }
        Ok(())
    }

    /// Cuts band `by` of level `l` into tiles and writes them.
    fn write_band(&mut self, l: usize, by: usize, band: &[u8]) -> Result<()> {
        let (width, tile) = (self.levels[l].width, self.shape.tile);
        let rows = band.len() / (width * 3);
        let mut pixels = Vec::with_capacity(tile * tile * 3);
        for bx in 0..width.div_ceil(tile) {
            let x0 = bx * tile;
            let w = tile.min(width - x0);
            pixels.clear();
            for r in 0..rows {
                let at = (r * width + x0) * 3;
                pixels.extend_from_slice(&band[at..at + w * 3]);
            }
            self.jpeg.clear();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut self.jpeg, QUALITY)
                .encode(
                    &pixels,
                    w as u32,
                    rows as u32,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| EngineError::InvalidInput(format!("encoding a tile: {e}")))?;
            self.out.write_all(&self.jpeg).map_err(io)?;
            let entry = self.shape.entry(l, bx, by).expect("a tile of the grid");
            self.index[entry] = Some((self.offset, self.jpeg.len() as u32));
            self.offset += self.jpeg.len() as u64;
        }
        Ok(())
    }

    /// Writes the index and footer once every row has come; returns the output.
    pub fn finish(mut self) -> Result<W> {
        if self.levels[0].rows != self.shape.height {
            return Err(EngineError::InvalidInput(format!(
                "the pyramid got {} of {} rows",
                self.levels[0].rows, self.shape.height
            )));
        }
        let at = self.offset;
        let mut index = Vec::with_capacity(self.index.len() * 12);
        for e in &self.index {
            let (o, n) = e.expect("every tile written once the last row came");
            index.extend_from_slice(&o.to_le_bytes());
            index.extend_from_slice(&n.to_le_bytes());
        }
        let s = self.shape;
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(MAGIC);
        for v in [s.width, s.height, s.tile] {
            footer.extend_from_slice(&(v as u32).to_le_bytes());
        }
        footer.extend_from_slice(&at.to_le_bytes());
        footer.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        self.out.write_all(&index).map_err(io)?;
        self.out.write_all(&footer).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok(self.out)
    }
}

/// Two rows of `width` RGB pixels made one of `⌈width / 2⌉`: 2×2 box averages (a last odd
/// column averaged with itself), rounded half up.
fn halve_rows(a: &[u8], b: &[u8], width: usize) -> Vec<u8> {
    let half = width.div_ceil(2);
    let mut out = Vec::with_capacity(half * 3);
    for x in 0..half {
        let (x0, x1) = (2 * x, (2 * x + 1).min(width - 1));
        for c in 0..3 {
            let sum = a[x0 * 3 + c] as u32
                + a[x1 * 3 + c] as u32
                + b[x0 * 3 + c] as u32
                + b[x1 * 3 + c] as u32;
            out.push(((sum + 2) / 4) as u8);
        }
    }
    out
}

/// Where a pyramid file's tiles are, read from its end.
#[derive(Debug, Clone)]
pub struct Index {
    pub shape: Shape,
    /// Where the index starts (the tiles are before it).
    pub offset: u64,
    entries: Vec<(u64, u32)>,
}

impl Index {
    /// The footer's shape, where the index starts and how many entries it has, from the
    /// file's last [`FOOTER`] bytes.
    pub fn footer(bytes: &[u8]) -> Result<(Shape, u64, usize)> {
        let bad = || EngineError::InvalidInput("not a tile pyramid".into());
        if bytes.len() != FOOTER || &bytes[..8] != MAGIC {
            return Err(bad());
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let shape = Shape {
            width: u32_at(8),
            height: u32_at(12),
            tile: u32_at(16),
        };
        let offset = u64::from_le_bytes(bytes[20..28].try_into().unwrap());
        let n = u32_at(28);
        if shape.width == 0 || shape.height == 0 || shape.tile < 16 || n != shape.tiles() {
            return Err(bad());
        }
        Ok((shape, offset, n))
    }

    /// The index from the footer's facts and the index's bytes (`12 × n`).
    pub fn new(shape: Shape, offset: u64, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != shape.tiles() * 12 {
            return Err(EngineError::InvalidInput(
                "a tile index of the wrong size".into(),
            ));
        }
        let entries: Vec<(u64, u32)> = bytes
            .chunks_exact(12)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u32::from_le_bytes(c[8..].try_into().unwrap()),
                )
            })
            .collect();
        if entries.iter().any(|&(o, n)| o + n as u64 > offset) {
            return Err(EngineError::InvalidInput("a tile past the index".into()));
        }
        Ok(Self {
            shape,
            offset,
            entries,
        })
    }

    /// The byte range of tile `(x, y)` of level `l`.
    pub fn tile(&self, l: usize, x: usize, y: usize) -> Option<std::ops::Range<u64>> {
        let (o, n) = self.entries[self.shape.entry(l, x, y)?];
        Some(o..o + n as u64)
    }

    /// Reads a whole pyramid file's index (tests and tools; servers read the end alone).
    pub fn read(file: &[u8]) -> Result<Self> {
        if file.len() < FOOTER {
            return Err(EngineError::InvalidInput("not a tile pyramid".into()));
        }
        let (shape, offset, n) = Self::footer(&file[file.len() - FOOTER..])?;
        let start = offset as usize;
        let end = start + n * 12;
        if end + FOOTER != file.len() {
            return Err(EngineError::InvalidInput("not a tile pyramid".into()));
        }
        Self::new(shape, offset, &file[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    [
                        (x * 255 / w) as u8,
                        (y * 255 / h) as u8,
                        ((x + y) % 64 * 4) as u8,
                    ]
                })
            })
            .collect()
    }

    fn decode(file: &[u8], index: &Index, l: usize, x: usize, y: usize) -> image::RgbImage {
        let r = index.tile(l, x, y).unwrap();
        image::load_from_memory(&file[r.start as usize..r.end as usize])
            .unwrap()
            .into_rgb8()
    }

    fn mean_abs(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.len() as f64
    }

    /// The crop `(x0, y0, w, h)` of an RGB picture `width` wide.
    fn crop(p: &[u8], width: usize, x0: usize, y0: usize, w: usize, h: usize) -> Vec<u8> {
        (y0..y0 + h)
            .flat_map(|y| p[(y * width + x0) * 3..(y * width + x0 + w) * 3].to_vec())
            .collect()
    }

    #[test]
    fn levels_halve_down_to_one_tile_and_tiles_hold_their_crops() {
        let (w, h, t) = (301, 123, 64);
        let img = picture(w, h);
        let mut wr = Writer::new(Vec::new(), w, h, t).unwrap();
        for row in img.chunks_exact(w * 3) {
            wr.push_row(row).unwrap();
        }
        let file = wr.finish().unwrap();
        let index = Index::read(&file).unwrap();
        let s = index.shape;
        // 301×123 → 151×62 → 76×31 → 38×16: the first to fit in 64.
        assert_eq!(s.levels(), 4);
        assert_eq!(s.level_size(3), (38, 16));
        assert_eq!(s.grid(0), (5, 2));
        assert_eq!(s.tiles(), 10 + 3 + 2 + 1);
        // An edge tile of level 0 is its crop, within JPEG's error.
        let tile = decode(&file, &index, 0, 4, 1);
        assert_eq!(tile.dimensions(), (301 - 256, 123 - 64));
        let want = crop(&img, w, 256, 64, 45, 59);
        assert!(mean_abs(tile.as_raw(), &want) < 3.0);
        // Level 1 is the 2×2 average.
        let half: Vec<u8> = (0..62)
            .flat_map(|y| {
                let (a, b) = (2 * y, (2 * y + 1).min(h - 1));
                halve_rows(
                    &img[a * w * 3..(a + 1) * w * 3],
                    &img[b * w * 3..(b + 1) * w * 3],
                    w,
                )
            })
            .collect();
        let tile = decode(&file, &index, 1, 2, 0);
        assert_eq!(tile.dimensions(), (151 - 128, 62));
        assert!(mean_abs(tile.as_raw(), &crop(&half, 151, 128, 0, 23, 62)) < 3.0);
        assert!(index.tile(4, 0, 0).is_none() && index.tile(0, 5, 0).is_none());
        // A truncated file, or one that is no pyramid, is refused.
        assert!(Index::read(&file[..file.len() - 1]).is_err());
        assert!(Index::read(b"not a pyramid at all, not at all..").is_err());
    }

    #[test]
    fn an_unfinished_image_is_an_error() {
        let mut wr = Writer::new(Vec::new(), 10, 10, 16).unwrap();
        wr.push_row(&[0; 30]).unwrap();
        assert!(wr.finish().is_err());
        assert!(Writer::new(Vec::new(), 0, 10, 16).is_err());
    }
}
