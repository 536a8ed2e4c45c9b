"""Self-describing, atomically written, pickle-free model checkpoints.

One ``.safetensors`` file holds:

- tensors: ``model.<state-dict key>`` (weights and BN statistics), ``objective.<key>`` (the
  objective's fitted state, e.g. the graph teacher) and, for resumable checkpoints,
  ``optim.<param index>.<name>`` (Adam moments and step counters);
- a JSON document in the safetensors header (``__metadata__["napari_4dstem_autoencoder"]``):
  model config and preset, objective config, preprocessing config and fitted statistics, input size, training
  config and history, optimiser structure (param groups and which state entries are tensors),
  scheduler state, package / torch / python versions, and a checksum (``sha256``): from
  format 3 a SHA-256 of the canonical JSON of the whole document (less the checksum) and of
  the digest of all tensor bytes, so that neither can change unnoticed; formats 1 and 2 had
  the tensor digest alone.

Loading parses that with safetensors and JSON only, so a file can never execute code. Before
a tensor is read or anything is built, the metadata is checked against a schema (types and
ranges of every field the loader uses); then the tensors are read (no more than the file
holds), the checksum is checked, and tensors with a NaN or infinite value are refused. A file
that is not ours (a PyTorch pickle, a random safetensors, a truncated or bit-flipped copy,
edited metadata, a checkpoint of an incompatible shape or a newer format) raises
:class:`CheckpointError` naming the file and the problem (the field, for metadata).

Writes go through ``_files.atomic_write_bytes`` (every output of the package does): a temporary ``.<name>.<16 hex>.stem-ae.tmp`` in
the target's directory, verified (size, and for checkpoints the header read back) before it is
renamed over the target. Temporaries that a killed writer left behind are removed by the next
write into that directory (``_files.remove_stale_temporaries``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from .. import __version__
from .._files import atomic_write_bytes
from ..data.preprocess import PreprocessConfig, Preprocessor, PreprocessStats
from ..model.autoencoder import Autoencoder
from ..model.config import MIN_INPUT_SIZE, ModelConfig
from ..objective.config import ObjectiveConfig
from ..objective.objective import Objective
from .config import TrainConfig
from .presets import DEFAULT_PRESET, PRESETS

log = logging.getLogger(__name__)

FORMAT_NAME = "napari-4dstem-autoencoder/checkpoint"
#: 3: the checksum covers the metadata as well as the tensors; format 2 files (tensor
#: checksum only) still load, with every other check applied.
#: 2: the objective (config and fitted state) is saved apart from the architecture; format 1
#: files are migrated on load (:func:`_migrate_format_1`)
FORMAT_VERSION = 3
_META_KEY = "napari_4dstem_autoencoder"
_MAX_HEADER_BYTES = 100 * 1024 * 1024

#: every ``ModelConfig`` has the same trainable parameters (model/config.py)
EXPECTED_PARAMETERS = 3_914_404
#: the input sizes a checkpoint may describe (the decoder's output prior is input-sized)
MAX_INPUT_SIZE = 4096
_MAX_DETECTOR_SIZE = 1 << 16



class CheckpointError(ValueError):
    """A file that cannot be loaded as a model checkpoint (the message says why)."""


@dataclass
class LoadedModel:
    """A checkpoint read back: the model (eval mode) and everything needed to use or resume it."""

    model: Autoencoder
    preprocessor: Preprocessor
    objective: Objective
    train_config: TrainConfig | None
    history: list[dict[str, Any]]
    metadata: dict[str, Any]
    path: Path | None  # None: a model in memory that was never saved
    input_shape: tuple[int, int]
    epoch: int = 0
    global_step: int = 0
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> str | None:
        """The preset the model was trained from (``None``: not recorded)."""
        return self.metadata.get("preset")


# -- writing --------------------------------------------------------------------------------

def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind DDP (``.module``), ``torch.compile`` (``._orig_mod``) or wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        for attr in ("module", "_orig_mod", "autoencoder"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
    return model


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer,
                          tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Flatten an optimiser state dict: tensors into ``tensors``, structure into JSON."""
    sd = optimizer.state_dict()
    state: dict[str, Any] = {}
    for idx, entries in sd["state"].items():
        out = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"optim.{idx}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                out[name] = {"tensor": key}
            else:
                out[name] = {"value": value}
        state[str(idx)] = out
    return {"param_groups": sd["param_groups"], "state": state}


