//! A tiny long-tailed image dataset generated on the fly, and a config for it.

use std::path::Path;

/// Training images per class.
pub const TRAIN_COUNTS: [usize; 4] = [24, 12, 6, 3];

fn write_image(path: &Path, class: usize, index: usize) {
    let base = [
        [200u8, 40, 40],
        [40, 200, 40],
        [40, 40, 200],
        [200, 200, 40],
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

/// Writes `train.txt`, `val.txt` (3 per class) and the images under `root`.
pub fn make_dataset(root: &Path) {
    for (split, counts) in [("train", TRAIN_COUNTS.to_vec()), ("val", vec![3; 4])] {
        let mut list = String::new();
        for (c, &n) in counts.iter().enumerate() {
            for i in 0..n {
                let rel = format!("{split}/{c}/{i}.png");
                write_image(&root.join(&rel), c, i + 100 * split.len());
                list.push_str(&format!("{rel} {c}\n"));
            }
        }
        std::fs::write(root.join(format!("{split}.txt")), list).unwrap();
    }
}

/// A ResNet-8 config over the generated data; `extra` is appended verbatim.
pub fn config(data: &Path, run: &Path, extra: &str) -> String {
    format!(
        r#"
name = "tiny"
run_dir = {run:?}
seed = 3
[data]
root = {root:?}
train_list = {train:?}
val_list = {val:?}
num_classes = 4
train_preset = "cifar_train"
eval_preset = "cifar_eval"
threads = 2
cache_decoded = true
[model]
arch = "resnet8"
[eval]
batch_size = 16
group_rule = {{ rule = "train_count", many_above = 10, few_below = 5 }}
{extra}
"#,
        run = run.to_str().unwrap(),
        root = data.to_str().unwrap(),
        train = data.join("train.txt").to_str().unwrap(),
        val = data.join("val.txt").to_str().unwrap(),
    )
}
