//! PyTorch checkpoints (`.pth`, `.pth.tar`, `.pt`) read directly, without
//! Python.
//!
//! Both of PyTorch's file formats are read: the zip archive `torch.save`
//! writes since PyTorch 1.6 (`archive/data.pkl` plus one entry per storage),
//! and the older single-stream format (`_use_new_zipfile_serialization=False`,
//! every file written before 1.6). The pickle is parsed with candle's
//! reader ([`candle_core::pickle`]); nothing in the file is executed.
//!
//! # Layouts
//!
//! [`read_torch_checkpoint`] recognises three layouts ([`TorchLayout`]) and
//! maps them onto this crate's names (torchvision's, see [`crate::store`]):
//!
//! * a plain **state dict** (`torch.save(model.state_dict(), ...)`, the
//!   torchvision ImageNet weights): the keys as they are;
//! * a **wrapped** state dict, a dict whose `state_dict` (or `model`) entry is
//!   the state dict and whose other entries (`epoch`, `optimizer`,
//!   `best_acc1`, ...) are set aside: what training scripts write as
//!   `checkpoint.pth.tar`;
//! * the **classifier-balancing** release of Kang et al.: a dict whose
//!   `state_dict_best` (`final_model_checkpoint.pth`, the released models) or
//!   `state_dict` (`latest_model_checkpoint.pth`) holds a `feat_model` and a
//!   `classifier` state dict. The backbone's keys are torchvision's; the
//!   classifier's `fc.weight` / `fc.bias` stay `fc.*`, and other classifier
//!   keys go under `fc.` (the LWS release's `scales` become `fc.scales`, the
//!   name this project's LWS head uses).
//!
//! Everywhere, leading `module.` prefixes (`nn.DataParallel`) are removed.
//! Entries that are not tensors of the model (`epoch`, optimiser state,
//! `centroids`, ...) are listed in [`TorchCheckpoint::ignored`].
//!
//! # Loading and converting
//!
//! [`read_weights`] reads a safetensors file or a PyTorch checkpoint (told
//! apart by their first bytes), so [`ParamStore::load`](crate::ParamStore::load),
//! [`Backbone::load_pretrained`](crate::Backbone::load_pretrained) and
//! everything built on them take either. [`convert`] writes a checkpoint as
//! one safetensors file, after checking it against an architecture (given,
//! or recognised from the keys and shapes by [`infer_arch`]): a checkpoint of
//! another architecture is an error listing every missing, unexpected and
//! mis-shaped key ([`ModelError::IncompatibleCheckpoint`]), and nothing is
//! written.
//!
//! ```no_run
//! use candle_core::Device;
//! use lt_models::torch_import::{convert, read_torch_checkpoint};
//! use lt_models::{Arch, Backbone};
//!
//! // The paper's released ImageNet-LT ResNeXt-50, as downloaded.
//! let ckpt = read_torch_checkpoint("resnext50_uniform_e90.pth".as_ref(), &Device::Cpu)?;
//! println!("{} ({} tensors)", ckpt.layout, ckpt.tensors.len());
//! let backbone = Backbone::new(Arch::Resnext50_32x4d, &Device::Cpu, 0)?;
//! backbone.load("resnext50_uniform_e90.pth")?; // strict: every key checked
//!
//! // Or once, to a safetensors file.
//! let report = convert(
//!     "resnext50_uniform_e90.pth".as_ref(),
//!     "resnext50_uniform_e90.safetensors".as_ref(),
//!     None,
//! )?;
//! assert_eq!(report.arch, Arch::Resnext50_32x4d);
//! # Ok::<(), lt_models::ModelError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

use crate::arch::{Arch, ArchConfig};
use crate::error::{ModelError, Result};
use crate::resnet::BlockKind;

/// The safetensors header metadata key [`convert`] writes: JSON with the
/// source file name, its layout, the architecture and the source's epoch.
pub const CONVERT_META_KEY: &str = "lt_torch_import";

/// Which of the recognised layouts a checkpoint has (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchLayout {
    /// The file is a state dict.
    StateDict,
    /// The state dict is the entry `key` of a dict (`state_dict`, `model`).
    Wrapped {
        /// The entry holding the state dict.
        key: String,
    },
    /// The classifier-balancing release: `key` (`state_dict_best` or
    /// `state_dict`) holds `feat_model` and `classifier`.
    ClassifierBalancing {
        /// The entry holding the two parts.
        key: String,
    },
}

