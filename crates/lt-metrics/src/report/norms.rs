//! Per-class classifier weight norms, read from run checkpoints.
//!
//! * joint and cRT: `||w_j||`, the rows of `fc.weight`;
//! * tau-norm: the joint head divided by `||w_j||^tau`, so `||w_j||^(1 - tau)`;
//! * LWS: the joint head scaled by `s_j` (`fc.scales`), so `|s_j| ||w_j||`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::TensorInfo;
use safetensors::Dtype;

use super::ReportError;

/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

fn ck_err(path: &Path, message: impl Into<String>) -> ReportError {
    ReportError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads one tensor of a safetensors file as f64 values with its shape.
///
/// Only the header and that tensor's bytes are read: a stage-1 checkpoint of
/// a large backbone (plus its momentum) is hundreds of megabytes, of which the
/// classifier is a tiny part. The layout is the format's: an 8-byte
/// little-endian header length, the JSON header, then the data; the header
/// entries are parsed with the `safetensors` crate's own types.
pub fn read_tensor(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f64>), ReportError> {
    let io = |error: std::io::Error| ReportError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| ck_err(path, "too short for a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(ck_err(path, format!("bad safetensors header length {n}")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| ck_err(path, format!("bad safetensors header: {e}")))?;
    let entry = entries
        .get(name)
        .ok_or_else(|| ck_err(path, format!("no tensor `{name}`")))?;
    let info: TensorInfo = serde_json::from_value(entry.clone())
        .map_err(|e| ck_err(path, format!("tensor `{name}`: {e}")))?;
    let (begin, end) = info.data_offsets;
    let count: usize = info.shape.iter().product();
    let width = match info.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        other => {
            return Err(ck_err(
                path,
                format!("tensor `{name}` has dtype {other:?}; expected F32 or F64"),
            ))
        }
    };
    if end < begin || end - begin != count * width || 8 + n + end as u64 > file_len {
        return Err(ck_err(
            path,
            format!(
                "tensor `{name}`: offsets {begin}..{end} do not hold {count} values of shape {:?}",
                info.shape
            ),
        ));
    }
    f.seek(SeekFrom::Start(8 + n + begin as u64)).map_err(io)?;
    let mut bytes = vec![0u8; end - begin];
    f.read_exact(&mut bytes).map_err(io)?;
    let values = if width == 4 {
        bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    } else {
        bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")))
            .collect()
    };
    Ok((info.shape, values))
}

/// The L2 norm of each row of `fc.weight` `(C, d)`.
pub fn row_norms(path: &Path) -> Result<Vec<f64>, ReportError> {
    let (shape, w) = read_tensor(path, "fc.weight")?;
    let [c, d] = shape[..] else {
        return Err(ck_err(
            path,
            format!("`fc.weight` has shape {shape:?}; expected (classes, features)"),
        ));
    };
    if c == 0 || d == 0 {
        return Err(ck_err(path, "`fc.weight` is empty"));
    }
    Ok(w.chunks_exact(d)
        .map(|row| row.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect())
}

/// Per-class norms of a head's effective weights, from its checkpoint.
/// `head` is `joint`, `crt`, `tau_norm` (with `tau`) or `lws`; other heads
/// have no linear weights and give `None`.
pub fn head_norms(
    head: &str,
    checkpoint: &Path,
    tau: Option<f64>,
) -> Result<Option<Vec<f64>>, ReportError> {
    Ok(Some(match head {
        "joint" | "crt" => row_norms(checkpoint)?,
        "tau_norm" => {
            let tau = tau.ok_or_else(|| {
                ck_err(checkpoint, "the tau-norm result has no `tau` to scale with")
            })?;
            row_norms(checkpoint)?
                .into_iter()
                .map(|n| n.powf(1.0 - tau))
                .collect()
        }
        "lws" => {
            let norms = row_norms(checkpoint)?;
            let (shape, s) = read_tensor(checkpoint, "fc.scales")?;
            if s.len() != norms.len() {
                return Err(ck_err(
                    checkpoint,
                    format!(
                        "`fc.scales` has shape {shape:?} but `fc.weight` has {} rows",
                        norms.len()
                    ),
                ));
            }
            norms.iter().zip(&s).map(|(n, s)| n * s.abs()).collect()
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a safetensors file of f32 tensors (test helper shared with the
    /// report tests).
    pub(crate) fn write_checkpoint(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = HashMap::from([("lt_train".to_string(), "{}".to_string())]);
        let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn norms_of_every_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ck.safetensors");
        write_checkpoint(
            &p,
            &[
                ("conv1.weight", vec![2, 2], vec![9.0; 4]),
                ("fc.weight", vec![2, 2], vec![3.0, 4.0, 0.0, 2.0]),
                ("fc.scales", vec![2], vec![2.0, -0.5]),
            ],
        );
        assert_eq!(row_norms(&p).unwrap(), vec![5.0, 2.0]);
        assert_eq!(head_norms("joint", &p, None).unwrap(), Some(vec![5.0, 2.0]));
        assert_eq!(head_norms("lws", &p, None).unwrap(), Some(vec![10.0, 1.0]));
        let t = head_norms("tau_norm", &p, Some(1.0)).unwrap().unwrap();
        assert_eq!(t, vec![1.0, 1.0]);
        let t = head_norms("tau_norm", &p, Some(0.5)).unwrap().unwrap();
        assert!((t[0] - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(head_norms("ncm", &p, None).unwrap(), None);
        let e = head_norms("tau_norm", &p, None).unwrap_err().to_string();
        assert!(e.contains("tau") && e.contains("ck.safetensors"), "{e}");
    }

    #[test]
    fn bad_checkpoints_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, [1u8, 2, 3]).unwrap();
        let e = row_norms(&p).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        write_checkpoint(&p, &[("fc.bias", vec![2], vec![0.0, 0.0])]);
        let e = row_norms(&p).unwrap_err().to_string();
        assert!(e.contains("fc.weight"), "{e}");
        write_checkpoint(&p, &[("fc.weight", vec![4], vec![0.0; 4])]);
        let e = row_norms(&p).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let e = row_norms(&dir.path().join("none.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.safetensors"), "{e}");
    }
}
