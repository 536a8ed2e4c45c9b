"""Files crafted to run code when opened: each is refused (or opened) without running any.

Every payload, if it ever ran, would create a marker file (``open(marker, "w")`` is what its
pickle calls); the tests assert the marker does not exist. Under zarr 2 (which the project's
``zarr>=2.16`` allows), rosettasciio's zspy reader unpickles the crafted ``_list_`` array while
opening the file; zarr 3.1 refuses the codec itself, so the zspy tests also check that the
refusal is the project's own (the message names the pickle codec), made before zarr runs.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import DatasetError, open_dataset
from napari_4dstem_autoencoder.data.zarr_safety import check_zarr_store


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled_object_array(marker: Path) -> bytes:
    """What numcodecs' Pickle codec stores for a 1-element object array holding the payload."""
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    return pickle.dumps(arr, protocol=5)


_EVIL_ZARRAY = {"chunks": [1], "compressor": None, "dtype": "|O", "fill_value": 0,
                "filters": [{"id": "pickle", "protocol": 5}], "order": "C", "shape": [1],
                "zarr_format": 2}


def _hostile_zspy_entries(real_data_dir: Path, marker: Path) -> dict[str, bytes]:
    """The real .zspy's entries plus a pickle-codec metadata array (also in .zmetadata)."""
    entries: dict[str, bytes] = {}
    with zipfile.ZipFile(real_data_dir / "derived/merlin_001_4x2.zspy") as z:
        for info in z.infolist():
            entries[info.filename] = z.read(info)  # the last duplicate wins, as zarr reads it
    group = next(n[: -len("/data/.zarray")] for n in entries if n.endswith("/data/.zarray"))
    key = f"{group}/original_metadata/_list_evil"  # rsciio reads _list_ arrays while opening
    entries[f"{key}/.zarray"] = json.dumps(_EVIL_ZARRAY).encode()
    entries[f"{key}/0"] = _pickled_object_array(marker)
    consolidated = json.loads(entries[".zmetadata"])
    consolidated["metadata"][f"{key}/.zarray"] = _EVIL_ZARRAY
    entries[".zmetadata"] = json.dumps(consolidated).encode()
    return entries


def _assert_refused(path: Path, marker: Path, match: str) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as err:
        open_dataset(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the file's code ran"
    return err.value


def test_zspy_zip_with_a_pickle_codec_array_is_refused_before_zarr_reads_it(real_data_dir, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.zspy"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in _hostile_zspy_entries(real_data_dir, marker).items():
            z.writestr(name, data)
    err = _assert_refused(path, marker, r"refused: the zarr array .*_list_evil.* pickle codec")
    assert "could run code" in str(err)


def test_zspy_folder_with_a_pickle_codec_array_is_refused(real_data_dir, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.zspy"
    for name, data in _hostile_zspy_entries(real_data_dir, marker).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    _assert_refused(path, marker, r"_list_evil.* pickle codec")
    # the napari reader refuses it too (the error names the file), and nothing ran
    from napari_4dstem_autoencoder.gui import hooks

    with pytest.raises(DatasetError, match="pickle codec"):
        hooks.read_4dstem(str(path))
    assert not marker.exists()


def test_zarr_check_reads_only_metadata_and_keeps_plain_data_object_codecs(tmp_path):
    store = tmp_path / "ok.zspy"
    (store / "strings").mkdir(parents=True)
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    strings = dict(_EVIL_ZARRAY, filters=[{"id": "vlen-utf8"}])
    (store / "strings/.zarray").write_text(json.dumps(strings))
    (store / "strings/0").write_bytes(b"\xff not even valid chunk data")  # never read
    check_zarr_store(store)  # plain-data object codecs pass
    # a pickle compressor on a numeric array, an unknown object codec, a v3 pickle codec: refused
    for name, doc in {
        "compressor": dict(_EVIL_ZARRAY, dtype="<u2", filters=None, compressor={"id": "pickle"}),
        "unknown": dict(_EVIL_ZARRAY, filters=[{"id": "my-own-codec"}]),
        "structured": dict(_EVIL_ZARRAY, dtype=[["a", "<u2"], ["b", "|O"]], filters=None),
    }.items():
        bad = tmp_path / f"{name}.zspy"
        (bad / "x").mkdir(parents=True)
        (bad / "x/.zarray").write_text(json.dumps(doc))
        with pytest.raises(DatasetError, match="refused: the zarr array 'x'"):
            check_zarr_store(bad)
    v3 = tmp_path / "v3.zspy"
    (v3 / "x").mkdir(parents=True)
    (v3 / "x/zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "data_type": "uint8",
        "codecs": [{"name": "numcodecs.pickle"}]}))
    with pytest.raises(DatasetError, match="pickle codec"):
        check_zarr_store(v3)


def test_npy_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"
    arr = np.empty((2, 2, 4, 4), dtype=object)
    arr[0, 0, 0, 0] = _Payload(marker)
    path = tmp_path / "evil.npy"
    np.save(path, arr, allow_pickle=True)
    assert not marker.exists()
    _assert_refused(path, marker, r"pickled object array\); refused without loading it")
    from napari_4dstem_autoencoder.gui import hooks

    assert hooks.get_reader(str(path)) is None  # the reader's header check declines it too
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["vlen-bytes", "object-references"])
def test_hdf5_object_datasets_are_never_pattern_data(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "objects.h5"
    payload = np.frombuffer(_pickled_object_array(marker), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        if kind == "vlen-bytes":  # a pickle blob in every element of a 4-D variable-length dataset
            ds = f.create_dataset("data", shape=(2, 2, 4, 4), dtype=h5py.vlen_dtype(np.uint8))
            for idx in np.ndindex(ds.shape):
                ds[idx] = payload
        else:
            target = f.create_dataset("target", data=np.arange(10))
            ds = f.create_dataset("data", shape=(2, 2, 4, 4), dtype=h5py.ref_dtype)
            for idx in np.ndindex(ds.shape):
                ds[idx] = target.ref
    _assert_refused(path, marker, "holds no 3-D or 4-D numeric dataset")
    what = "variable-length or Python-object" if kind == "vlen-bytes" else "HDF5 object references"
    with pytest.raises(DatasetError, match=f"dataset /data holds {what}"):
        open_dataset(path, dataset="/data")
    assert not marker.exists()


def test_hspy_attribute_holding_a_pickle_is_read_as_bytes_not_unpickled(real_data_dir, tmp_path):
    """HyperSpy stores binary metadata as `_bs_` attributes; rosettasciio keeps them as bytes."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.hspy"
    path.write_bytes((real_data_dir / "derived/merlin_001_4x2.hspy").read_bytes())
    with h5py.File(path, "r+") as f:
        group = f["Experiments"][next(iter(f["Experiments"]))]["metadata"]
        group.attrs["_bs_payload"] = np.void(_pickled_object_array(marker))
        group.attrs["link"] = f["Experiments"].ref  # an object reference: never followed
    with open_dataset(path) as ds:
        assert ds.shape == (2, 4, 256, 256)
    assert not marker.exists()