impl fmt::Display for TorchLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorchLayout::StateDict => write!(f, "state dict"),
            TorchLayout::Wrapped { key } => write!(f, "state dict under `{key}`"),
            TorchLayout::ClassifierBalancing { key } => write!(
                f,
                "classifier-balancing checkpoint (`{key}`: feat_model + classifier)"
            ),
        }
    }
}

/// A PyTorch checkpoint mapped onto this crate's names.
#[derive(Debug, Clone)]
pub struct TorchCheckpoint {
    /// The file read.
    pub path: PathBuf,
    /// How its tensors were laid out.
    pub layout: TorchLayout,
    /// The model's tensors under torchvision names (backbone keys, `fc.*` of
    /// the classifier, BN `num_batches_tracked` as in the file).
    pub tensors: BTreeMap<String, Tensor>,
    /// The `epoch` entry of a wrapped or classifier-balancing checkpoint.
    pub epoch: Option<i64>,
    /// Entries of the file set aside (dotted paths: `epoch`,
    /// `optimizer.state.0.momentum_buffer`, `centroids`, ...).
    pub ignored: Vec<String>,
}

impl TorchCheckpoint {
    /// The tensors as a map (what [`crate::ParamStore::load_state_dict`] takes).
    pub fn to_hash_map(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::TorchCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_err(path: &Path) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |source| ModelError::ReadCheckpoint {
        path: path.to_path_buf(),
        source,
    }
}

/// The first bytes of a zip archive (`torch.save` since PyTorch 1.6).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The pickle protocol-2 opcode every file of the older format starts with.
const PICKLE_PROTO: u8 = 0x80;
/// The magic number of the older format, as pickled (protocol 2, `LONG1`).
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The container format of a weight file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    Legacy,
    Other,
}

fn sniff(path: &Path) -> Result<Format> {
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(|e| read_err(path)(e.into()))?;
    let n = read_up_to(&mut f, &mut head).map_err(|e| read_err(path)(e.into()))?;
    Ok(sniff_bytes(&head[..n]))
}

