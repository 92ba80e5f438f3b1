"""Commands that evaluate write a run manifest next to their outputs: anomaly ranking and study,
the diversity audit and the seed sensitivity audit."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from detfm_testing import one_torch_thread, simulate_events

from detfm.recipes.adapt import FinetuneConfig
from detfm.engine.manifest import SCHEMA, write_manifest
from detfm.cli import main
from detfm.engine import TrainConfig, save_config
from detfm.errors import DetfmError
from detfm.recipes.pretrain import DataConfig

SEEDS = (0, 1)
FEW_EVENTS = 4  # the anomaly commands score this many events per file
HEX64 = re.compile(r"[0-9a-f]{64}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(manifest: Path, inputs: list[Path]) -> dict[str, Any]:
    """The manifest at ``manifest``, after checking its inputs (in order, by path and hash) and times."""
    assert manifest.is_file(), f"{manifest} was not written"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    assert data["schema"] == SCHEMA
    assert [Path(r["path"]) for r in data["inputs"]] == inputs
    for record, path in zip(data["inputs"], inputs, strict=True):
        assert HEX64.fullmatch(record["sha256"]) and record["sha256"] == _sha256(path)
        assert record["size"] == path.stat().st_size
    assert data["started"] is not None and data["ended"] is not None
    assert data["ended"] >= data["started"] and data["wall_seconds"] >= 0
    assert data["device"] == "cpu"
    return data


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


@pytest.fixture(scope="module")
def few_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small event file for the anomaly scores (every event goes through the model)."""
    return simulate_events(tmp_path_factory.mktemp("manifest_events") / "few.h5", events=FEW_EVENTS, seed=6)


