"""The model registry: add/list/show/alias, verification, export and load, concurrency, lineage."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from detfm_testing import TINY, one_torch_thread
from safetensors.numpy import save_file

from detfm.engine.manifest import file_sha256, write_manifest
from detfm.audit.registry import Registry, blob_path, default_registry_dir, parse_ref
from detfm.cli import main
from detfm.errors import DetfmError


# ----------------------------------------------------------------------------- fake runs (fast)
def fake_run(folder: Path, seed: int, kind: str = "PretrainConfig", backbone: str = "scratch",
             data: Path | None = None) -> Path:
    """A run directory with random weights, a config of ``kind`` and (with ``data``) a manifest."""
    folder.mkdir(parents=True)
    save_file({"backbone.w": np.random.default_rng(seed).normal(size=(16,)).astype(np.float32)},
              str(folder / "model.safetensors"))
    extra = f"backbone: {backbone}\ntask: semseg\n" if kind == "FinetuneConfig" else ""
    (folder / "config.yaml").write_text(f"# {kind}\nmodel: pointmae_micro\n{extra}train:\n  steps: 2\n")
    (folder / "metrics.jsonl").write_text('{"step": 2, "loss": 0.5}\n')
    if data is not None:
        write_manifest(folder, inputs=[data], seeds={"train.seed": seed}, device="cpu", started=0.0, ended=1.0)
    return folder


def add_many(registry: str, runs: list[str], shared: str, gate: Any) -> None:
    """Child process: wait for the sibling, then register ``runs`` under one name and ``shared``."""
    reg = Registry(registry)
    gate.wait()
    for i, run in enumerate(runs):
        reg.add(run, "many")
        if i == len(runs) // 2:
            reg.add(shared, "shared", alias="both")


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")


def test_add_is_content_addressed_and_idempotent(reg: Registry, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = fake_run(tmp_path / "a", 1), fake_run(tmp_path / "b", 2)
    r = ["--registry", str(reg.root)]
    assert main(["registry", "add", str(a), "--name", "mae", *r]) == 0
    assert "registered mae:1 (pretrain" in capsys.readouterr().out
    assert main(["registry", "add", str(a), "--name", "mae", "--alias", "prod", *r]) == 0
    assert "already registered as mae:1" in capsys.readouterr().out
    assert main(["registry", "add", str(b), "--name", "mae", *r]) == 0
    entry = reg.get("mae")  # the latest
    assert (entry.version, entry.weights_sha256) == (2, file_sha256(b / "model.safetensors"))
    assert reg.get("mae@prod").version == 1 and reg.get("mae:1").aliases == ("prod",)
    stored = blob_path(reg.root, entry.weights_sha256)
    assert stored.read_bytes() == (b / "model.safetensors").read_bytes()
    assert set(entry.files) == {"weights", "config", "metrics"} and entry.metadata["final_loss"] == 0.5

    assert main(["registry", "alias", "mae:2", "prod", *r]) == 0
    assert reg.get("mae@prod").version == 2
    capsys.readouterr()
    assert main(["registry", "list", *r]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["mae:1", "mae:2"] and lines[2].endswith("prod")
    assert main(["registry", "show", "mae@prod", *r]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mae:2  (pretrain)") and entry.weights_sha256 in out

    for ref, message in (("mae:9", "has no version 9 (latest: 2)"), ("nope", "no model named 'nope'"),
                         ("mae@beta", "has no alias 'beta'"), ("ma e", "bad model name")):
        assert main(["registry", "show", ref, *r]) == 2
        assert message in capsys.readouterr().err


def test_bad_runs_and_refs_are_refused(reg: Registry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DetfmError, match="no model.safetensors"):
        reg.add(empty, "x")
    odd = fake_run(tmp_path / "odd", 1)
    (odd / "config.yaml").write_text("model: x\n")
    with pytest.raises(DetfmError, match="cannot tell the kind of run"):
        reg.add(odd, "x")
    with pytest.raises(DetfmError, match="version after ':' must be a number"):
        parse_ref("x:latest")
    assert parse_ref("x@prod") == ("x", None, "prod") and parse_ref("x:3") == ("x", 3, None)
    with pytest.raises(DetfmError, match="no model registry"):
        Registry(tmp_path / "none").get("x")


def test_default_registry_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETFM_REGISTRY", str(tmp_path / "env"))
    assert default_registry_dir() == tmp_path / "env"
    monkeypatch.delenv("DETFM_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Registry().root == tmp_path / "xdg" / "detfm" / "registry"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_registry_dir() == Path.home() / ".local" / "share" / "detfm" / "registry"


def test_verify_detects_a_flipped_byte_and_a_missing_blob(reg: Registry, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    entry, _ = reg.add(fake_run(tmp_path / "a", 1), "mae")
    r = ["--registry", str(reg.root)]
    assert main(["registry", "verify", *r]) == 0
    assert "checked 3 stored files" in capsys.readouterr().out

    weights = blob_path(reg.root, entry.weights_sha256)
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    blob_path(reg.root, entry.files["config"].sha256).unlink()
    assert main(["registry", "verify", *r]) == 1
    out = capsys.readouterr().out
    assert f"TAMPERED  {entry.weights_sha256}  (mae:1 weights)" in out
    assert f"MISSING   {entry.files['config'].sha256}  (mae:1 config)" in out
    report = reg.verify()
    assert not report.ok and report.integrity == "ok"
    with pytest.raises(DetfmError, match="is missing|was altered"):
        reg.export("mae:1", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    reg.add(tmp_path / "a", "mae")  # registering the same run again repairs the blobs
    assert reg.verify().ok


def test_concurrent_adds_keep_the_registry_consistent(reg: Registry, tmp_path: Path) -> None:
    runs = {k: [str(fake_run(tmp_path / f"{k}{i}", seed=10 * (k == "b") + i)) for i in range(6)] for k in "ab"}
    shared = str(fake_run(tmp_path / "shared", 99))
    ctx = multiprocessing.get_context("spawn")
    gate = ctx.Barrier(2)
    procs = [ctx.Process(target=add_many, args=(str(reg.root), runs[k], shared, gate)) for k in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    with sqlite3.connect(reg.db_path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        numbers = [v for (v,) in con.execute("SELECT version FROM versions WHERE name = 'many'")]
    con.close()
    assert sorted(numbers) == list(range(1, 13))                     # distinct, no gaps
    many = reg.versions("many")
    assert {e.weights_sha256 for e in many} == {file_sha256(Path(r) / "model.safetensors")
                                                for r in runs["a"] + runs["b"]}
    assert [e.version for e in reg.versions("shared")] == [1]        # same weights twice: one version
    assert reg.get("shared@both").version == 1
    assert reg.verify().ok
    assert not list((reg.root / "blobs").glob(".incoming-*"))         # no stray temporary blobs


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def runs(tiny_events: Path, tiny_pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared 2-step pretraining run and a 3-step fine-tuning run on it (20 simulated events)."""
    from detfm.recipes.adapt import FinetuneConfig, run_finetune
    from detfm.engine import TrainConfig
    from detfm.recipes.pretrain import DataConfig

    ft = tmp_path_factory.mktemp("runs") / "ft"
    train = TrainConfig(steps=3, batch_size=2, warmup_steps=1, lr=3e-3, progress=False, log_every=1)
    with one_torch_thread():
        run_finetune(FinetuneConfig(backbone=str(tiny_pretrained), model_overrides=TINY, labels=4,
                                    data=DataConfig(paths=(str(tiny_events),), rotate=False), train=train,
                                    max_eval_events=2), ft)
    return {"events": tiny_events, "pre": tiny_pretrained, "ft": ft}


