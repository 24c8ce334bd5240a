//! Decoding image sources to 8-bit RGB.
//!
//! JPEG and PNG go through the `image` crate (pure Rust; zune-jpeg decodes
//! JPEG). The format is detected from the content, not the file name.
//! Grayscale, grayscale+alpha, palette, 16-bit, RGBA and CMYK/YCCK images all
//! become 8-bit RGB; alpha is dropped (as PIL's `convert("RGB")` does).
//!
//! The JPEG decoder renders a truncated file with grey filler instead of
//! failing (it is lenient so that browsers show something). A training run
//! must not silently learn from half-grey images, so a JPEG without an
//! end-of-image marker after its last scan is rejected here, as PIL rejects
//! it by default ("image file is truncated").

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use crate::dataset::ImageSource;
use crate::error::{DataError, Origin, Result};

/// A decoded 8-bit RGB image, interleaved row-major, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Arc<[u8]>,
}

impl RgbImage {
    /// The RGB value at `(x, y)`.
    ///
    /// # Panics
    /// If the position is outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let o = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[o], self.data[o + 1], self.data[o + 2]]
    }
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Whether a JPEG byte stream has an end-of-image marker after its last
/// start-of-scan marker. Inside entropy-coded data every `0xFF` byte is
/// followed by `0x00` or a restart marker, so `FF DA` / `FF D9` pairs there
/// are real markers.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(p) => bytes[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Why an image could not be decoded (the source of
/// [`DataError::Decode`]).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes fail one of this crate's own checks (truncated JPEG, unknown
    /// format, zero size, a buffer of the wrong length).
    #[error("{0}")]
    Invalid(String),
    /// The image decoder failed; its error is the source.
    #[error("the image decoder failed")]
    Decoder(#[source] image::ImageError),
    /// The file could not be read.
    #[error("reading the file failed")]
    Read(#[source] std::io::Error),
}

/// Decodes encoded image bytes.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, DecodeError> {
    if is_jpeg(bytes) && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Invalid(
            "truncated JPEG: no end-of-image marker after the last scan".to_string(),
        ));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DecodeError::Read)?;
    if reader.format().is_none() {
        return Err(DecodeError::Invalid(
            "unrecognised image format (expected JPEG or PNG)".to_string(),
        ));
    }
    let img = reader.decode().map_err(DecodeError::Decoder)?;
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::Invalid(format!(
            "image has zero size {width}x{height}"
        )));
    }
    Ok(RgbImage {
        width,
        height,
        data: Arc::from(rgb.into_raw()),
    })
}

/// Reads and decodes an image file. A missing file is
/// [`DataError::MissingImage`], anything else that fails is
/// [`DataError::Decode`]; both carry `origin` (the list line).
pub fn decode_file(path: &Path, origin: Option<Origin>) -> Result<RgbImage> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::MissingImage {
                path: path.to_path_buf(),
                origin,
            })
        }
        Err(e) => {
            return Err(DataError::Decode {
                what: path.display().to_string(),
                origin,
                source: Box::new(DecodeError::Read(e)),
            })
        }
    };
    decode_bytes(&bytes).map_err(|source| DataError::Decode {
        what: path.display().to_string(),
        origin,
        source: Box::new(source),
    })
}

