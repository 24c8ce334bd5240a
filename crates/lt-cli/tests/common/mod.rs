//! Test fixtures shared by the lt-cli integration tests.

use std::path::Path;

/// Writes one 32x32 image: a class colour plus deterministic noise.
pub fn write_image(path: &Path, class: usize, index: usize) {
    let base = [
        [200u8, 40, 40],
        [40, 200, 40],
        [40, 40, 200],
        [200, 200, 40],
        [40, 200, 200],
    ][class];
    let mut state = (class as u64 + 1) * 1_000_003 + index as u64 * 7919;
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((state >> 33) % 61) as i32 - 30;
        let stripe = if (x / 4 + y / 4 + class as u32) & 1 == 0 {
            25
        } else {
            -25
        };
        let px = |c: u8| (c as i32 + noise + stripe).clamp(0, 255) as u8;
        image::Rgb([px(base[0]), px(base[1]), px(base[2])])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}
