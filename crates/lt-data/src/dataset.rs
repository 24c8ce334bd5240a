//! An indexable list of labelled images.
//!
//! A [`Dataset`] is what every reader produces (split lists, image folders,
//! CIFAR binaries) and what the loader consumes. It holds image *sources*
//! (file paths or decoded pixels), never decoded tensors, so even iNaturalist's
//! 437k training images cost a few tens of megabytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{DataError, Origin, Result};
use lt_core::stats::ClassStats;

/// Where the pixels of one sample come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An encoded image file (JPEG or PNG; the format is detected from the
    /// content, not the extension).
    File(PathBuf),
    /// Decoded 8-bit RGB pixels, interleaved row-major (`H x W x 3`), e.g. a
    /// record of a CIFAR binary file. `data.len()` is `width * height * 3`.
    Rgb8 {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// `width * height * 3` bytes, `R G B R G B ...` row by row.
        data: Arc<[u8]>,
    },
}

impl ImageSource {
    /// A short description for logs and errors (the path, or the size of an
    /// in-memory image).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Rgb8 { width, height, .. } => {
                format!("<in-memory {width}x{height} RGB image>")
            }
        }
    }
}

/// One labelled sample, as accepted by [`Dataset::from_samples`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image.
    pub image: ImageSource,
    /// Class id in `0..num_classes`.
    pub label: u32,
}

/// An indexable, immutable list of labelled images with a fixed class count.
///
/// Cloning is cheap for the class names (shared) and linear in the number of
/// samples otherwise; share a dataset between threads with `Arc<Dataset>`.
#[derive(Debug, Clone)]
pub struct Dataset {
    images: Vec<ImageSource>,
    labels: Vec<u32>,
    num_classes: usize,
    class_names: Option<Arc<[String]>>,
    /// The file the samples were read from and the 1-based line (or record)
    /// of each sample, so that decode errors can point at the list line.
    origin: Option<(Arc<Path>, Vec<u32>)>,
}

impl Dataset {
    /// Builds a dataset from samples, checking that every label is below
    /// `num_classes`. Classes without samples are allowed here (subsets may
    /// lack classes); the file readers reject them.
    pub fn from_samples(samples: Vec<Sample>, num_classes: usize) -> Result<Self> {
        let mut images = Vec::with_capacity(samples.len());
        let mut labels = Vec::with_capacity(samples.len());
        for (i, s) in samples.into_iter().enumerate() {
            if s.label as usize >= num_classes {
                return Err(DataError::LabelOutOfRange {
                    path: PathBuf::from("<in-memory samples>"),
                    line: i + 1,
                    label: u64::from(s.label),
                    num_classes,
                });
            }
            if let ImageSource::Rgb8 {
                width,
                height,
                data,
            } = &s.image
            {
                if data.len() != *width as usize * *height as usize * 3 {
                    return Err(DataError::Decode {
                        what: format!("sample {i}"),
                        origin: None,
                        source: Box::new(crate::decode::DecodeError::Invalid(format!(
                            "{width}x{height} RGB image needs {} bytes, got {}",
                            *width as usize * *height as usize * 3,
                            data.len()
                        ))),
                    });
                }
            }
            images.push(s.image);
            labels.push(s.label);
        }
        Ok(Self {
            images,
            labels,
            num_classes,
            class_names: None,
            origin: None,
        })
    }

