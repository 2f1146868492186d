//! The `image` input format: a PNG or JPEG (e.g. from a camera) turned into the model's input
//! by `preprocess = { resize, channels, scale, mean, std, layout }`.
//!
//! Decoding uses the `image` crate with only its `png` and `jpeg` features: those are what the
//! format accepts, and every other codec of the crate's defaults (TIFF, WebP, EXR, AVIF, ...)
//! would be parsing code exposed to untrusted records and build time for nothing. Decoder limits
//! bound what one record can make us allocate (a small PNG can declare a huge canvas).
//!
//! Steps, in order: decode; convert to `channels` (luma or RGB, alpha dropped) when set, else
//! the image's channel count must be the model's; resize to `resize` = [H, W] when set and the
//! size differs (bilinear, the default of PIL's and torchvision's resize), else the size must be
//! the model's; then `value = (pixel * scale - mean[c]) / std[c]` per channel; laid out as
//! `layout` (NCHW: channel planes; NHWC: interleaved). Without scale/mean/std the pixels stay
//! uint8 (0..=255), exactly what `tensor`/`raw-u8` clients send for the same image.

use std::io::Cursor;

use image::{imageops::FilterType, DynamicImage, ImageFormat};

use super::{DType, DecodeError, Tensor};

/// Largest width or height accepted; anything larger is refused before its pixels are decoded.
const MAX_SIDE: u32 = 8192;
/// Most memory one image's decoder may allocate.
const MAX_ALLOC: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// `preprocess = { ... }`, validated against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// [height, width] to resize to; `None`: the image must have the model's size.
    pub resize: Option<[u32; 2]>,
    /// 1 (luma) or 3 (RGB) to convert to; `None`: the image must have the model's channels.
    pub channels: Option<usize>,
    pub scale: f32,
    /// One value per channel (a single value is used for every channel).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { resize: None, channels: None, scale: 1.0, mean: vec![0.0], std: vec![1.0], layout: Layout::Nchw }
    }
}

impl Preprocess {
    /// Whether values are computed (then float), or the pixels go in as they are (uint8).
    pub fn normalizes(&self) -> bool {
        self.scale != 1.0 || self.mean.iter().any(|&m| m != 0.0) || self.std.iter().any(|&s| s != 1.0)
    }
}

/// (channels, height, width) of a model input laid out as `layout`: [C, H, W] (NCHW), [H, W, C]
/// (NHWC), or [H, W] (one channel). `None` when the shape is not an image of 1 or 3 channels.
pub fn image_dims(shape: &[usize], layout: Layout) -> Option<(usize, usize, usize)> {
    let (c, h, w) = match (shape, layout) {
        (&[h, w], _) => (1, h, w),
        (&[c, h, w], Layout::Nchw) => (c, h, w),
        (&[h, w, c], Layout::Nhwc) => (c, h, w),
        _ => return None,
    };
    matches!(c, 1 | 3).then_some((c, h, w))
}

/// Decodes and preprocesses one record into the model's input. `model` is the model's input
/// type (for normalized values); `model_shape` was checked by validation with [`image_dims`].
pub fn decode(value: &[u8], p: &Preprocess, model: DType, model_shape: &[usize]) -> Result<Tensor, DecodeError> {
    let Some((c, h, w)) = image_dims(model_shape, p.layout) else {
        return Err(DecodeError::new(format!("the model's input {model_shape:?} is not an image")));
    };
    let img = read(value)?;
    let have = usize::from(img.color().channel_count());
    let img = match (p.channels, have == c) {
        (Some(1), _) | (None, true) if c == 1 => DynamicImage::ImageLuma8(img.to_luma8()),
        (Some(3), _) | (None, true) if c == 3 => DynamicImage::ImageRgb8(img.to_rgb8()),
        _ => {
            return Err(DecodeError::new(format!(
                "image has {have} channels ({:?}), the model takes {c}; set preprocess.channels = {c} to convert",
                img.color()
            )))
        }
    };
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let img = if (iw, ih) == (w, h) {
        img
    } else if p.resize.is_some() {
        img.resize_exact(w as u32, h as u32, FilterType::Triangle)
    } else {
        return Err(DecodeError::new(format!(
            "image is {iw}x{ih} (width x height), the model takes {w}x{h}; set preprocess.resize = [{h}, {w}] to resize"
        )));
    };
    // Interleaved HWC bytes, one per channel.
    let hwc = img.into_bytes();
    let index = |i: usize| match p.layout {
        // Output position i of CHW order reads pixel (y, x) of channel ch.
        Layout::Nchw => {
            let (ch, rest) = (i / (h * w), i % (h * w));
            (rest * c + ch, ch)
        }
        Layout::Nhwc => (i, i % c),
    };
    let shape = model_shape.iter().map(|&d| d as u32).collect();
    let n = c * h * w;
    if !p.normalizes() {
        let data = (0..n).map(|i| hwc[index(i).0]).collect();
        return Ok(Tensor { dtype: DType::U8, shape, data });
    }
    let per = |v: &[f32], ch: usize| if v.len() == 1 { v[0] } else { v[ch] };
    let values = (0..n).map(|i| {
        let (at, ch) = index(i);
        (f32::from(hwc[at]) * p.scale - per(&p.mean, ch)) / per(&p.std, ch)
    });
    let data = match model {
        DType::F16 => values.flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect(),
        // A uint8 model with normalization is refused by validation; f32 is the safe reading.
        DType::F32 | DType::U8 => values.flat_map(f32::to_le_bytes).collect(),
    };
    let dtype = if model == DType::F16 { DType::F16 } else { DType::F32 };
    Ok(Tensor { dtype, shape, data })
}