def test_export_round_trip_loads_identical_weights(runs: dict[str, Path], reg: Registry, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    import detfm

    reg.add(runs["ft"], "seg", alias="prod")
    reg.add(runs["pre"], "mae")
    out = reg.export("seg:1", tmp_path / "exported")
    for name in ("model.safetensors", "config.yaml", "backbone.yaml", "eval.json", "split.json", "manifest.json"):
        assert (out / name).read_bytes() == (runs["ft"] / name).read_bytes(), name
    with pytest.raises(DetfmError, match="not an empty folder"):
        reg.export("seg:1", out)

    model = detfm.load("seg@prod", registry=reg.root)
    assert not model.training
    original = load_file(str(runs["ft"] / "model.safetensors"))
    state = model.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], v) for k, v in original.items())
    backbone = detfm.load("mae", registry=str(reg.root))
    assert type(backbone).__name__ == "PointMAE" and not backbone.training
    pre = load_file(str(runs["pre"] / "model.safetensors"))
    assert all(torch.equal(backbone.state_dict()[k[len("backbone."):]], v)
               for k, v in pre.items() if k.startswith("backbone."))


def test_lineage_links_the_backbone_and_the_data(runs: dict[str, Path], reg: Registry,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data_sha = file_sha256(runs["events"])
    pre_sha = file_sha256(runs["pre"] / "model.safetensors")
    reg.add(runs["ft"], "seg")
    chain = reg.lineage("seg")
    assert len(chain) == 2 and chain[1].entry is None                 # backbone not registered yet
    assert chain[1].weights_sha256 == pre_sha and chain[1].path == str(runs["pre"].resolve())
    assert [i.sha256 for i in chain[1].inputs] == [data_sha]           # from the backbone's manifest

    reg.add(runs["pre"], "mae")                                        # registered later: now linked
    chain = reg.lineage("seg:1")
    assert [n.label for n in chain] == ["seg:1", "mae:1"]
    assert [i.sha256 for i in chain[0].inputs] == [data_sha] == [i.sha256 for i in chain[1].inputs]
    assert main(["registry", "show", "seg", "--registry", str(reg.root)]) == 0
    out = capsys.readouterr().out
    lineage = out[out.index("lineage"):]
    assert lineage.index("seg:1 (finetune)") < lineage.index("<- backbone mae:1 (pretrain)")
    assert f"weights {pre_sha}" in lineage and lineage.count(f"sha256 {data_sha}") == 2
