"""Zarr stores (HyperSpy ``.zspy``): refuse what would run code, before zarr reads anything."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import DatasetError

# numcodecs' Pickle codec decodes with pickle.loads: a .zspy whose array (metadata arrays
# included: rosettasciio reads `_list_*` arrays while opening) uses it runs code from the file
# under zarr 2 (and zarr 3.0). zarr 3.1 itself refuses the pickle codec, but the project allows
# zarr>=2.16, so the store's metadata documents are inspected here, whatever zarr is installed.

#: object codecs that decode to plain data (strings, bytes, numbers, nested lists) without
#: running code; any other object codec (pickle, or one this list does not know) is refused
SAFE_OBJECT_CODECS = frozenset({"vlen-utf8", "vlen-bytes", "vlen-array", "json2", "msgpack2"})
_METADATA_NAMES = (".zarray", ".zmetadata", "zarr.json")
_MAX_METADATA_BYTES = 64 * 2**20


def check_zarr_store(path: Path) -> None:
    """Raise :class:`DatasetError` when any array of a zarr store (zip or folder) could run code.

    Reads only the store's JSON metadata (``.zarray``, consolidated ``.zmetadata``,
    ``zarr.json``), never a chunk. Refused: any use of the pickle codec, and object-dtype arrays
    whose object codec is not one of :data:`SAFE_OBJECT_CODECS`.
    """
    for where, doc in _zarr_metadata_documents(path):
        problem = _zarr_document_problem(doc)
        if problem:
            key, what = problem
            array = f"{where}/{key}".strip("/") if key else where
            raise DatasetError(path, f"refused: the zarr array {array!r} {what}; decoding it "
                                     "could run code stored in the file")


def _zarr_metadata_documents(path: Path) -> Iterator[tuple[str, Any]]:
    def parse(name: str, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DatasetError(path, f"corrupt zarr metadata {name!r} ({exc})") from None

    if path.is_dir():
        seen: set[str] = set()
        for root, dirs, files in os.walk(path, followlinks=True):  # zarr follows links too
            real = os.path.realpath(root)
            if real in seen:  # a link back up the tree
                dirs[:] = []
                continue
            seen.add(real)
            for name in files:
                if name in _METADATA_NAMES:
                    full = os.path.join(root, name)
                    if not os.path.isfile(full):
                        continue
                    if os.path.getsize(full) > _MAX_METADATA_BYTES:
                        raise DatasetError(path, f"zarr metadata {name!r} is implausibly large")
                    with open(full, "rb") as fh:
                        rel = os.path.relpath(root, path)
                        yield ("" if rel == "." else rel), parse(name, fh.read())
        return
    if not zipfile.is_zipfile(path):
        raise DatasetError(path, "not a .zspy store: neither a folder nor a zip file")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():  # every entry, duplicates included
            base = info.filename.rsplit("/", 1)[-1]
            if base in _METADATA_NAMES:
                if info.file_size > _MAX_METADATA_BYTES:
                    raise DatasetError(path, f"zarr metadata {info.filename!r} is implausibly large")
                with zf.open(info) as fh:
                    yield info.filename.rsplit("/", 1)[0] if "/" in info.filename else "", \
                        parse(info.filename, fh.read(_MAX_METADATA_BYTES + 1))


def _zarr_document_problem(doc: Any, key: str = "") -> tuple[str, str] | None:
    """(array key, problem) for the first unsafe array a metadata document describes."""
    if not isinstance(doc, dict):
        return None
    consolidated = doc.get("metadata") if "zarr_consolidated_format" in doc else None
    if isinstance(consolidated, dict):  # v2 .zmetadata: {"a/b/.zarray": {...}, ...}
        for name, sub in consolidated.items():
            if str(name).endswith(".zarray"):
                found = _zarr_document_problem(sub, str(name).rsplit("/", 1)[0])
                if found:
                    return found
        return None
    inner = doc.get("consolidated_metadata")
    if isinstance(inner, dict) and isinstance(inner.get("metadata"), dict):  # v3 consolidated
        for name, sub in inner["metadata"].items():
            found = _zarr_document_problem(sub, f"{key}/{name}".strip("/"))
            if found:
                return found
    codecs: list[Any] = []
    if doc.get("zarr_format") == 2 or "dtype" in doc:  # a v2 .zarray
        codecs = [doc.get("compressor"), *(doc.get("filters") or [])]
        ids = [str(c.get("id", "")).lower() for c in codecs if isinstance(c, dict)]
        if any("pickle" in i for i in ids):
            return key, "uses the pickle codec, which unpickles Python objects"
        if _dtype_has_object(doc.get("dtype")):
            safe = [i for i in ids if i in SAFE_OBJECT_CODECS]
            if not safe:
                return key, (f"holds Python objects (dtype |O) encoded with "
                             f"{', '.join(ids) or 'no codec'}, not a plain-data object codec")
        return None
    if doc.get("node_type") == "array":  # v3 zarr.json
        names = [str(c.get("name", "")).lower() for c in doc.get("codecs") or []
                 if isinstance(c, dict)]
        if any("pickle" in n for n in names):
            return key, "uses a pickle codec, which unpickles Python objects"
        if str(doc.get("data_type", "")).lower() in ("object", "|o", "o"):
            return key, "holds Python objects (data type object)"
    return None


def _dtype_has_object(spec: Any) -> bool:
    if isinstance(spec, str):
        try:
            return np.dtype(spec).hasobject
        except TypeError:
            return "O" in spec
    if isinstance(spec, (list, tuple)):  # a structured dtype: [[name, dtype(, shape)], ...]
        return any(_dtype_has_object(field[1]) for field in spec
                   if isinstance(field, (list, tuple)) and len(field) >= 2)
    return False