def _optimizer_from_tensors(structure: dict[str, Any], tensors: dict[str, torch.Tensor]
                            ) -> dict[str, Any]:
    state = {}
    for idx, entries in structure["state"].items():
        state[int(idx)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"]
            for name, spec in entries.items()
        }
    return {"state": state, "param_groups": structure["param_groups"]}


def _checksum(meta: Mapping[str, Any], tensor_digest: str) -> str:
    """The format-3 checksum: SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of
    ``meta`` less its ``sha256``, then of the tensor digest. ``meta`` must be what JSON
    parsing gives (lists, str keys), as on load."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256(f"{FORMAT_NAME} 3\n".encode())
    h.update(text.encode("ascii"))
    h.update(f"\n{tensor_digest}".encode())
    return h.hexdigest()


# -- the metadata schema --------------------------------------------------------------------

class _Bad(Exception):
    """One field that fails the schema (re-raised as a CheckpointError naming the file)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    shown = repr(v)
    return (f"{names.get(type(v), type(v).__name__)} "
            f"({shown if len(shown) <= 40 else shown[:37] + '...'})")


def _mapping(v: Any, where: str, *, optional: bool = False) -> dict[str, Any] | None:
    if v is None and optional:
        return None
    if not isinstance(v, dict):
        raise _Bad(where, f"must be a mapping{' or null' if optional else ''}, got {_kind(v)}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(where, f"must be a list, got {_kind(v)}")
    return v


def _int(v: Any, where: str, lo: int | None = 0, hi: int | None = None) -> int:
    if not _is_int(v):
        raise _Bad(where, f"must be an integer, got {_kind(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = (f"in [{lo}, {hi}]" if lo is not None and hi is not None
                  else f">= {lo}" if lo is not None else f"<= {hi}")
        raise _Bad(where, f"must be {bounds}, got {v}")
    return v


def _real(v: Any, where: str, *, optional: bool = False, finite: bool = True) -> float | None:
    if v is None and optional:
        return None
    if not _is_real(v):
        raise _Bad(where, f"must be a number{' or null' if optional else ''}, got {_kind(v)}")
    if finite and not math.isfinite(v):
        raise _Bad(where, f"must be finite, got {v}")
    return float(v)


def _pair(v: Any, where: str, lo: int, hi: int) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise _Bad(where, f"must be a list of two integers, got {_kind(v)}")
    return (_int(v[0], f"{where}[0]", lo, hi), _int(v[1], f"{where}[1]", lo, hi))


def _only(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise _Bad(where, f"unknown fields {sorted(unknown)}")


def _config(cls: Any, v: Any, where: str) -> Any:
    _mapping(v, where)
    try:
        return cls.from_dict(v)
    except Exception as exc:  # the configs raise ValueError/TypeError for what they refuse
        raise _Bad(where, f"incompatible ({exc})") from None


@dataclass
class _Described:
    """What the validated metadata describes, parsed (nothing built, nothing allocated)."""

    model_config: ModelConfig
    objective_config: ObjectiveConfig
    fitted: bool
    input_shape: tuple[int, int]
    preprocessor: Preprocessor
    train_config: TrainConfig | None
    history: list[dict[str, Any]]
    epoch: int
    global_step: int


def _parse_stats(v: Any) -> PreprocessStats:
    where = "preprocessing.stats"
    if v is None:
        raise _Bad(where, "is null: the preprocessing was never fitted, so the model's inputs "
                          "cannot be reproduced")
    stats = _mapping(v, where)
    _only(stats, {"lo", "hi", "bad_pixels", "input_detector_shape"}, where)
    lo = _real(stats.get("lo"), f"{where}.lo")
    hi = _real(stats.get("hi"), f"{where}.hi")
    if not hi > lo:
        raise _Bad(f"{where}.hi", f"must be greater than lo ({lo}), got {hi} (normalising by "
                                  "hi - lo would give NaN or infinite inputs)")
    if not math.isfinite(hi - lo):
        raise _Bad(f"{where}.hi", f"hi - lo must be finite, got {hi} - {lo}")
    shape = _pair(stats.get("input_detector_shape", [0, 0]), f"{where}.input_detector_shape",
                  0, _MAX_DETECTOR_SIZE)
    if (shape[0] == 0) != (shape[1] == 0):
        raise _Bad(f"{where}.input_detector_shape", f"must be two positive sizes or [0, 0] "
                                                    f"(not recorded), got {list(shape)}")
    bad = _list(stats.get("bad_pixels", []), f"{where}.bad_pixels")
    limit = shape[0] * shape[1] if shape[0] else None
    if limit is not None and len(bad) > limit:
        raise _Bad(f"{where}.bad_pixels", f"lists {len(bad)} pixels of a {shape[0]}x{shape[1]} "
                                          "detector")
    for i, p in enumerate(bad):
        y, x = _pair(p, f"{where}.bad_pixels[{i}]", 0, _MAX_DETECTOR_SIZE)
        if limit is not None and not (y < shape[0] and x < shape[1]):
            raise _Bad(f"{where}.bad_pixels[{i}]", f"{[y, x]} lies outside the {shape[0]}x"
                                                   f"{shape[1]} detector")
    return PreprocessStats(lo=lo, hi=hi, bad_pixels=[tuple(p) for p in bad],
                           input_detector_shape=shape)


def _check_losses(v: Any, where: str) -> None:
    losses = _mapping(v, where, optional=True)
    for name, value in (losses or {}).items():
        _real(value, f"{where}.{name}", optional=True, finite=False)


def _check_optimizer_structure(v: Any) -> None:
    where = "optimizer"
    opt = _mapping(v, where, optional=True)
    if opt is None:
        return
    _only(opt, {"param_groups", "state"}, where)
    groups = _list(opt.get("param_groups"), f"{where}.param_groups")
    if not groups:
        raise _Bad(f"{where}.param_groups", "is empty")
    seen: set[int] = set()
    for g, group in enumerate(groups):
        group = _mapping(group, f"{where}.param_groups[{g}]")
        params = _list(group.get("params"), f"{where}.param_groups[{g}].params")
        for i, idx in enumerate(params):
            _int(idx, f"{where}.param_groups[{g}].params[{i}]")
            if idx in seen:
                raise _Bad(f"{where}.param_groups[{g}].params[{i}]", f"parameter {idx} is listed "
                                                                     "twice")
            seen.add(idx)
        for key in ("lr", "weight_decay", "eps"):
            if key in group:
                _real(group[key], f"{where}.param_groups[{g}].{key}")
    state = _mapping(opt.get("state"), f"{where}.state")
    for idx, entries in state.items():
        here = f"{where}.state[{idx!r}]"
        if not (idx.isdigit() and int(idx) in seen):
            raise _Bad(here, "is not a parameter index of the param groups")
        for name, spec in _mapping(entries, here).items():
            spec = _mapping(spec, f"{here}.{name}")
            if set(spec) == {"tensor"}:
                key = spec["tensor"]
                if not isinstance(key, str) or not key.startswith("optim."):
                    raise _Bad(f"{here}.{name}.tensor", f"must name an optim.* tensor, got "
                                                        f"{_kind(key)}")
            elif set(spec) != {"value"}:
                raise _Bad(f"{here}.{name}", "must be {\"tensor\": name} or {\"value\": value}")


def _parse_metadata(meta: dict[str, Any], version: int) -> _Described:
    model_config = _config(ModelConfig, meta.get("model_config"), "model_config")
    objective = _mapping(meta.get("objective"), "objective")
    objective_config = _config(ObjectiveConfig, objective.get("config"), "objective.config")
    fitted = objective.get("fitted", False)
    if not isinstance(fitted, bool):
        raise _Bad("objective.fitted", f"must be true or false, got {_kind(fitted)}")
    preset = meta.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise _Bad("preset", f"must be a preset name or null, got {_kind(preset)}")
    if version >= 2 or "parameters" in meta:
        n = _int(meta.get("parameters"), "parameters")
        if n != EXPECTED_PARAMETERS:
            raise _Bad("parameters", f"is {n:,}, but the model it describes has "
                                     f"{EXPECTED_PARAMETERS:,}")
    input_shape = _pair(meta.get("input_shape"), "input_shape", MIN_INPUT_SIZE, MAX_INPUT_SIZE)

    prep = _mapping(meta.get("preprocessing"), "preprocessing")
    _only(prep, {"config", "stats"}, "preprocessing")
    prep_config = _config(PreprocessConfig, prep.get("config"), "preprocessing.config")
    preprocessor = Preprocessor(prep_config, _parse_stats(prep.get("stats")))

    train_config = None
    if meta.get("train_config") is not None:
        train_config = _config(TrainConfig, meta["train_config"], "train_config")

    history = _list(meta.get("history", []) if version == 1 else meta.get("history"), "history")
    for i, entry in enumerate(history):
        here = f"history[{i}]"
        entry = _mapping(entry, here)
        for key in ("epoch", "global_step"):
            if key in entry:
                _int(entry[key], f"{here}.{key}")
        for key in ("train", "val"):
            if key in entry:
                _check_losses(entry[key], f"{here}.{key}")
        for key in ("lr", "seconds"):
            if key in entry:
                _real(entry[key], f"{here}.{key}", optional=True, finite=False)

    default = 0 if version == 1 else None
    epoch = _int(meta.get("epoch", default), "epoch")
    global_step = _int(meta.get("global_step", default), "global_step")
    _check_optimizer_structure(meta.get("optimizer"))
    _mapping(meta.get("scheduler"), "scheduler", optional=True)
    _mapping(meta.get("extra"), "extra", optional=True)
    _mapping(meta.get("versions"), "versions", optional=True)
    if meta.get("created") is not None and not isinstance(meta["created"], str):
        raise _Bad("created", f"must be a string, got {_kind(meta['created'])}")
    return _Described(model_config=model_config, objective_config=objective_config,
                      fitted=fitted, input_shape=input_shape, preprocessor=preprocessor,
                      train_config=train_config, history=history, epoch=epoch,
                      global_step=global_step)


def _check_metadata(path: Path, meta: dict[str, Any], version: int, *,
                    writing: bool = False) -> _Described:
    try:
        return _parse_metadata(meta, version)
    except _Bad as bad:
        what = ("refusing to write a checkpoint with invalid metadata" if writing
                else "invalid checkpoint metadata")
        raise CheckpointError(f"{path}: {what}: {bad}") from None


_TENSOR_PREFIXES = ("model.", "objective.", "optim.")


def _all_finite(t: torch.Tensor) -> bool:
    # numpy where it can (single-threaded: hundreds of small torch ops on a busy machine wait
    # for its thread pool), torch for the dtypes numpy lacks (bfloat16)
    try:
        return bool(np.isfinite(t.detach().cpu().numpy()).all())
    except (TypeError, RuntimeError):
        return bool(torch.isfinite(t).all())


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   version: int, *, writing: bool = False) -> None:
    """Known names only (format 2 on), every value finite, every optimiser reference present."""
    what = "refusing to write" if writing else "corrupt checkpoint"
    for key, t in tensors.items():
        if version >= 2 and not key.startswith(_TENSOR_PREFIXES):
            raise CheckpointError(f"{path}: {what}: unexpected tensor {key!r}")
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not _all_finite(t):
            bad = int(t.numel() - torch.isfinite(t).sum())
            raise CheckpointError(f"{path}: {what}: tensor {key}: {bad} of {t.numel()} values "
                                  "are NaN or infinite")
    for idx, entries in ((meta.get("optimizer") or {}).get("state") or {}).items():
        for name, spec in entries.items():
            if "tensor" in spec and spec["tensor"] not in tensors:
                raise CheckpointError(f"{path}: {what}: optimizer.state[{idx!r}].{name} names the "
                                      f"tensor {spec['tensor']!r}, which the file does not hold")


def _check_optimizer_fits(path: Path, structure: dict[str, Any], model: nn.Module,
                          tensors: dict[str, torch.Tensor]) -> None:
    params = list(model.parameters())
    listed = sum(len(g["params"]) for g in structure["param_groups"])
    if listed != len(params) or any(i >= len(params) for g in structure["param_groups"]
                                    for i in g["params"]):
        raise CheckpointError(f"{path}: invalid checkpoint metadata: optimizer.param_groups: "
                              f"lists {listed} parameters, the model has {len(params)}")
    for idx, entries in structure["state"].items():
        shape = tuple(params[int(idx)].shape)
        for name, spec in entries.items():
            if "tensor" in spec:
                got = tuple(tensors[spec["tensor"]].shape)
                if got not in ((), shape):
                    raise CheckpointError(
                        f"{path}: incompatible optimiser state: optimizer.state[{idx!r}].{name} "
                        f"is {list(got)}, its parameter is {list(shape)}")


def _verify_written(tmp: Path, header: dict[str, str], keys: set[str]) -> None:
    """The temporary reads back as the checkpoint that was meant: same header, same tensors."""
    with safe_open(str(tmp), framework="pt", device="cpu") as f:
        if (f.metadata() or {}) != header:
            raise ValueError("its header differs from the one written")
        if set(f.keys()) != keys:
            raise ValueError("its tensors differ from the ones written")


def trained_model(
    model: nn.Module,
    preprocessor: Preprocessor,
    objective: Objective | None = None,
    config: TrainConfig | None = None,
    history: list[dict[str, Any]] | None = None,
    *,
    epoch: int = 0,
    global_step: int = 0,
    path: str | os.PathLike = "",
    input_shape: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> LoadedModel:
    """A model in memory described as a checkpoint describes it (what ``load_checkpoint`` of
    the file :func:`save_checkpoint` writes from the same arguments returns, apart from the
    optimiser state): lets a finished run be used without reading its checkpoint back.

    ``objective`` defaults to the config's, unfitted.
    """
    model = unwrap_model(model)
    if not isinstance(model, Autoencoder):
        raise TypeError(f"expected an Autoencoder, got {type(model).__name__}")
    if preprocessor.stats is None:
        raise ValueError("the preprocessor is not fitted; a checkpoint needs its statistics")
    if objective is None:
        objective = Objective(config.objective_config() if config is not None
                              else ObjectiveConfig(), model.config.latent_dim)
    input_shape = tuple(int(n) for n in (input_shape or model.out_shape))
    history = list(history or [])
    metadata = {
        "model_config": model.config.to_dict(),
        "objective": {"config": objective.config.to_dict(), "fitted": objective.fitted},
        "preset": config.preset if config is not None else None,
        "parameters": model.num_parameters(),
        "input_shape": list(input_shape),
        "preprocessing": preprocessor.to_dict(),
        "train_config": config.to_dict() if config is not None else None,
        "history": history,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "versions": {"napari_4dstem_autoencoder": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "extra": dict(extra or {}),
    }
    return LoadedModel(model=model, preprocessor=preprocessor, objective=objective,
                       train_config=config, history=history, metadata=metadata,
                       path=Path(path) if path else None,
                       input_shape=input_shape, epoch=int(epoch), global_step=int(global_step),
                       extra=dict(extra or {}))


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    preprocessor: Preprocessor,
    config: TrainConfig | None = None,
    history: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    objective: Objective | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler_state: dict[str, Any] | None = None,
    epoch: int = 0,
    global_step: int = 0,
    input_shape: tuple[int, int] | None = None,
) -> Path:
    """Atomically write a checkpoint; returns its path.

    ``extra`` is any JSON-serialisable mapping kept in the metadata. ``objective`` (default:
    the config's, unfitted) is saved with its fitted state. ``optimizer`` and
    ``scheduler_state`` make the checkpoint resumable; ``epoch`` counts completed epochs.
    """
    loaded = trained_model(model, preprocessor, objective, config, history, epoch=epoch,
                           global_step=global_step, path=path, input_shape=input_shape,
                           extra=extra)
    model, objective = loaded.model, loaded.objective
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    tensors.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
    optim_structure = _optimizer_to_tensors(optimizer, tensors) if optimizer is not None else None
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **loaded.metadata,
        "optimizer": optim_structure,
        "scheduler": scheduler_state,
    }
    path = Path(path)
    meta = json.loads(json.dumps(meta))  # exactly what a reader will parse (lists, str keys)
    _check_metadata(path, meta, FORMAT_VERSION, writing=True)
    _check_tensors(path, tensors, meta, FORMAT_VERSION, writing=True)
    meta["sha256"] = _checksum(meta, _tensor_digest(tensors))
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
              _META_KEY: json.dumps(meta)}
    keys = set(tensors)
    return atomic_write_bytes(path, safetensors_save(tensors, metadata=header),
                              verify=lambda tmp: _verify_written(tmp, header, keys))