fn sniff_bytes(head: &[u8]) -> Format {
    if head.starts_with(ZIP_MAGIC) {
        Format::Zip
    } else if head.len() == 9 && head[8] == b'{' {
        // A safetensors file: an 8-byte little-endian header length, then
        // the JSON header. Checked before the pickle opcode because that
        // length's low byte is 0x80 for one header size in 256.
        Format::Other
    } else if head.first() == Some(&PICKLE_PROTO) {
        Format::Legacy
    } else {
        Format::Other
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// True when `path` starts like a PyTorch checkpoint (a zip archive or a
/// pickle) rather than, say, a safetensors file.
pub fn is_torch_checkpoint(path: &Path) -> Result<bool> {
    Ok(sniff(path)? != Format::Other)
}

/// Reads a weight file: a PyTorch checkpoint (any layout of
/// [`read_torch_checkpoint`]) or else a safetensors file.
pub fn read_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if is_torch_checkpoint(path)? {
        Ok(read_torch_checkpoint(path, device)?.to_hash_map())
    } else {
        crate::store::read_safetensors(path, device)
    }
}

/// Where the bytes of the storages are.
enum Storages {
    Zip(zip::ZipArchive<BufReader<std::fs::File>>),
    /// Older format: key -> (offset of the data in the file, element count).
    Legacy {
        file: std::fs::File,
        offsets: HashMap<String, (u64, u64)>,
    },
}

/// Every tensor of a PyTorch checkpoint under its dotted path in the pickled
/// object (`state_dict_best.feat_model.module.conv1.weight`), and the other
/// entries (non-tensor values, tensors of a dtype candle lacks) by path.
struct RawFile {
    tensors: Vec<(String, Tensor)>,
    others: Vec<(String, Object)>,
}

fn parse_pickle(path: &Path, r: &mut impl std::io::BufRead, what: &str) -> Result<Object> {
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .and_then(|()| stack.finalize())
        .map_err(|e| bad(path, format!("cannot parse the {what} pickle: {e}")))
}

/// Storage keys and their element sizes, from every persistent id in `obj`.
fn collect_storages(obj: &Object, out: &mut HashMap<String, usize>) {
    match obj {
        Object::PersistentLoad(id) => {
            if let Object::Tuple(parts) = id.as_ref() {
                if let (Some(Object::Class { class_name, .. }), Some(Object::Unicode(key))) =
                    (parts.get(1), parts.get(2))
                {
                    out.insert(key.clone(), storage_elem_size(class_name));
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().for_each(|o| collect_storages(o, out)),
        Object::Dict(kv) => kv.iter().for_each(|(k, v)| {
            collect_storages(k, out);
            collect_storages(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out)
        }
        _ => {}
    }
}

fn storage_elem_size(class_name: &str) -> usize {
    match class_name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ComplexDoubleStorage" => 16,
        _ => 1,
    }
}

fn key_string(k: Object) -> String {
    match k {
        Object::Unicode(s) => s,
        Object::Int(i) => i.to_string(),
        Object::Long(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn class_of(obj: &Object) -> Option<String> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => Some(format!("{module_name}.{class_name}")),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => class_of(callable),
        _ => None,
    }
}

/// Flattens nested dicts into dotted paths; tensors become [`TensorInfo`]s.
fn walk(
    obj: Object,
    name: String,
    dir: &Path,
    tensors: &mut Vec<TensorInfo>,
    others: &mut Vec<(String, Object)>,
) {
    match obj {
        Object::Dict(items) => {
            for (k, v) in items {
                let k = key_string(k);
                if k == "_metadata" {
                    continue; // the per-module versions torch attaches to state dicts
                }
                let child = if name.is_empty() {
                    k
                } else {
                    format!("{name}.{k}")
                };
                walk(v, child, dir, tensors, others);
            }
        }
        obj @ (Object::Reduce { .. } | Object::Build { .. }) => {
            let keep = obj.clone();
            match obj.into_tensor_info(Object::Unicode(name.clone()), dir) {
                Ok(Some(info)) => tensors.push(info),
                Ok(None) | Err(_) => others.push((name, keep)),
            }
        }
        obj => others.push((name, obj)),
    }
}

fn read_raw(path: &Path, device: &Device) -> Result<RawFile> {
    let (root, dir, mut storages) = match sniff(path)? {
        Format::Zip => open_zip(path)?,
        Format::Legacy => open_legacy(path)?,
        Format::Other => {
            return Err(bad(
                path,
                "not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) \
                 nor a pickle (older torch.save)",
            ))
        }
    };
    let root = match root {
        d @ Object::Dict(_) => d,
        other => {
            let what = match class_of(&other) {
                Some(c)
                    if c.ends_with("_rebuild_tensor_v2") || c.ends_with("_rebuild_parameter") =>
                {
                    "a single tensor".to_string()
                }
                Some(c) => format!("a pickled `{c}` object"),
                None => format!("{other:?}").chars().take(60).collect(),
            };
            return Err(bad(
                path,
                format!(
                    "not a state dict: the file holds {what}, not a dict of tensors \
                     (save `model.state_dict()` instead)"
                ),
            ));
        }
    };
    let mut infos = Vec::new();
    let mut others = Vec::new();
    walk(root, String::new(), &dir, &mut infos, &mut others);
    let mut cache: HashMap<String, std::sync::Arc<Vec<u8>>> = HashMap::new();
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let bytes = match cache.get(&info.path) {
            Some(b) => b.clone(),
            None => {
                let b = std::sync::Arc::new(storages.read(path, &info)?);
                cache.insert(info.path.clone(), b.clone());
                b
            }
        };
        let t = tensor_from_storage(path, &info, &bytes, device)?;
        tensors.push((info.name, t));
    }
    Ok(RawFile { tensors, others })
}

fn open_zip(path: &Path) -> Result<(Object, PathBuf, Storages)> {
    let file = std::fs::File::open(path).map_err(|e| read_err(path)(e.into()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        bad(
            path,
            format!("a damaged zip archive (truncated or corrupt?): {e}"),
        )
    })?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(path, format!("a damaged zip archive: {e}")))?;
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| {
            bad(
                path,
                "a zip archive without `data.pkl`: not a torch.save file",
            )
        })?
        .clone();
    if let Some(order) = names.iter().find(|n| n.ends_with("/byteorder")) {
        let mut s = String::new();
        zip.by_name(order)
            .and_then(|mut f| f.read_to_string(&mut s).map_err(Into::into))
            .map_err(|e| read_err(path)(e.into()))?;
        if s.trim() != "little" {
            return Err(bad(
                path,
                format!("byte order `{}` is not supported", s.trim()),
            ));
        }
    }
    let root = {
        let entry = zip.by_name(&pkl).map_err(|e| read_err(path)(e.into()))?;
        parse_pickle(path, &mut BufReader::new(entry), "data.pkl")?
    };
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    Ok((root, dir, Storages::Zip(zip)))
}

fn open_legacy(path: &Path) -> Result<(Object, PathBuf, Storages)> {
    let file = std::fs::File::open(path).map_err(|e| read_err(path)(e.into()))?;
    let mut r = BufReader::new(file);
    let mut magic = [0u8; LEGACY_MAGIC.len()];
    let n = read_up_to(&mut r, &mut magic).map_err(|e| read_err(path)(e.into()))?;
    if n < magic.len() || magic != LEGACY_MAGIC {
        return Err(bad(
            path,
            "a pickle without PyTorch's magic number: not a torch.save file",
        ));
    }
    let _protocol = parse_pickle(path, &mut r, "protocol version")?;
    let sys_info = parse_pickle(path, &mut r, "system info")?;
    if let Object::Dict(kv) = &sys_info {
        let little = kv
            .iter()
            .find(|(k, _)| *k == Object::Unicode("little_endian".into()))
            .map(|(_, v)| v.clone());
        if little == Some(Object::Bool(false)) {
            return Err(bad(path, "big-endian files are not supported"));
        }
    }
    let root = parse_pickle(path, &mut r, "main")?;
    let keys = parse_pickle(path, &mut r, "storage keys")?;
    let keys: Vec<String> = match keys {
        Object::List(v) => v.into_iter().map(key_string).collect(),
        other => {
            return Err(bad(
                path,
                format!("expected the list of storage keys, found {other:?}"),
            ))
        }
    };
    let mut sizes = HashMap::new();
    collect_storages(&root, &mut sizes);
    let len = std::fs::metadata(path)
        .map_err(|e| read_err(path)(e.into()))?
        .len();
    let mut pos = r.stream_position().map_err(|e| read_err(path)(e.into()))?;
    let mut offsets = HashMap::new();
    let mut file = r.into_inner();
    for key in keys {
        let elem = *sizes.get(&key).ok_or_else(|| {
            bad(
                path,
                format!("storage `{key}` is listed but no tensor uses it"),
            )
        })? as u64;
        let mut n = [0u8; 8];
        file.seek(SeekFrom::Start(pos))
            .and_then(|_| file.read_exact(&mut n))
            .map_err(|_| bad(path, format!("truncated: storage `{key}` is missing")))?;
        let numel = u64::from_le_bytes(n);
        let start = pos + 8;
        let end = numel
            .checked_mul(elem)
            .and_then(|b| start.checked_add(b))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                bad(
                    path,
                    format!("truncated: storage `{key}` ({numel} elements) runs past the end"),
                )
            })?;
        offsets.insert(key, (start, numel));
        pos = end;
    }
    Ok((root, PathBuf::new(), Storages::Legacy { file, offsets }))
}

