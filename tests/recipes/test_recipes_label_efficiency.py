"""Label-efficiency studies: the grid, its spread over seeds, continuation, collecting and combining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detfm.cli import main
from detfm.errors import ConfigError, DetfmError
from detfm.recipes.adapt import load_finetune_config
from detfm.recipes.label_efficiency import combine_label_efficiency


def test_label_efficiency_study_grid_spread_and_continuation(tiny_events: Path, tiny_pretrained: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    argv = ["study", "label-efficiency", "--backbone", str(tiny_pretrained), "--data", str(tiny_events),
            "--labels", "2", "--seeds", "0,1", "--modes", "head", "--steps", "1", "--out", str(out), "--quiet"]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("max_eval_events: 1\ndata: {rotate: false}\n")
    assert main([*argv, "--config", str(cfg_path)]) == 0
    assert "macro_f1_4 (mean ± std over seeds)" in capsys.readouterr().out
    study = json.loads((out / "results.json").read_text())
    assert {(r["variant"], r["labels"], r["seed"]) for r in study["runs"]} == {
        (f"{b}/head", 2, s) for b in ("pretrained", "scratch") for s in (0, 1)}
    for name in ("pretrained/head", "scratch/head"):
        values = [r["macro_f1_4"] for r in study["runs"] if r["variant"] == name]
        summary = study["summary"][name]["2"]
        assert summary["n"] == 2 and summary["mean"] == pytest.approx(np.mean(values))
        assert summary["std"] == pytest.approx(np.std(values, ddof=1))
        track = [r["scores"]["f1_4"]["track"] for r in study["runs"] if r["variant"] == name]
        assert study["per_class_f1"][name]["2"]["track"] == pytest.approx(np.mean(track))
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the scratch baseline copies the pretraining run's architecture, with other weights
    assert ((out / "scratch_head_n2_s0" / "backbone.yaml").read_text()
            == (out / "pretrained_head_n2_s0" / "backbone.yaml").read_text())
    # a second call reads the finished points instead of retraining them
    stamp = (out / "scratch_head_n2_s1" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, "--config", str(cfg_path)]) == 0
    assert (out / "scratch_head_n2_s1" / "model.safetensors").stat().st_mtime_ns == stamp
    # --collect rebuilds the summary from the finished runs alone, also of runs added by hand
    before = json.loads((out / "results.json").read_text())
    shutil.copytree(out / "scratch_head_n2_s1", out / "scratch_head_n3_s0")
    (out / "results.json").unlink()
    assert main(["study", "label-efficiency", "--collect", "--out", str(out)]) == 0
    after = json.loads((out / "results.json").read_text())
    assert after["summary"]["pretrained/head"] == before["summary"]["pretrained/head"]
    assert after["summary"]["scratch/head"]["3"]["n"] == 1
    assert main(["study", "label-efficiency", "--out", str(out)]) == 2
    assert "--backbone, --data, --labels required" in capsys.readouterr().err


def test_label_efficiency_study_takes_the_task_of_its_config(tiny_events: Path, tiny_pretrained: Path,
                                                             tmp_path: Path) -> None:
    # without --task, the --config's task is studied (a default of semseg once overrode it)
    cfg_path = tmp_path / "event.yaml"
    cfg_path.write_text("task: event\nmax_eval_events: 2\ndata: {rotate: false}\n")
    out = tmp_path / "study"
    assert main(["study", "label-efficiency", "--backbone", str(tiny_pretrained), "--data", str(tiny_events),
                 "--labels", "2", "--seeds", "0,", "--modes", "head", "--steps", "1", "--no-scratch",
                 "--config", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "pretrained_head_n2_s0" / "eval.json").read_text())["task"] == "event"


def test_label_efficiency_study_checks_counts_and_modes_first(tiny_events: Path, tiny_pretrained: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["study", "label-efficiency", "--backbone", str(tiny_pretrained), "--data", str(tiny_events), "--steps", "1",
            "--out", str(tmp_path / "s"), "--quiet"]
    assert main([*argv, "--labels", "2,10000"]) == 2
    assert "10000 labeled events" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing trained before the check
    assert main([*argv, "--labels", "2", "--modes", "probe,tune"]) == 2
    assert "unknown mode(s) tune" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--labels", "2,x"])


def test_combine_puts_several_studies_in_one_table(tiny_events: Path, tiny_pretrained: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("max_eval_events: 1\ndata: {rotate: false}\n")
    common = ["--data", str(tiny_events), "--labels", "2", "--seeds", "0,", "--modes", "head", "--steps", "1",
              "--config", str(cfg_path), "--quiet"]
    # study A: a pretrained backbone and its scratch baseline; study B: the same backbone under another
    # name, without a baseline; study C: scratch only, another architecture
    assert main(["study", "label-efficiency", "--backbone", str(tiny_pretrained), *common,
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["study", "label-efficiency", "--backbone", str(tiny_pretrained), "--no-scratch", *common,
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["study", "label-efficiency", "--backbone", "scratch", "--model", "ptv3_micro", *common,
                 "--out", str(tmp_path / "c")]) == 0
    assert load_finetune_config(tmp_path / "c" / "scratch_head_n2_s0").model_overrides == {}  # no patch sizes
    assert main(["study", "label-efficiency", "--backbone", str(tiny_pretrained), "--model", "ptv3_micro", *common,
                 "--out", str(tmp_path / "d")]) == 2
    assert "--backbone scratch only" in capsys.readouterr().err
    capsys.readouterr()
    out = tmp_path / "all"
    assert main(["study", "label-efficiency", "--combine", f"first={tmp_path / 'a'}", f"second={tmp_path / 'b'}",
                 str(tmp_path / "c"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    combined = json.loads((out / "results.json").read_text())
    scratch_a = json.loads((tmp_path / "a" / "scratch_head_n2_s0" / "eval.json").read_text())["macro_f1_4"]
    scratch_model = load_finetune_config(tmp_path / "a" / "scratch_head_n2_s0").model
    variants = list(combined["summary"])
    assert variants[:2] == ["first/head", "second/head"]  # pretrained variants first, in the order given
    assert sorted(variants[2:]) == sorted([f"scratch {scratch_model}/head", "scratch ptv3_micro/head"])
    assert combined["summary"][f"scratch {scratch_model}/head"]["2"]["mean"] == pytest.approx(scratch_a)
    for name in variants:
        assert name in table and combined["summary"][name]["2"]["n"] == 1
    # the same pretrained runs are the same numbers under either name
    assert combined["summary"]["first/head"] == combined["summary"]["second/head"]
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # unnamed: the pretraining run's directory names the variant
    unnamed = combine_label_efficiency([(None, tmp_path / "b")], tmp_path / "unnamed")
    assert list(unnamed.summary) == [f"{tiny_pretrained.name}/head"]
    # the same point from two directories, a source as --out, both flags, a bad NAME=DIR: clear errors
    with pytest.raises(DetfmError, match="is in both"):
        combine_label_efficiency([("x", tmp_path / "a"), ("x", tmp_path / "b")], tmp_path / "dup")
    with pytest.raises(ConfigError, match="its own --out directory"):
        combine_label_efficiency([(None, tmp_path / "a")], tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetfmError, match="no finished runs"):
        combine_label_efficiency([(None, tmp_path / "a"), (None, tmp_path / "empty")], tmp_path / "e")
    assert main(["study", "label-efficiency", "--combine", "=x", "--out", str(tmp_path / "f")]) == 2
    assert "expected NAME=DIR or DIR" in capsys.readouterr().err
    assert main(["study", "label-efficiency", "--collect", "--combine", str(tmp_path / "a"),
                 "--out", str(tmp_path / "g")]) == 2
    assert "exclude each other" in capsys.readouterr().err