    /// Attaches class names (one per class, indexed by label).
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.num_classes {
            return Err(DataError::config(
                "class_names",
                format!(
                    "{} names given for a dataset with {} classes",
                    names.len(),
                    self.num_classes
                ),
            ));
        }
        self.class_names = Some(names.into());
        Ok(self)
    }

    /// Records the file the samples came from and the 1-based line of each.
    pub(crate) fn with_origin(mut self, file: &Path, lines: Vec<u32>) -> Self {
        debug_assert_eq!(lines.len(), self.images.len());
        self.origin = Some((Arc::from(file), lines));
        self
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes (labels are in `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The label of every sample, by index.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The label of sample `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn label(&self, index: usize) -> u32 {
        self.labels[index]
    }

    /// The image source of sample `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image(&self, index: usize) -> &ImageSource {
        &self.images[index]
    }

    /// All image sources, by index.
    pub fn images(&self) -> &[ImageSource] {
        &self.images
    }

    /// Class names, indexed by label, when the reader knew them.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Where sample `index` was listed (file and line), when known.
    pub fn origin(&self, index: usize) -> Option<Origin> {
        let (file, lines) = self.origin.as_ref()?;
        let line = *lines.get(index)?;
        Some(Origin {
            file: file.to_path_buf(),
            line: line as usize,
        })
    }

    /// Per-class counts of this split.
    pub fn stats(&self) -> ClassStats {
        ClassStats::from_labels(&self.labels, self.num_classes)
    }

    /// The samples at `indices`, in that order (repeats allowed), with the same
    /// class count and names.
    ///
    /// # Panics
    /// If an index is out of range; use [`Dataset::try_subset`] for indices
    /// that come from outside the program.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        match self.try_subset(indices) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Dataset::subset`], but an out-of-range index is an error.
    pub fn try_subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::IndexOutOfRange {
                batch: 0,
                index: bad,
                len: self.len(),
            });
        }
        Ok(Dataset {
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            origin: self
                .origin
                .as_ref()
                .map(|(file, lines)| (file.clone(), indices.iter().map(|&i| lines[i]).collect())),
        })
    }

    /// Checks that every class in `0..num_classes` has at least one sample and
    /// that the dataset is not empty; `what` names the source in the error.
    pub fn check_all_classes_present(&self, what: &Path) -> Result<()> {
        if self.is_empty() {
            return Err(DataError::EmptySplit {
                path: what.to_path_buf(),
            });
        }
        let stats = self.stats();
        if let Some(class) = stats.counts().iter().position(|&c| c == 0) {
            return Err(DataError::EmptyClass {
                path: what.to_path_buf(),
                class,
                name: self.class_names().map(|n| n[class].clone()),
                num_classes: self.num_classes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn px(v: u8) -> ImageSource {
        ImageSource::Rgb8 {
            width: 1,
            height: 1,
            data: Arc::from(vec![v, v, v]),
        }
    }

    #[test]
    fn from_samples_checks_labels_and_sizes() {
        let ok = Dataset::from_samples(
            vec![
                Sample {
                    image: px(1),
                    label: 0,
                },
                Sample {
                    image: px(2),
                    label: 2,
                },
            ],
            3,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok.labels(), &[0, 2]);
        assert_eq!(ok.stats().counts(), &[1, 0, 1]);
        let err = ok.check_all_classes_present(Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("class 1 has no images"), "{err}");

        let bad = Dataset::from_samples(
            vec![Sample {
                image: px(1),
                label: 3,
            }],
            3,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("label 3 is out of range"), "{bad}");

        let short = Dataset::from_samples(
            vec![Sample {
                image: ImageSource::Rgb8 {
                    width: 2,
                    height: 2,
                    data: Arc::from(vec![0u8; 5]),
                },
                label: 0,
            }],
            1,
        )
        .unwrap_err();
        let chain = lt_core::error_chain(&short);
        assert!(chain.contains("needs 12 bytes"), "{chain}");
    }

    #[test]
    fn subset_keeps_names_and_origins() {
        let d = Dataset::from_samples(
            (0..4)
                .map(|i| Sample {
                    image: px(i as u8),
                    label: i % 2,
                })
                .collect(),
            2,
        )
        .unwrap()
        .with_class_names(vec!["a".into(), "b".into()])
        .unwrap()
        .with_origin(Path::new("list.txt"), vec![1, 2, 3, 4]);
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.labels(), &[1, 0, 1]);
        assert_eq!(
            s.class_names().unwrap(),
            &["a".to_string(), "b".to_string()]
        );
        assert_eq!(s.origin(1).unwrap().to_string(), "list.txt:1");
        assert_eq!(s.image(0), &px(3));
        assert!(d.try_subset(&[4]).is_err());
        assert!(d.clone().with_class_names(vec!["a".into()]).is_err());
    }
}
