"""Self-describing, atomically written, pickle-free model checkpoints.

One ``.safetensors`` file holds:

- tensors: ``model.<state-dict key>`` (weights and BN statistics), ``objective.<key>`` (the
  objective's fitted state, e.g. the graph teacher) and, for resumable checkpoints,
  ``optim.<param index>.<name>`` (Adam moments and step counters);
- a JSON document in the safetensors header (``__metadata__["napari_4dstem_autoencoder"]``):
  model config and preset, objective config, preprocessing config and fitted statistics, input size, training
  config and history, optimiser structure (param groups and which state entries are tensors),
  scheduler state, package / torch / python versions, and a SHA-256 of all tensor bytes.

Loading parses that with safetensors and JSON only, so a file can never execute code; a
file that is not ours (a PyTorch pickle, a random safetensors, a truncated or bit-flipped copy,
a checkpoint of an incompatible shape or a newer format) raises :class:`CheckpointError`
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from .. import __version__
from ..data.preprocess import Preprocessor
from ..model.autoencoder import Autoencoder
from ..model.config import ModelConfig
from ..objective.config import ObjectiveConfig
from ..objective.objective import Objective
from .config import TrainConfig
from .presets import DEFAULT_PRESET, PRESETS

FORMAT_NAME = "napari-4dstem-autoencoder/checkpoint"
#: 2: the objective (config and fitted state) is saved apart from the architecture; format 1
#: files are migrated on load (:func:`_migrate_format_1`)
FORMAT_VERSION = 2
_META_KEY = "napari_4dstem_autoencoder"
_MAX_HEADER_BYTES = 100 * 1024 * 1024


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the new one.

    The bytes go to a temporary file in the same directory, are fsynced, then renamed over
    the target with ``os.replace`` (atomic on POSIX and Windows); the directory is fsynced so
    the rename survives a power cut. A failure leaves the old file and no temporary behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


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
        "sha256": _tensor_digest(tensors),
    }
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
              _META_KEY: json.dumps(meta)}
    return atomic_write_bytes(path, safetensors_save(tensors, metadata=header))


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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint, validated (format, version, checksum)."""
    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if header.get("format") != FORMAT_NAME or _META_KEY not in header:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a napari-4dstem-autoencoder checkpoint "
            "(its metadata does not describe a model of this package)"
        )
    try:
        meta = json.loads(header[_META_KEY])
        version = int(meta["format_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {version} by a newer napari-4dstem-autoencoder "
            f"({meta.get('versions', {}).get('napari_4dstem_autoencoder', '?')}); this version "
            f"reads format {FORMAT_VERSION} - please upgrade"
        )
    if meta.get("sha256") != _tensor_digest(tensors):
        raise CheckpointError(f"{path}: corrupt checkpoint (the tensor checksum does not match)")
    if version == 1:
        meta = _migrate_format_1(path, meta)
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
    """Load a checkpoint without unpickling anything; the model is returned in eval mode."""
    path = Path(path)
    tensors, meta = read_checkpoint(path)
    try:
        model_config = ModelConfig.from_dict(meta["model_config"])
        objective = Objective(ObjectiveConfig.from_dict(meta["objective"]["config"]),
                              model_config.latent_dim)
        input_shape = tuple(int(v) for v in meta["input_shape"])
        preprocessor = Preprocessor.from_dict(meta["preprocessing"])
        train_config = (TrainConfig.from_dict(meta["train_config"])
                        if meta.get("train_config") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: incompatible checkpoint metadata ({exc})") from None
    if len(input_shape) != 2:
        raise CheckpointError(f"{path}: incompatible input shape {input_shape}")
    model = Autoencoder(latent_dim=model_config.latent_dim, out_shape=input_shape,
                        config=model_config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: incompatible checkpoint: its weights do not fit the model it describes "
            f"({' '.join(line.strip() for line in first[:3])})"
        ) from None
    model.to(torch.device(device)).eval()
    objective_state = {k[len("objective."):]: v for k, v in tensors.items()
                       if k.startswith("objective.")}
    if meta["objective"].get("fitted"):
        try:
            objective.load_state_dict(objective_state)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: incompatible objective state ({exc})") from None
    objective.to(device)
    optim_state = None
    if meta.get("optimizer"):
        try:
            optim_state = _optimizer_from_tensors(meta["optimizer"], tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt optimiser state ({exc})") from None
    return LoadedModel(
        model=model, preprocessor=preprocessor, objective=objective, train_config=train_config,
        history=list(meta.get("history") or []), metadata=meta, path=path,
        input_shape=input_shape, epoch=int(meta.get("epoch", 0)),
        global_step=int(meta.get("global_step", 0)), optimizer_state=optim_state,
        scheduler_state=meta.get("scheduler"), extra=dict(meta.get("extra") or {}),
    )


__all__ = ["CheckpointError", "LoadedModel", "save_checkpoint", "load_checkpoint",
           "read_checkpoint", "trained_model", "atomic_write_bytes", "unwrap_model"]
