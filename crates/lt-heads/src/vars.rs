//! Registration of head parameters in a `VarMap` and shared input checks.

use crate::HeadError;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

/// Joins a prefix and a leaf name the way torchvision state dicts do
/// (`"fc"` + `"weight"` -> `"fc.weight"`; an empty prefix gives `"weight"`).
pub(crate) fn var_name(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

fn describe(t: &Tensor) -> String {
    format!("{:?} {:?}", t.dims(), t.dtype())
}

/// Stores `value` in `varmap` under `name` and returns the variable.
///
/// When the name is already present with the same shape and dtype, the existing
/// variable is overwritten in place and returned, so that a model can be built
/// and then loaded (`VarMap::load`) as usual in candle, and so that whoever
/// already holds that `Var` sees the new value. A different shape or dtype is an
/// error rather than a silent replacement.
pub(crate) fn register(varmap: &VarMap, name: &str, value: &Tensor) -> Result<Var, HeadError> {
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| HeadError::PoisonedVarMap)?;
    if let Some(existing) = data.get(name) {
        if existing.dims() != value.dims()
            || existing.dtype() != value.dtype()
            || !existing.device().same_device(value.device())
        {
            return Err(HeadError::VarConflict {
                name: name.to_string(),
                existing: describe(existing.as_tensor()),
                requested: describe(value),
            });
        }
        // `Var::set` refuses a source that shares the variable's storage (as when
        // a head is rebuilt from its own weights); a copy always has its own.
        existing.set(&value.copy()?)?;
        return Ok(existing.clone());
    }
    // A tensor that is already a variable would be shared rather than copied by
    // `Var::from_tensor`; detaching first forces a fresh copy of the storage.
    let var = Var::from_tensor(&value.detach())?;
    data.insert(name.to_string(), var.clone());
    Ok(var)
}

/// Checks that `features` is an f32 `(N, dim)` tensor; used by every
/// `Classifier::logits` so that a wrong input names the head and the shapes.
pub(crate) fn check_features(head: &str, features: &Tensor, dim: usize) -> candle_core::Result<()> {
    match features.dims() {
        [_, d] if *d == dim => {}
        dims => candle_core::bail!("{head}: features must have shape (N, {dim}), got {dims:?}"),
    }
    if features.dtype() != DType::F32 {
        candle_core::bail!("{head}: features must be f32, got {:?}", features.dtype());
    }
    Ok(())
}

/// Checks that `t` is an f32 tensor of exactly `dims`.
pub(crate) fn check_shape(what: &'static str, t: &Tensor, dims: &[usize]) -> Result<(), HeadError> {
    if t.dims() != dims || t.dtype() != DType::F32 {
        return Err(HeadError::Shape {
            what,
            expected: format!("{dims:?} F32"),
            got: describe(t),
        });
    }
    Ok(())
}

/// The `(rows, cols)` of a rank-2 f32 tensor.
pub(crate) fn matrix_dims(what: &'static str, t: &Tensor) -> Result<(usize, usize), HeadError> {
    match (t.dims(), t.dtype()) {
        (&[r, c], DType::F32) => Ok((r, c)),
        _ => Err(HeadError::Shape {
            what,
            expected: "a 2-D F32 tensor".to_string(),
            got: describe(t),
        }),
    }
}