/// Decodes any [`ImageSource`] (in-memory sources are not copied).
pub fn decode_source(source: &ImageSource, origin: Option<Origin>) -> Result<RgbImage> {
    match source {
        ImageSource::File(p) => decode_file(p, origin),
        ImageSource::Rgb8 {
            width,
            height,
            data,
        } => Ok(RgbImage {
            width: *width,
            height: *height,
            data: data.clone(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{ImageEncoder, ImageFormat};

    /// A `w x h` RGB test pattern: R = 8x, G = 8y, B = 100.
    pub(crate) fn pattern(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 8 % 256) as u8, (y * 8 % 256) as u8, 100])
        })
    }

    pub(crate) fn encode(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A 354-byte 8x8 CMYK JPEG (Adobe APP14, pure red: C 0 M 255 Y 255 K 0),
    /// written by libjpeg through PIL; PIL decodes it to RGB (255, 0, 0).
    const CMYK_RED_JPEG: &str = concat!(
        "ffd8ffee000e41646f626500640000000000ffdb004300020101010101020101",
        "0102020202020403020202020504040304060506060605060606070908060709",
        "070606080b08090a0a0a0a0a06080b0c0b0a0c090a0a0affc000140800080008",
        "044311004d11005911004b1100ffc4001f000001050101010101010000000000",
        "0000000102030405060708090a0bffc400b51000020103030204030505040400",
        "00017d01020300041105122131410613516107227114328191a1082342b1c115",
        "52d1f02433627282090a161718191a25262728292a3435363738393a43444546",
        "4748494a535455565758595a636465666768696a737475767778797a83848586",
        "8788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2",
        "c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5",
        "f6f7f8f9faffda000e0443004d0059004b00003f00fdfcafe7febf9ffafdfcaf",
        "ffd9",
    );

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_png_and_jpeg_variants_to_rgb() {
        let rgb = image::DynamicImage::ImageRgb8(pattern(16, 8));
        let png = decode_bytes(&encode(&rgb, ImageFormat::Png)).unwrap();
        assert_eq!((png.width, png.height), (16, 8));
        assert_eq!(png.pixel(3, 2), [24, 16, 100]);

        let jpg = decode_bytes(&encode(&rgb, ImageFormat::Jpeg)).unwrap();
        assert_eq!((jpg.width, jpg.height), (16, 8));
        let p = jpg.pixel(3, 2);
        assert!((p[2] as i32 - 100).abs() < 12, "{p:?}");

        let gray =
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 4, image::Luma([77])));
        for fmt in [ImageFormat::Png, ImageFormat::Jpeg] {
            let g = decode_bytes(&encode(&gray, fmt)).unwrap();
            assert_eq!(g.data.len(), 4 * 4 * 3);
            let p = g.pixel(1, 1);
            assert!(
                p[0] == p[1] && p[1] == p[2] && (p[0] as i32 - 77).abs() <= 2,
                "{p:?}"
            );
        }

        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            3,
            2,
            image::Rgba([10, 20, 30, 0]),
        ));
        let a = decode_bytes(&encode(&rgba, ImageFormat::Png)).unwrap();
        assert_eq!(a.pixel(2, 1), [10, 20, 30]);
        assert_eq!(a.data.len(), 3 * 2 * 3);

        let la = image::DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
            2,
            2,
            image::LumaA([200, 9]),
        ));
        assert_eq!(
            decode_bytes(&encode(&la, ImageFormat::Png))
                .unwrap()
                .pixel(0, 0),
            [200; 3]
        );

        // 16-bit PNG.
        let mut png16 = Vec::new();
        let px16: Vec<u8> = [0xFFFFu16, 0, 0x8080]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        image::codecs::png::PngEncoder::new(&mut png16)
            .write_image(&px16, 1, 1, image::ExtendedColorType::Rgb16)
            .unwrap();
        assert_eq!(decode_bytes(&png16).unwrap().pixel(0, 0), [255, 0, 128]);
    }

    #[test]
    fn decodes_cmyk_jpeg() {
        let img = decode_bytes(&unhex(CMYK_RED_JPEG)).unwrap();
        assert_eq!((img.width, img.height), (8, 8));
        let p = img.pixel(4, 4);
        assert!(p[0] > 230 && p[1] < 25 && p[2] < 25, "{p:?}");
    }

    #[test]
    fn corrupt_and_truncated_inputs_are_errors() {
        let rgb = image::DynamicImage::ImageRgb8(pattern(32, 32));
        let jpg = encode(&rgb, ImageFormat::Jpeg);
        for cut in [jpg.len() - 2, jpg.len() / 2, 200, 20, 3] {
            let e = decode_bytes(&jpg[..cut]);
            assert!(e.is_err(), "truncated at {cut} decoded");
        }
        let png = encode(&rgb, ImageFormat::Png);
        assert!(decode_bytes(&png[..png.len() / 2]).is_err());
        let mut bad_png = png.clone();
        bad_png[40] ^= 0xFF;
        assert!(decode_bytes(&bad_png).is_err());
        assert!(decode_bytes(b"not an image at all").is_err());
        assert!(decode_bytes(&[]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jpg");
        let e = decode_file(&missing, None).unwrap_err();
        assert!(matches!(e, DataError::MissingImage { .. }), "{e}");
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &jpg[..jpg.len() / 2]).unwrap();
        let e = decode_file(
            &cut,
            Some(Origin {
                file: "l.txt".into(),
                line: 7,
            }),
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("cut.jpg") && shown.contains("l.txt:7"),
            "{shown}"
        );
        // The reason is the source, shown once in the chain.
        let chain = lt_core::error_chain(&e);
        assert!(chain.contains("truncated"), "{chain}");
        assert!(!shown.contains("truncated"), "{shown}");
        // A corrupt (not truncated) image keeps the decoder's own error.
        let mut bad = encode(
            &image::DynamicImage::ImageRgb8(pattern(8, 8)),
            ImageFormat::Png,
        );
        bad[40] ^= 0xFF;
        let p = dir.path().join("bad.png");
        std::fs::write(&p, &bad).unwrap();
        let e = decode_file(&p, None).unwrap_err();
        let DataError::Decode { source, .. } = &e else {
            panic!("{e}")
        };
        assert!(
            matches!(source.as_ref(), DecodeError::Decoder(_)),
            "{source}"
        );
        assert!(std::error::Error::source(source.as_ref()).is_some());
    }
}