@pytest.fixture(scope="module")
def audit_out(tiny_events: Path, tiny_pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed sensitivity audit run through the CLI at the smallest scale: 2 seeds, 1 step each,
    head mode on the shared pretraining run, no scratch comparison. Its replicas
    (``seed_0``, ``seed_1``) are the semseg models of the diversity audit."""
    root = tmp_path_factory.mktemp("manifest_audit")
    cfg = FinetuneConfig(backbone=str(tiny_pretrained), mode="head", labels=4, label_seed=0,
                         data=DataConfig(paths=(str(tiny_events),), rotate=False), max_eval_events=2,
                         train=TrainConfig(steps=1, batch_size=2, warmup_steps=0, lr=3e-3, progress=False))
    save_config(cfg, root / "cfg.yaml")
    out = root / "audit"
    with one_torch_thread():
        assert main(["audit", "sensitivity", "--config", str(root / "cfg.yaml"), "--seeds", "2",
                     "--no-compare-scratch", "--out", str(out), "--quiet"]) == 0
    return out


# ----------------------------------------------------------------------------- write_manifest(name=...)
def test_a_manifest_can_have_another_name_but_not_a_folder(tmp_path: Path) -> None:
    data = tmp_path / "ranked.csv"
    data.write_text("rank,event\n1,0\n")
    path = write_manifest(tmp_path, name="ranked.manifest.json", inputs=[data], seeds={"masks": 3},
                          device="cpu", started=1.0, ended=2.0)
    assert path == tmp_path / "ranked.manifest.json" and not (tmp_path / "manifest.json").exists()
    assert _check(path, [data])["seeds"] == {"masks": 3}
    assert write_manifest(tmp_path, inputs=[], seeds={}, device="cpu", started=1.0) == tmp_path / "manifest.json"
    for bad in ("", "sub/manifest.json", ".."):
        with pytest.raises(DetfmError, match="plain file name"):
            write_manifest(tmp_path, name=bad, inputs=[], seeds={}, device="cpu", started=1.0)


# ----------------------------------------------------------------------------- anomalies
def test_each_ranking_writes_its_own_manifest_beside_the_csv(few_events: Path, tiny_pretrained: Path,
                                                              tmp_path: Path) -> None:
    reference = _copy(few_events, tmp_path / "reference.h5")
    out = tmp_path / "lists"
    assert main(["anomalies", "--model", str(tiny_pretrained), "--data", str(few_events), "--out",
                 str(out / "baseline.csv"), "--method", "baseline", "--reference", str(reference),
                 "--seed", "7", "--quiet"]) == 0
    # a second list in the same folder: the reconstruction score never reads the reference
    with one_torch_thread():
        assert main(["anomalies", "--model", str(tiny_pretrained), "--data", str(few_events), "--out",
                     str(out / "recon.csv"), "--masks", "1", "--reference", str(reference), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["baseline.csv", "baseline.manifest.json", "recon.csv",
                                                     "recon.manifest.json"]
    weights = [tiny_pretrained / "model.safetensors", tiny_pretrained / "config.yaml"]
    base = _check(out / "baseline.manifest.json", [*weights, few_events, reference])
    assert base["seeds"] == {"masks": 7}
    assert base["config"]["method"] == "baseline" and base["config"]["reference"] == str(reference)
    assert base["extra"]["output"] == "baseline.csv"
    recon = _check(out / "recon.manifest.json", [*weights, few_events])
    assert recon["seeds"] == {"masks": 0} and recon["config"]["masks"] == 1


def test_the_study_writes_a_manifest_into_its_folder(few_events: Path, tiny_pretrained: Path,
                                                     tmp_path: Path) -> None:
    anomalous = _copy(few_events, tmp_path / "odd.h5")
    reference = _copy(few_events, tmp_path / "reference.h5")
    out = tmp_path / "study"
    with one_torch_thread():
        assert main(["anomalies", "study", "--model", str(tiny_pretrained), "--normal", str(few_events),
                     "--anomalous", f"odd={anomalous}", "--reference", str(reference), "--out", str(out),
                     "--methods", "density", "--neighbours", "3", "--seed", "4", "--quiet"]) == 0
    data = _check(out / "manifest.json", [tiny_pretrained / "model.safetensors", tiny_pretrained / "config.yaml",
                                          few_events, anomalous, reference])
    assert data["seeds"] == {"masks": 4}
    assert data["config"]["methods"] == ["density"] and data["config"]["anomalous"] == {"odd": str(anomalous)}
    assert data["extra"]["report"] == "anomalies.json" and (out / "anomalies.json").is_file()


# ----------------------------------------------------------------------------- audits
def test_the_sensitivity_audit_writes_one_manifest_for_the_whole_audit(audit_out: Path, tiny_events: Path,
                                                                       tiny_pretrained: Path) -> None:
    config_file = audit_out.parent / "cfg.yaml"
    data = _check(audit_out / "manifest.json", [config_file, tiny_events, tiny_pretrained / "model.safetensors",
                                                tiny_pretrained / "config.yaml"])
    assert data["seeds"] == {"train": list(SEEDS), "split": 0, "labels": 0}
    assert data["config"]["seeds"] == list(SEEDS) and data["config"]["compare_scratch"] is False
    assert data["config"]["finetune"]["train"]["steps"] == 1
    assert data["extra"]["runs"] == {"model": [str(audit_out / f"seed_{s}") for s in SEEDS]}
    for s in SEEDS:  # the replicas keep their own manifests
        replica = json.loads((audit_out / f"seed_{s}" / "manifest.json").read_text())
        assert replica["seeds"]["train.seed"] == s


def test_the_diversity_audit_writes_a_manifest(audit_out: Path, tiny_events: Path, tmp_path: Path) -> None:
    a, b = audit_out / "seed_0", audit_out / "seed_1"
    out = tmp_path / "div"
    with one_torch_thread():
        assert main(["audit", "diversity", "--models", str(a), str(b), "--data", str(tiny_events),
                     "--max-events", "2", "--out", str(out), "--quiet"]) == 0
    data = _check(out / "manifest.json", [a / "model.safetensors", a / "config.yaml", b / "model.safetensors",
                                          b / "config.yaml", a / "split.json", tiny_events])
    assert data["seeds"] == {}
    assert data["config"]["models"] == [str(a), str(b)] and data["config"]["max_events"] == 2
    assert data["extra"]["report"] == "diversity.json" and (out / "diversity.json").is_file()
