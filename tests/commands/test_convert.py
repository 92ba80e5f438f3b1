"""`detfm convert panda`: a Panda checkpoint becomes a run directory every tool can load."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from detfm.commands.convert import CONVERSION_FILE, convert_panda_command
from detfm.errors import DataFormatError
from detfm.models.convert_panda import expected_layout


def _state(prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: torch.full((1,) * len(shape), i / 1000.0).expand(shape)
            for i, (name, shape) in enumerate(expected_layout().items())}


def _args(checkpoint: Path, out: Path, **kw: object) -> argparse.Namespace:
    return argparse.Namespace(checkpoint=str(checkpoint), out=str(out), prefix=None, overwrite=False, **kw)


def test_convert_writes_a_loadable_run(tmp_path: Path) -> None:
    from detfm.engine.runs import load_backbone
    from detfm.models.ptv3 import PTv3

    ckpt = tmp_path / "panda.pth"
    torch.save(_state("student.backbone."), ckpt)
    run = tmp_path / "run"
    assert convert_panda_command(_args(ckpt, run)) == 0
    for name in ("model.safetensors", "backbone.yaml", "config.yaml", CONVERSION_FILE, "manifest.json"):
        assert (run / name).is_file(), name
    record = json.loads((run / CONVERSION_FILE).read_text())
    assert record["tensors"] == 441 and record["parameters"] == 90_758_832
    assert record["prefix"] == "student.backbone." and len(record["source_sha256"]) == 64
    backbone = load_backbone(run)
    assert isinstance(backbone, PTv3) and backbone.cfg.name == "ptv3_base"
    assert float(backbone.embedding.mask_token.detach()[0, 0]) == 0.0
    assert float(backbone.embedding.stem.linear.weight.detach()[0, 0]) == pytest.approx(0.001)


def test_convert_refuses_a_bad_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    state = _state()
    state["enc.enc2.block1.cpe.0.weight"] = torch.zeros(192, 3, 3, 3, 96)
    ckpt = tmp_path / "bad.pth"
    torch.save(state, ckpt)
    run = tmp_path / "run"
    with pytest.raises(DataFormatError, match=r"enc\.enc2\.block1\.cpe\.0\.weight.*shape"):
        convert_panda_command(_args(ckpt, run))
    assert not (run / "model.safetensors").exists()


def test_parser_wires_the_panda_source() -> None:
    from detfm.commands import convert

    parser = argparse.ArgumentParser()
    convert.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "panda", "ckpt.pth", "--out", "run", "--prefix", "backbone."])
    assert args.func is convert_panda_command and args.prefix == "backbone." and not args.overwrite
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "sonata", "ckpt.pth", "--out", "run"])
