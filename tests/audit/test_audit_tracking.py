"""MLflow tracking of a finished run: params, metric histories, eval scores, artifacts, and a
registered model version, read back through MlflowClient from a sqlite store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from detfm.audit.tracking import flatten, log_run, require_mlflow
from detfm.errors import DetfmError

# MLflow's sqlite store on SQLAlchemy 2.1 (outside the pinned range of the extra) warns about
# a deprecated loader option inside MLflow itself.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")


def make_run(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        "# FinetuneConfig\nbackbone: scratch\ntask: semseg\nlabels: 4\nsplit: [0.8, 0.1, 0.1]\n"
        "data:\n  paths: [ev.h5]\n  energy_threshold: 0.13\ntrain:\n  lr: 0.001\n  steps: 3\n", encoding="utf-8")
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3, "epoch": 0}) for s in (1, 2, 3)]
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n{partial", encoding="utf-8")
    (d / "eval.json").write_text(json.dumps({"task": "semseg", "macro_f1_4": 0.5, "labels": 4,
                                             "f1": {"track": 0.7, "michel": None}, "confusion": [[1, 2], [3, 4]]}),
                                 encoding="utf-8")
    manifest = {"schema": "detfm-manifest/1", "code": {"detfm": "0.1.0", "git_commit": "abc123", "git_dirty": False}}
    (d / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (d / "backbone.yaml").write_text("name: pointmae_micro\n", encoding="utf-8")
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (d / "checkpoints" / "step_3").mkdir(parents=True)
    (d / "checkpoints" / "step_3" / "state.safetensors").write_bytes(b"x")
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A sqlite tracking database and a file artifact store. The database lives in memory
    (/dev/shm) where there is one: MLflow creates ~50 tables in it, and sqlite's fsync after
    each takes seconds on a disk."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="detfm-mlflow-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path_factory.mktemp("mlflow")
    try:
        yield f"sqlite:///{base / 'mlflow.db'}", (tmp_path_factory.mktemp("mlflow-artifacts") / "store").as_uri()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_log_run_records_everything_and_registers_the_model(tmp_path: Path, store: tuple[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'detfm[mlflow]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("RANK", raising=False)
    uri, artifacts = store
    run = make_run(tmp_path / "ft")
    run_id = log_run(uri, run, experiment="detfm-test", register_as="semseg-tiny", artifact_location=artifacts)
    assert run_id

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "detfm-test"
    assert logged.info.artifact_uri.startswith(artifacts)
    params = logged.data.params
    assert params["train.lr"] == "0.001" and params["labels"] == "4" and params["task"] == "semseg"
    assert params["data.paths"] == '["ev.h5"]' and params["split"] == "[0.8, 0.1, 0.1]"
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert {m.step for m in client.get_metric_history(run_id, "lr")} == {1, 2, 3}
    metrics = logged.data.metrics
    assert metrics["eval/macro_f1_4"] == 0.5 and metrics["eval/f1/track"] == 0.7
    assert "eval/f1/michel" not in metrics and not any(k.startswith("eval/confusion") for k in metrics)
    assert logged.data.tags["mlflow.source.git.commit"] == "abc123"
    assert logged.data.tags["detfm.config"] == "FinetuneConfig"

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.jsonl", "eval.json", "manifest.json", "model.safetensors", "model"} <= top
    assert "checkpoints" not in top
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {
        "model/model.safetensors", "model/config.yaml", "model/backbone.yaml"}

    versions = client.search_model_versions("name='semseg-tiny'")
    assert len(versions) == 1
    version = versions[0]
    assert version.run_id == run_id and version.source.endswith("/model") and version.source.startswith(artifacts)
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert version.tags["detfm.weights_sha256"] == digest

    # a second run registers version 2 of the same model in the same experiment
    second = log_run(uri, run, experiment="detfm-test", register_as="semseg-tiny")
    assert second != run_id
    assert sorted(int(v.version) for v in client.search_model_versions("name='semseg-tiny'")) == [1, 2]
    assert client.get_run(second).info.experiment_id == logged.info.experiment_id


def test_only_rank_zero_logs_and_bad_runs_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, artifacts = f"sqlite:///{tmp_path / 'never.db'}", (tmp_path / "never").as_uri()
    run = make_run(tmp_path / "ft")
    monkeypatch.setenv("RANK", "1")
    assert log_run(uri, run, artifact_location=artifacts) is None
    assert not (tmp_path / "never.db").exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DetfmError, match="not a run directory"):
        log_run(uri, tmp_path, artifact_location=artifacts)
    (run / "eval.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(DetfmError, match=r"eval\.json: not valid JSON"):
        log_run(uri, run, artifact_location=artifacts)
    (run / "eval.json").unlink()
    (run / "model.safetensors").unlink()
    with pytest.raises(DetfmError, match="no model.safetensors to register"):
        log_run(uri, run, register_as="m", artifact_location=artifacts)


def test_missing_mlflow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    run = make_run(tmp_path / "ft")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow...` raise ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.exceptions", None)
    with pytest.raises(DetfmError, match=r"pip install 'detfm\[mlflow\]'"):
        require_mlflow()
    with pytest.raises(DetfmError, match=r"pip install 'detfm\[mlflow\]'"):
        log_run("sqlite:///x.db", run)


def test_flatten_joins_nested_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": "x"}
    assert flatten({"f1": {"track": 0.5}}, sep="/") == {"f1/track": 0.5}


def test_cli_pretrain_logs_to_tracking_and_checks_flags(tmp_path: Path, store: tuple[str, str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'detfm[mlflow]')")
    import torch
    from mlflow.tracking import MlflowClient

    from detfm.cli import main
    from detfm.sim.simulate import SimConfig, simulate_to_file

    uri, _ = store
    events = tmp_path / "ev.h5"
    simulate_to_file(SimConfig(events=4, seed=2), events, progress=False)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model: pointmae_micro\nmodel_overrides: {num_groups: 8, group_size: 8, depth: 1}\n"
                    "data: {rotate: false}\ntrain: {steps: 1, batch_size: 2, warmup_steps: 0, progress: false}\n")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["pretrain", "--config", str(tiny), "--data", str(events), "--out", str(tmp_path / "run"),
                     "--tracking", uri, "--register-as", "cli-backbone"]) == 0
    finally:
        torch.set_num_threads(before)
    assert "logged to" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name='cli-backbone'")] == ["1"]
    # --register-as alone is refused before anything trains
    assert main(["pretrain", "--config", str(tiny), "--data", str(events), "--out", str(tmp_path / "r2"),
                 "--register-as", "x"]) == 2
    assert "needs --tracking" in capsys.readouterr().err and not (tmp_path / "r2").exists()
