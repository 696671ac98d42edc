"""Model files: a round trip keeps outputs; damaged, foreign or mismatched files are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from sparseskull.nets.files import (
    ModelFileError,
    ModelInfo,
    load_model,
    read_info,
    save_model,
)
from sparseskull.nets.sparse_net import SparseCompletionNet
from sparseskull.sparse import SparseTensor

CH = (2, 2, 4, 4, 4, 4, 8)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = SparseCompletionNet(CH).eval()
    info = ModelInfo(channels=CH, task="completion", resolution=128, spacing_mm=(1.8, 1.8, 3.6), tau=0.1, metrics={"dsc": 0.5})
    return model, save_model(model, tmp_path / "m.safetensors", info), info


@pytest.mark.slow
def test_round_trip_keeps_weights_outputs_and_metadata(saved):
    model, path, info = saved
    loaded, got = load_model(path, task="completion")
    assert got == info
    assert read_info(path) == info
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    g = torch.Generator().manual_seed(1)
    idx = (torch.rand(1, 40, 40, 40, generator=g) < 0.05).nonzero()
    x = SparseTensor.from_coords(idx, torch.ones(len(idx), 1))
    with torch.no_grad():
        assert torch.equal(model(x, tau=-1.0).levels[0].logits, loaded(x, tau=-1.0).levels[0].logits)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left"


def test_corrupted_weights_are_refused(saved):
    _, path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped byte inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_truncated_and_foreign_files_are_refused(saved, tmp_path):
    _, path, _ = saved
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=str(short.name)):
        load_model(short)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(text)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(ModelFileError, match="not a sparseskull model"):
        load_model(other)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_wrong_task_and_mismatched_channels_are_refused(saved, tmp_path):
    model, path, info = saved
    with pytest.raises(ModelFileError, match="super-resolution model is needed"):
        load_model(path, task="super-resolution")
    # metadata that claims other channels than the tensors have
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sparseskull"])
    meta["channels"] = [8, 8, 16, 16, 32, 32, 64]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"sparseskull": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(bad)


def test_info_must_match_the_model():
    with pytest.raises(ValueError, match="differ"):
        save_model(SparseCompletionNet(CH), "/tmp/never.safetensors", ModelInfo(channels=(1, 1, 1, 1, 1, 1, 1)))
    with pytest.raises(ValueError, match="task"):
        ModelInfo(channels=CH, task="segmentation")


@pytest.mark.slow
def test_skips_are_recorded_and_a_file_without_the_key_loads_as_before(tmp_path):
    """A skip network's file says so and loads with its skips (its outputs unchanged); a file written before
    skips existed (no key) loads as the network without them; the flag must match the model on save."""
    torch.manual_seed(0)
    model = SparseCompletionNet(CH, skips=True).eval()
    path = save_model(model, tmp_path / "s.safetensors", ModelInfo(channels=CH, skips=True, spacing_mm=(1.0, 1.0, 1.0)))
    loaded, info = load_model(path)
    assert info.skips and loaded.skips
    g = torch.Generator().manual_seed(2)
    idx = (torch.rand(1, 40, 40, 40, generator=g) < 0.05).nonzero()
    x = SparseTensor.from_coords(idx, torch.ones(len(idx), 1))
    with torch.no_grad():
        a, b = model(x, tau=-1.0), loaded(x, tau=-1.0)
    assert [lv.kept for lv in a.levels] == [lv.kept for lv in b.levels]
    assert torch.equal(a.levels[-1].logits, b.levels[-1].logits)

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sparseskull"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta["skips"]  # as in files from before skip connections
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"sparseskull": json.dumps(meta)})
    plain, info = load_model(old)
    assert not info.skips and not plain.skips

    with pytest.raises(ValueError, match="skips"):
        save_model(model, tmp_path / "x.safetensors", ModelInfo(channels=CH))


def test_half_files_store_float16_convolutions_and_load_as_float32(tmp_path):
    """``half=True`` stores the convolutions' weights in float16 (half the bytes), batch norms and biases in float32;
    loading gives a float32 model with exactly the float16-rounded weights, checked by the file's checksum."""
    from safetensors import safe_open

    torch.manual_seed(0)
    model = SparseCompletionNet(CH, skips=True).eval()
    info = ModelInfo(channels=CH, task="completion", resolution=128, spacing_mm=(1.8, 1.8, 3.6), skips=True)
    full, half = save_model(model, tmp_path / "f.safetensors", info), save_model(model, tmp_path / "h.safetensors", info, half=True)
    with safe_open(str(half), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes["refine.0.0.weight"] == torch.float16 and dtypes["refine.0.1.running_var"] == torch.float32
    assert dtypes["classify.0.bias"] == torch.float32
    assert half.stat().st_size < 0.7 * full.stat().st_size
    loaded, _ = load_model(half)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name
        expected = a.half().float() if a.dim() >= 2 else a
        assert torch.equal(b, expected), name
    with pytest.raises(ModelFileError, match="checksum"):
        data = bytearray(half.read_bytes())
        data[-3] ^= 0xFF
        half.write_bytes(bytes(data))
        load_model(half)