impl Storages {
    /// The bytes of the storage a tensor views.
    fn read(&mut self, path: &Path, info: &TensorInfo) -> Result<Vec<u8>> {
        let elem = info.dtype.size_in_bytes();
        match self {
            Storages::Zip(zip) => {
                let mut entry = zip.by_name(&info.path).map_err(|e| {
                    bad(
                        path,
                        format!("tensor `{}`: storage `{}`: {e}", info.name, info.path),
                    )
                })?;
                let mut bytes = Vec::with_capacity(info.storage_size * elem);
                entry.read_to_end(&mut bytes).map_err(|e| {
                    bad(
                        path,
                        format!(
                            "tensor `{}`: reading storage `{}`: {e}",
                            info.name, info.path
                        ),
                    )
                })?;
                Ok(bytes)
            }
            Storages::Legacy { file, offsets } => {
                let key = info.path.trim_start_matches('/');
                let &(start, numel) = offsets.get(key).ok_or_else(|| {
                    bad(
                        path,
                        format!("tensor `{}`: storage `{key}` is not in the file", info.name),
                    )
                })?;
                let mut bytes = vec![0u8; numel as usize * elem];
                file.seek(SeekFrom::Start(start))
                    .and_then(|_| file.read_exact(&mut bytes))
                    .map_err(|e| {
                        bad(
                            path,
                            format!("tensor `{}`: reading storage `{key}`: {e}", info.name),
                        )
                    })?;
                Ok(bytes)
            }
        }
    }
}