/// PNG or JPEG bytes -> pixels, within the decoder limits.
fn read(value: &[u8]) -> Result<DynamicImage, DecodeError> {
    let format = match image::guess_format(value) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        _ => {
            let head: Vec<String> = value.iter().take(4).map(|b| format!("{b:02x}")).collect();
            return Err(DecodeError::new(format!(
                "undecodable image: not a PNG or JPEG (first bytes: {})",
                if head.is_empty() { "none".to_string() } else { head.join(" ") }
            )));
        }
    };
    let mut reader = image::io::Reader::with_format(Cursor::new(value), format);
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| DecodeError::new(format!("undecodable {format:?} image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb};

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn gray(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([(y * w + x) as u8])))
    }

    fn rgb(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| Rgb([(x + 10 * y) as u8, 100, 200])))
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        let mut out = Vec::new();
        t.extend_f32(&mut out);
        out
    }

    #[test]
    fn a_grayscale_png_is_its_pixels() {
        let t = decode(&png(gray(3, 2)), &Preprocess::default(), DType::F32, &[1, 2, 3]).unwrap();
        assert_eq!(
            (t.dtype, t.shape.as_slice(), t.data.as_slice()),
            (DType::U8, &[1u32, 2, 3][..], &[0u8, 1, 2, 3, 4, 5][..])
        );
        // [H, W] models take one channel too.
        let t = decode(&png(gray(3, 2)), &Preprocess::default(), DType::F32, &[2, 3]).unwrap();
        assert_eq!(t.data, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_jpeg_decodes_close_to_its_pixels() {
        let mut jpeg = Cursor::new(Vec::new());
        // `encode` with the color type: `encode_image` of a DynamicImage would write RGB.
        let img = gray(28, 28);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode(img.as_bytes(), 28, 28, img.color())
            .unwrap();
        let t = decode(jpeg.get_ref(), &Preprocess::default(), DType::F32, &[1, 28, 28]).unwrap();
        let want = gray(28, 28).into_bytes();
        let worst = t.data.iter().zip(&want).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
        assert!(worst <= 16, "JPEG quality 90 stays within 16 of each pixel, found {worst}");
    }

    #[test]
    fn layouts_put_channels_first_or_last() {
        let img = png(rgb(2, 1)); // pixels (0,100,200), (1,100,200)
        let t = decode(&img, &Preprocess::default(), DType::F32, &[3, 1, 2]).unwrap();
        assert_eq!(t.data, [0, 1, 100, 100, 200, 200], "NCHW: one plane per channel");
        let p = Preprocess { layout: Layout::Nhwc, ..Preprocess::default() };
        let t = decode(&img, &p, DType::F32, &[1, 2, 3]).unwrap();
        assert_eq!(t.data, [0, 100, 200, 1, 100, 200], "NHWC: interleaved");
    }

    #[test]
    fn scale_mean_std_apply_per_channel() {
        let img = png(rgb(1, 1)); // (0, 100, 200)
        let p =
            Preprocess { scale: 0.01, mean: vec![0.0, 0.5, 1.0], std: vec![1.0, 0.5, 2.0], ..Preprocess::default() };
        let t = decode(&img, &p, DType::F32, &[3, 1, 1]).unwrap();
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(f32s(&t), [0.0, (1.0 - 0.5) / 0.5, (2.0 - 1.0) / 2.0]);
        // A float16 model gets float16 values.
        let t = decode(&img, &p, DType::F16, &[3, 1, 1]).unwrap();
        assert_eq!((t.dtype, f32s(&t)), (DType::F16, vec![0.0, 1.0, 0.5]));
        // One mean/std value serves every channel.
        let p = Preprocess { scale: 1.0 / 255.0, mean: vec![0.5], std: vec![0.5], ..Preprocess::default() };
        let v = f32s(&decode(&png(gray(1, 1)), &p, DType::F32, &[1, 1, 1]).unwrap());
        assert_eq!(v, [-1.0]);
    }

    #[test]
    fn channels_and_resize_convert_when_asked_and_refuse_otherwise() {
        let e = decode(&png(rgb(28, 28)), &Preprocess::default(), DType::F32, &[1, 28, 28]).unwrap_err();
        assert_eq!(e.0, "image has 3 channels (Rgb8), the model takes 1; set preprocess.channels = 1 to convert");
        let e = decode(&png(gray(28, 28)), &Preprocess::default(), DType::F32, &[3, 28, 28]).unwrap_err();
        assert_eq!(e.0, "image has 1 channels (L8), the model takes 3; set preprocess.channels = 3 to convert");
        let e = decode(&png(gray(32, 30)), &Preprocess::default(), DType::F32, &[1, 28, 28]).unwrap_err();
        assert_eq!(
            e.0,
            "image is 32x30 (width x height), the model takes 28x28; set preprocess.resize = [28, 28] to resize"
        );
        // Both conversions at once: an RGB 4x4 of one gray value becomes a luma 2x2 of it.
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 4, Rgb([90, 90, 90])));
        let p = Preprocess { resize: Some([2, 2]), channels: Some(1), ..Preprocess::default() };
        let t = decode(&png(img), &p, DType::F32, &[1, 2, 2]).unwrap();
        assert_eq!(t.data, [90; 4]);
        // Gray to RGB repeats the value.
        let p = Preprocess { channels: Some(3), ..Preprocess::default() };
        let t = decode(&png(gray(1, 1)), &p, DType::F32, &[3, 1, 1]).unwrap();
        assert_eq!(t.data, [0, 0, 0]);
    }

    #[test]
    fn what_is_not_a_png_or_jpeg_is_named() {
        let p = Preprocess::default();
        let e = decode(b"GIF89a...", &p, DType::F32, &[1, 1, 1]).unwrap_err();
        assert_eq!(e.0, "undecodable image: not a PNG or JPEG (first bytes: 47 49 46 38)");
        assert_eq!(
            decode(b"", &p, DType::F32, &[1, 1, 1]).unwrap_err().0,
            "undecodable image: not a PNG or JPEG (first bytes: none)"
        );
        let mut truncated = png(gray(28, 28));
        truncated.truncate(40);
        let e = decode(&truncated, &p, DType::F32, &[1, 28, 28]).unwrap_err();
        assert!(e.0.starts_with("undecodable Png image: "), "{}", e.0);
    }

    #[test]
    fn a_huge_declared_canvas_is_refused_before_decoding() {
        // A valid 1x1 PNG whose header (with its checksum fixed) claims 100000 x 100000 pixels.
        let mut bytes = png(gray(1, 1));
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&bytes, &Preprocess::default(), DType::F32, &[1, 1, 1]).unwrap_err();
        assert_eq!(e.0, "undecodable Png image: Image size exceeds limit");
    }

    /// PNG's chunk checksum (CRC-32, ISO 3309).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn image_shapes() {
        assert_eq!(image_dims(&[1, 28, 28], Layout::Nchw), Some((1, 28, 28)));
        assert_eq!(image_dims(&[28, 28, 3], Layout::Nhwc), Some((3, 28, 28)));
        assert_eq!(image_dims(&[28, 28], Layout::Nhwc), Some((1, 28, 28)));
        assert_eq!(image_dims(&[28, 28, 3], Layout::Nchw), None, "28 channels");
        assert_eq!(image_dims(&[784], Layout::Nchw), None);
    }
}