# -- reading --------------------------------------------------------------------------------

def _sniff(path: Path) -> None:
    """Reject files that are clearly not safetensors before any parser touches them."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if 0 < n <= min(size - 8, _MAX_HEADER_BYTES) and head[8:9] == b"{":
        return  # a plausible safetensors header: let the parser judge the rest
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: is a zip archive (a PyTorch .pt/.pth pickle checkpoint?); pickles can run "
            "code when loaded, so they are refused - only safetensors checkpoints written by "
            "this package load"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(
            f"{path}: is a Python pickle; pickles can run code when loaded, so they are refused"
        )
    if len(head) < 9 or head[8:9] == b"{":
        raise CheckpointError(
            f"{path}: truncated (the header claims {n} bytes, the file has {size - 8} after it)")
    raise CheckpointError(f"{path}: not a checkpoint (no safetensors header)")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], _Described]:
    """Tensors, metadata and what it describes, every check done: the metadata's schema
    before a tensor is read, so a tampered header never makes anything allocate, then the
    checksum (over metadata and tensors from format 3) and the tensors' values."""
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if header.get("format") != FORMAT_NAME or _META_KEY not in header:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a napari-4dstem-autoencoder checkpoint "
            "(its metadata does not describe a model of this package)"
        )
    try:
        meta = json.loads(header[_META_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not a JSON object)")
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata: format_version: must be "
                              f"a positive integer, got {_kind(version)}")
    if version > FORMAT_VERSION:
        versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
        raise CheckpointError(
            f"{path}: written in checkpoint format {version} by a newer napari-4dstem-autoencoder "
            f"({versions.get('napari_4dstem_autoencoder', '?')}); this version "
            f"reads format {FORMAT_VERSION} - please upgrade"
        )
    raw = meta
    if version == 1:
        meta = _migrate_format_1(path, meta)
    described = _check_metadata(path, meta, version)
    try:  # bounded by the file's size: safetensors checked the header's offsets against it
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    digest = _tensor_digest(tensors)
    if version >= 3:
        if raw.get("sha256") != _checksum(raw, digest):
            raise CheckpointError(
                f"{path}: corrupt checkpoint (the checksum does not match: its metadata or its "
                "tensors were changed after the file was written)")
    elif raw.get("sha256") != digest:  # formats 1 and 2: the tensors only
        raise CheckpointError(f"{path}: corrupt checkpoint (the tensor checksum does not match)")
    _check_tensors(path, tensors, meta, version)
    return tensors, meta, described


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint, validated (format, version, checksums, schema,
    finite values); format 1 metadata comes back migrated."""
    tensors, meta, _ = _read(Path(path))
    return tensors, meta


#: format 1 kept the loss settings in the model config under these names (others: dropped
#: research options, refused below unless at their neutral value)
_FORMAT_1_NEUTRAL = {"reconstruction_weighting": "uniform", "lambda_corr": 0.0}
_FORMAT_1_PRESETS = {"graph": "regions", "prior": "continuous", "seed": "seed"}


def _migrate_format_1(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 metadata rewritten as format 2: the loss settings move from the model config
    to the objective config (the teacher is refitted on resume); research-only settings that
    this version no longer has are refused by name."""
    meta = dict(meta)
    try:
        old = dict(meta["model_config"])
        old_name = old.pop("name", "")
        for key in ("balance_min_variance", "balance_max_directions", "balance_max_gain"):
            old.pop(key, None)
        for key, neutral in _FORMAT_1_NEUTRAL.items():
            if old.pop(key, neutral) != neutral:
                raise CheckpointError(
                    f"{path}: trained with the research preset {old_name!r} ({key}), which this "
                    "version no longer has; retrain with one of " + ", ".join(PRESETS))
        if old.get("output_prior") == "mean_and_level" or old.get("divergence_form") in (
                "log_variance", "std_hinge"):
            raise CheckpointError(
                f"{path}: trained with the research preset {old_name!r}, which this version no "
                "longer has; retrain with one of " + ", ".join(PRESETS))
        objective_keys = {f for f in ObjectiveConfig.__dataclass_fields__}
        objective = {k: old.pop(k) for k in list(old) if k in objective_keys}
        meta["model_config"] = old
        meta["objective"] = {"config": objective, "fitted": False}
        preset = _FORMAT_1_PRESETS.get(old_name, DEFAULT_PRESET)
        meta["preset"] = preset
        train = meta.get("train_config")
        if train:
            train = dict(train)
            weights = {k: train.pop(k) for k in ("lambda_act", "lambda_sim", "lambda_div")}
            objective_cfg = {**objective, **{k: v for k, v in weights.items() if v is not None}}
            train.update(preset=preset, model=old, objective=objective_cfg)
            meta["train_config"] = train
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint without unpickling anything; the model is returned in eval mode.

    Everything the metadata says is checked before the model is built (:func:`read_checkpoint`).
    """
    path = Path(path)
    tensors, meta, d = _read(path)
    objective = Objective(d.objective_config, d.model_config.latent_dim)
    model = Autoencoder(latent_dim=d.model_config.latent_dim, out_shape=d.input_shape,
                        config=d.model_config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: incompatible checkpoint: its weights do not fit the model it describes "
            f"({' '.join(line.strip() for line in first[:3])})"
        ) from None
    if "parameters" in meta and model.num_parameters() != meta["parameters"]:
        raise CheckpointError(f"{path}: invalid checkpoint metadata: parameters: says "
                              f"{meta['parameters']:,}, the model has {model.num_parameters():,}")
    model.to(torch.device(device)).eval()
    objective_state = {k[len("objective."):]: v for k, v in tensors.items()
                       if k.startswith("objective.")}
    if d.fitted:
        try:
            objective.load_state_dict(objective_state)
        except Exception as exc:
            raise CheckpointError(f"{path}: incompatible objective state ({exc})") from None
    objective.to(device)
    optim_state = None
    if meta.get("optimizer"):
        _check_optimizer_fits(path, meta["optimizer"], model, tensors)
        optim_state = _optimizer_from_tensors(meta["optimizer"], tensors)
    return LoadedModel(
        model=model, preprocessor=d.preprocessor, objective=objective,
        train_config=d.train_config, history=list(d.history), metadata=meta, path=path,
        input_shape=d.input_shape, epoch=d.epoch, global_step=d.global_step,
        optimizer_state=optim_state, scheduler_state=meta.get("scheduler"),
        extra=dict(meta.get("extra") or {}),
    )


__all__ = ["CheckpointError", "LoadedModel", "save_checkpoint", "load_checkpoint",
           "read_checkpoint", "trained_model", "unwrap_model", "EXPECTED_PARAMETERS"]