/// Builds a tensor from its storage's bytes, following its offset and strides.
fn tensor_from_storage(
    path: &Path,
    info: &TensorInfo,
    bytes: &[u8],
    device: &Device,
) -> Result<Tensor> {
    let elem = info.dtype.size_in_bytes();
    let shape = info.layout.dims().to_vec();
    let stride = info.layout.stride();
    let start = info.layout.start_offset();
    let numel: usize = shape.iter().product();
    // The last byte any element reads.
    let reach = shape
        .iter()
        .zip(stride)
        .map(|(&d, &s)| d.saturating_sub(1) * s)
        .sum::<usize>();
    let end = start + (reach + 1) * elem;
    if numel > 0 && end > bytes.len() {
        return Err(bad(
            path,
            format!(
                "tensor `{}` ({:?}, {:?}) reaches byte {end} of a storage of {} bytes \
                 (truncated or corrupt)",
                info.name,
                shape,
                info.dtype,
                bytes.len()
            ),
        ));
    }
    let data: std::borrow::Cow<'_, [u8]> = if numel == 0 {
        std::borrow::Cow::Borrowed(&[])
    } else if info.layout.is_contiguous() {
        std::borrow::Cow::Borrowed(&bytes[start..start + numel * elem])
    } else {
        // A view (a transpose, a slice): gather element by element.
        let mut out = Vec::with_capacity(numel * elem);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..numel {
            let off = start + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>() * elem;
            out.extend_from_slice(&bytes[off..off + elem]);
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        std::borrow::Cow::Owned(out)
    };
    Tensor::from_raw_buffer(&data, info.dtype, &shape, device).map_err(read_err(path))
}

/// Every tensor of a PyTorch checkpoint under its dotted path in the file
/// (`state_dict_best.feat_model.module.conv1.weight`), in file order;
/// nothing renamed. Most callers want [`read_torch_checkpoint`].
pub fn read_pth(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    Ok(read_raw(path, device)?.tensors)
}

fn strip_module(mut key: &str) -> &str {
    while let Some(rest) = key.strip_prefix("module.") {
        key = rest;
    }
    key
}

/// Reads a PyTorch checkpoint and maps it onto this crate's names (see the
/// module docs for the layouts). A file that is not a checkpoint, is cut
/// short, or holds no tensors is an error naming it.
pub fn read_torch_checkpoint(path: &Path, device: &Device) -> Result<TorchCheckpoint> {
    let raw = read_raw(path, device)?;
    let names: Vec<&str> = raw.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let under = |p: &str| names.iter().any(|n| n.starts_with(p));
    let layout = if let Some(key) = ["state_dict_best", "state_dict"]
        .into_iter()
        .find(|k| under(&format!("{k}.feat_model.")))
    {
        TorchLayout::ClassifierBalancing { key: key.into() }
    } else if let Some(key) = ["state_dict", "model"]
        .into_iter()
        .find(|k| under(&format!("{k}.")))
    {
        TorchLayout::Wrapped { key: key.into() }
    } else {
        TorchLayout::StateDict
    };
    let mut tensors = BTreeMap::new();
    let mut ignored: Vec<String> = Vec::new();
    let mut duplicates = Vec::new();
    for (name, t) in raw.tensors {
        let mapped = match &layout {
            TorchLayout::StateDict => Some(strip_module(&name).to_string()),
            TorchLayout::Wrapped { key } => name
                .strip_prefix(&format!("{key}."))
                .map(|k| strip_module(k).to_string()),
            TorchLayout::ClassifierBalancing { key } => {
                if let Some(k) = name.strip_prefix(&format!("{key}.feat_model.")) {
                    Some(strip_module(k).to_string())
                } else if let Some(k) = name.strip_prefix(&format!("{key}.classifier.")) {
                    let k = strip_module(k);
                    Some(if k.starts_with("fc.") {
                        k.to_string()
                    } else {
                        format!("fc.{k}")
                    })
                } else {
                    None
                }
            }
        };
        match mapped {
            Some(k) if tensors.contains_key(&k) => duplicates.push(format!("{name} -> {k}")),
            Some(k) => {
                tensors.insert(k, t);
            }
            None => ignored.push(name),
        }
    }
    if !duplicates.is_empty() {
        return Err(bad(
            path,
            format!(
                "two tensors map to the same name: {}",
                duplicates.join(", ")
            ),
        ));
    }
    let mut epoch = None;
    for (name, obj) in raw.others {
        if name == "epoch" {
            epoch = obj.clone().int_or_long().ok();
        }
        ignored.push(name);
    }
    if tensors.is_empty() {
        let mut top: Vec<&str> = ignored
            .iter()
            .map(|n| n.split('.').next().unwrap_or(n))
            .collect();
        top.sort_unstable();
        top.dedup();
        return Err(bad(
            path,
            format!(
                "not a state dict: no tensors found (entries: {})",
                if top.is_empty() {
                    "none".to_string()
                } else {
                    top.join(", ")
                }
            ),
        ));
    }
    ignored.sort();
    Ok(TorchCheckpoint {
        path: path.to_path_buf(),
        layout,
        tensors,
        epoch,
        ignored,
    })
}

