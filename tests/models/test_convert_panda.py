"""Panda checkpoints onto ptv3_base: every reference row accounted, bad checkpoints named."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from detfm.errors import DataFormatError
from detfm.models.convert_panda import (
    convert_panda,
    convert_panda_state,
    expected_layout,
    read_checkpoint,
)

# The fact sheet of the reference implementation's parameters (names, shapes), kept with the tests.
SHEET = Path(__file__).resolve().parent / "data" / "panda_base_params.tsv"


def _sheet() -> dict[str, tuple[int, ...]]:
    rows = [ln.split("\t") for ln in SHEET.read_text().splitlines() if ln and not ln.startswith("#")][1:]
    assert all(r[2] == "float32" for r in rows)
    return {r[0]: tuple(int(v) for v in r[1].split("x")) for r in rows}


def _reference_state(prefix: str = "") -> dict[str, torch.Tensor]:
    """Reference-layout tensors, each a constant (its row number / 1000) stored as a
    broadcast view: full shapes at no memory cost."""
    return {prefix + name: torch.full((1,) * len(shape), i / 1000.0).expand(shape)
            for i, (name, shape) in enumerate(_sheet().items())}


def test_layout_matches_the_reference_sheet() -> None:
    sheet = _sheet()
    layout = expected_layout()
    assert list(layout) == list(sheet)  # same names, same order
    assert layout == sheet
    assert len(layout) == 441
    assert sum(math.prod(s) for s in layout.values()) == 90_758_832


def test_every_row_is_converted_and_other_tensors_are_left_out() -> None:
    state = _reference_state("module.backbone.")
    state["module.head.weight"] = torch.zeros(5, 1232)
    converted, report = convert_panda_state(state)
    assert report.prefix == "module.backbone." and report.ignored == ["module.head.weight"]
    assert report.tensors == 441 and report.parameters == 90_758_832
    for i, (name, shape) in enumerate(_sheet().items()):
        tensor = converted[name]
        assert tuple(tensor.shape) == shape and tensor.dtype == torch.float32
        assert float(tensor.reshape(-1)[0]) == pytest.approx(i / 1000.0)


@pytest.mark.parametrize("case", ["missing", "extra", "misshaped", "nan"])
def test_bad_checkpoints_are_rejected_naming_the_tensor(case: str) -> None:
    state = _reference_state()
    name = "enc.enc3.block7.attn.qkv.weight"
    if case == "missing":
        del state[name]
    elif case == "extra":
        name = "enc.enc4.block3.attn.qkv.weight"
        state[name] = torch.zeros(1536, 512)
    elif case == "misshaped":
        name = "embedding.stem.linear.weight"
        state[name] = torch.zeros(4, 48)
    else:
        name = "embedding.mask_token"
        state[name] = torch.full((1, 48), float("nan"))
    with pytest.raises(DataFormatError, match=name.replace(".", r"\.")):
        convert_panda_state(state, source="ckpt.safetensors")


def test_pth_checkpoint_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "panda.pth"
    torch.save({"state_dict": _reference_state("backbone.")}, path)  # views save one element each
    model, report = convert_panda(path)
    assert report.prefix == "backbone."
    assert float(model.enc.enc4.block2.mlp[0].fc2.bias.detach()[0]) == pytest.approx(440 / 1000.0)
    assert model.num_features == 48 + 96 + 192 + 384 + 512


def test_unsafe_pickles_and_bad_folders_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": argparse.Namespace(x=1)}, evil)
    with pytest.raises(DataFormatError, match="weights_only"):
        read_checkpoint(evil)
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(DataFormatError, match="model.safetensors"):
        read_checkpoint(folder)
    save_file({"embedding.stem.linear.weight": torch.zeros(48, 4)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"enc_channels": [48, 96, 192, 384, 512]}))
    state, config = read_checkpoint(folder)
    assert config == {"enc_channels": [48, 96, 192, 384, 512]} and list(state) == ["embedding.stem.linear.weight"]
    with pytest.raises(DataFormatError, match="missing"):
        convert_panda(folder)
    with pytest.raises(DataFormatError, match="unknown checkpoint format"):
        (tmp_path / "w.npz").write_bytes(b"x")
        read_checkpoint(tmp_path / "w.npz")


def test_config_json_of_another_size_is_rejected(tmp_path: Path) -> None:
    from detfm.models.convert_panda import check_panda_config, panda_base_config

    cfg = panda_base_config()
    assert check_panda_config({"in_channels": 4, "enc_depths": [3, 3, 3, 9, 3], "enc_mode": True,
                               "order": ["hilbert", "hilbert-trans", "z", "z-trans"]}, cfg, "x") == \
        ["enc_depths", "enc_mode", "in_channels", "order"]
    with pytest.raises(DataFormatError, match="enc_channels"):
        check_panda_config({"backbone": {"enc_channels": [32, 64, 128, 256, 512]}}, cfg, "x")