/// The architecture whose backbone has exactly the keys and shapes that
/// matter in `tensors` (torchvision names; `fc.*` and `num_batches_tracked`
/// aside): the stem, the number of blocks per stage, the block type and
/// the ResNeXt groups. `None` when no architecture of [`Arch::ALL`] fits;
/// loading then tells which keys differ.
pub fn infer_arch(tensors: &BTreeMap<String, Tensor>) -> Option<Arch> {
    let stem = tensors.get("conv1.weight")?.dims().to_vec();
    let mut blocks = [0usize; 4];
    for key in tensors.keys() {
        let Some(rest) = key.strip_prefix("layer") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(stage), Some(block)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(stage), Ok(block)) = (stage.parse::<usize>(), block.parse::<usize>()) else {
            continue;
        };
        if (1..=4).contains(&stage) {
            blocks[stage - 1] = blocks[stage - 1].max(block + 1);
        }
    }
    let bottleneck = tensors.contains_key("layer1.0.conv3.weight");
    let groups = tensors.get("layer1.0.conv2.weight").map(|w| {
        let d = w.dims();
        // (out, in / groups, k, k): groups = width / (in / groups).
        if d.len() == 4 && d[1] > 0 {
            d[0] / d[1]
        } else {
            1
        }
    });
    Arch::ALL.into_iter().find(|a| match a.config() {
        ArchConfig::Cifar(c) => {
            stem.get(2) == Some(&3)
                && blocks[3] == 0
                && blocks[..3] == [c.blocks_per_stage; 3]
                && !bottleneck
                && (c.shortcut == crate::Shortcut::Projection)
                    == tensors.contains_key("layer2.0.downsample.0.weight")
                && stem.first() == Some(&c.widths[0])
        }
        ArchConfig::ImageNet(c) => {
            stem.get(2) == Some(&7)
                && blocks == c.layers
                && bottleneck == (c.block == BlockKind::Bottleneck)
                && groups.unwrap_or(1) == c.groups
        }
        // Other families (if any) are not torchvision ResNets.
        #[allow(unreachable_patterns)]
        _ => false,
    })
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The checkpoint's layout.
    pub layout: TorchLayout,
    /// The architecture it was checked against.
    pub arch: Arch,
    /// Number of tensors written.
    pub tensors: usize,
    /// The classifier tensors written (`fc.*`), if the file had any.
    pub classifier: Vec<String>,
    /// Entries of the source set aside (see [`TorchCheckpoint::ignored`]).
    pub ignored: Vec<String>,
}

/// Writes the tensors of a PyTorch checkpoint to a safetensors file under
/// torchvision names (the backbone, and the classifier as `fc.*` when the
/// file has one), after checking the backbone against `arch` (or the
/// architecture [`infer_arch`] recognises): every missing, unexpected or
/// mis-shaped key is reported in one error, a NaN or an infinity is an
/// error naming the tensor, and nothing is written unless every check
/// passes. The file is written to a temporary name and renamed into place;
/// its header metadata holds [`CONVERT_META_KEY`].
pub fn convert(input: &Path, output: &Path, arch: Option<Arch>) -> Result<ConvertReport> {
    let device = Device::Cpu;
    let ckpt = read_torch_checkpoint(input, &device)?;
    let arch = match arch.or_else(|| infer_arch(&ckpt.tensors)) {
        Some(a) => a,
        None => {
            return Err(bad(
                input,
                format!(
                    "the keys and shapes match no known architecture ({}); pass the \
                     architecture to see which keys differ",
                    Arch::ALL.map(Arch::name).join(", ")
                ),
            ))
        }
    };
    check_against(&ckpt, arch)?;
    for (name, t) in &ckpt.tensors {
        if t.dtype().is_float() {
            let t32 = t.to_dtype(DType::F32)?;
            // x - x is 0 for every finite x and NaN otherwise.
            let s = t32.broadcast_sub(&t32)?.sum_all()?.to_scalar::<f32>()?;
            if s != 0.0 {
                return Err(bad(
                    input,
                    format!("tensor `{name}` holds NaN or infinite values"),
                ));
            }
        }
    }
    let meta = format!(
        "{{\"source\":{},\"layout\":{},\"arch\":\"{}\",\"epoch\":{}}}",
        json_string(
            &input
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        json_string(&ckpt.layout.to_string()),
        arch.name(),
        ckpt.epoch.map_or("null".to_string(), |e| e.to_string()),
    );
    let contiguous: Vec<(String, Tensor)> = ckpt
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(
        contiguous.iter().map(|(k, t)| (k.as_str(), t)),
        Some(HashMap::from([(CONVERT_META_KEY.to_string(), meta)])),
    )
    .map_err(|e| ModelError::WriteCheckpoint {
        path: output.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::store::write_bytes_atomic(&bytes, output)?;
    Ok(ConvertReport {
        layout: ckpt.layout,
        arch,
        tensors: contiguous.len(),
        classifier: ckpt
            .tensors
            .keys()
            .filter(|k| k.starts_with("fc."))
            .cloned()
            .collect(),
        ignored: ckpt.ignored,
    })
}

/// Checks a checkpoint's backbone tensors against `arch` (strict: missing,
/// unexpected and mis-shaped keys all reported), without keeping a model.
pub fn check_against(ckpt: &TorchCheckpoint, arch: Arch) -> Result<()> {
    let backbone = crate::Backbone::new(arch, &Device::Cpu, 0)?;
    backbone
        .store()
        .load_state_dict(ckpt.to_hash_map(), &ckpt.path.display().to_string(), true)
        .map(|_| ())
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safetensors_header_length_ending_in_0x80_is_not_a_pickle() {
        // Header length 0x280: its first byte is the pickle protocol opcode.
        let mut st = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, b'{'];
        assert_eq!(sniff_bytes(&st), Format::Other);
        st[8] = 0x8a;
        assert_eq!(sniff_bytes(&st), Format::Legacy);
        assert_eq!(sniff_bytes(&LEGACY_MAGIC), Format::Legacy);
        assert_eq!(sniff_bytes(b"PK\x03\x04rest"), Format::Zip);
        assert_eq!(sniff_bytes(&[]), Format::Other);
    }

    fn fake(shapes: &[(&str, &[usize])]) -> BTreeMap<String, Tensor> {
        let one = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        shapes
            .iter()
            .map(|(k, s)| {
                let t = one
                    .reshape(vec![1; s.len()])
                    .unwrap()
                    .broadcast_as(*s)
                    .unwrap();
                (k.to_string(), t)
            })
            .collect()
    }

    #[test]
    fn architectures_are_told_apart_by_their_keys() {
        for arch in [
            Arch::ResNet18,
            Arch::ResNet50,
            Arch::Resnext50_32x4d,
            Arch::ResNet32,
            Arch::ResNet32Ldam,
        ] {
            let b = crate::Backbone::new(arch, &Device::Cpu, 0).unwrap();
            let shapes: Vec<(String, Vec<usize>)> = b
                .store()
                .named_vars()
                .iter()
                .map(|(n, v)| (n.clone(), v.dims().to_vec()))
                .collect();
            let refs: Vec<(&str, &[usize])> = shapes
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_slice()))
                .collect();
            assert_eq!(infer_arch(&fake(&refs)), Some(arch), "{arch}");
        }
        assert_eq!(infer_arch(&fake(&[("fc.weight", &[2, 3])])), None);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
