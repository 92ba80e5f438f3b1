"""The HTML report: sections from hand-made run files and one real fine-tune run, self-containment,
"not available" lines, clear errors on corrupt inputs, and the CLI."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import TINY_SHALLOW, one_torch_thread, simulate_events
from PIL import Image

from detfm.recipes.adapt import FinetuneConfig, predict_file, run_finetune
from detfm.audit.report import SECTION_IDS, build_report, find_run_dirs
from detfm.cli import main
from detfm.engine import TrainConfig
from detfm.errors import DetfmError
from detfm.recipes.pretrain import DataConfig

CLASSES5 = ["shower", "track", "michel", "delta", "low_energy"]


# ----------------------------------------------------------------------------- run files
def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_pretrain_run(d: Path) -> None:
    write_json(d / "manifest.json", {
        "schema": "detfm-manifest/1",
        "inputs": [{"path": "data/events.h5", "size": 123456, "sha256": "ab" * 32}],
        "code": {"version": "0.1.0", "commit": "0123456789abcdef", "dirty": True},
        "python": "3.11.7", "torch": "2.13.0+cpu", "device": "cpu", "seeds": {"train": 0},
        "argv": ["detfm", "pretrain", "--steps", "20"],
        "started": "2026-01-01T10:00:00+00:00", "ended": "2026-01-01T10:03:00+00:00"})
    (d / "config.yaml").write_text("# PretrainConfig\nmodel: pointmae_micro\ntrain:\n  steps: 20\n", encoding="utf-8")
    lines = [json.dumps({"step": s, "loss": 2.0 / s, "lr": 1e-3 * min(1.0, s / 5)}) for s in range(1, 21)]
    (d / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 21, "lo', encoding="utf-8")  # a torn last line


def make_pid_eval(d: Path) -> None:
    classes = ["photon", "electron", "muon", "pion", "proton"]
    write_json(d / "eval.json", {
        "task": "pid", "mode": "probe", "backbone": "scratch", "labels": 10, "split": "test", "events": 5,
        "instances": 20, "classes": classes, "macro_f1": 0.41, "accuracy": 0.5,
        "f1": dict.fromkeys(classes, 0.4), "efficiency": dict.fromkeys(classes, 0.5),
        "purity": dict.fromkeys(classes, 0.3), "confusion": [[2, 1, 0, 0, 1]] * 5})


def make_study(d: Path) -> None:
    summary = {name: {str(n): {"mean": base + 0.1 * k, "std": 0.02, "n": 3} for k, n in enumerate((10, 100, 1000))}
               for name, base in (("pretrained/finetune", 0.5), ("scratch/finetune", 0.3))}
    write_json(d / "results.json", {"metric": "macro_f1_4", "summary": summary, "runs": [
        {"backbone": "pretrained", "mode": "finetune", "labels": 10, "seed": 0, "macro_f1_4": 0.5, "scores": {}}]})


def make_systematics(d: Path) -> None:
    """A report in the layout `detfm evaluate` writes (ECE per variation, no 'after' curve here)."""
    variations = ["nominal", "gain_up", "noise_up"]
    cell = {"value": 0.6, "lo": 0.55, "hi": 0.65}
    write_json(d / "report.json", {
        "kind": "detfm-systematics/1", "model": "runs/ft", "task": "semseg", "events": 12, "variations": variations,
        "metrics": {v: {"macro_f1_4": cell, "accuracy_4": cell, "f1_track": cell} for v in variations},
        "differences": {v: {"macro_f1_4": {"value": -0.02, "lo": -0.04, "hi": 0.0},
                            "accuracy_4": {"value": 0.01, "lo": -0.01, "hi": 0.03},
                            "f1_track": {"value": 0.0, "lo": None, "hi": None}} for v in variations},
        "flip_fraction": {v: {"mean": 0.05, "median": 0.03, "p90": 0.12, "per_event": [0.05]} for v in variations},
        "calibration": {"temperature": 1.7, "ece_before": {"nominal": 0.12, "gain_up": 0.14, "noise_up": 0.13},
                        "ece_after": {"nominal": 0.03, "gain_up": 0.05, "noise_up": 0.04}, "reliability": {
            "before": {"confidence": [0.3, 0.6, 0.9], "accuracy": [0.2, None, 0.7], "count": [10, 0, 30],
                       "edges": [0.0, 0.5, 0.8, 1.0]},
            "after": None}},
        "conformal": {"alpha": 0.1, "method": "aps", "coverage": {"nominal": 0.9, "gain_up": 0.87},
                      "set_size": {"nominal": 1.3, "gain_up": 1.5}}})


def make_anomalies(d: Path) -> None:
    write_json(d / "anomalies.json", {
        "scores": {"background": [0.1, 0.2, 0.3, 0.25], "monopole": [0.8, 0.9]},
        "signatures": {"monopole": {"reconstruction": {"auc": 0.93, "eff_at_1pct_fpr": 0.4}, "auc": 0.93,
                                    "eff_at_1pct_fpr": 0.4, "best_method": "reconstruction", "baseline_auc": 0.7,
                                    "baseline_eff_at_1pct_fpr": 0.1, "n_events": 50}}})
    rows = "".join(f"{e},{e},{(e * 7) % 30 / 10:.1f},100,5.0\n" for e in range(30))  # not in score order
    (d / "ranked.csv").write_text("rank,event,score,n_points,total_energy\n" + rows, encoding="utf-8")


def make_sensitivity(d: Path) -> None:
    """A seed-sensitivity audit over 3 seeds with a scratch comparison (the layout of
    ``SensitivityReport.to_dict``); the michel conclusion fails for seeds 0 and 2."""
    def spread(values: list[float | None], mean: float, std: float) -> dict[str, object]:
        kept = [v for v in values if v is not None]
        return {"mean": mean, "std": std, "min": min(kept), "max": max(kept), "spread": max(kept) - min(kept),
                "values": values}

    write_json(d / "sensitivity.json", {
        "kind": "detfm-sensitivity/1", "seeds": [0, 1, 2], "headline": "macro_f1_4",
        "metrics": {"macro_f1_4": spread([0.5, 0.52, 0.57], 0.53, 0.03606),
                    "accuracy_4": spread([0.8, 0.81, 0.82], 0.81, 0.01),
                    "f1.track": spread([0.8, 0.81, 0.8275], 0.8125, 0.01392),
                    "f1.michel": spread([0.1, 0.3, None], 0.2, 0.1414),
                    "precision.track": spread([0.7, 0.7, 0.7], 0.7, 0.0)},
        "scratch_metrics": {"macro_f1_4": spread([0.45, 0.47, 0.45], 0.4567, 0.01155),
                            "f1.track": spread([0.7, 0.7, 0.7], 0.7, 0.0),
                            "f1.michel": spread([0.2, 0.1, 0.2], 0.1667, 0.05774)},
        "conclusions": [
            {"statement": "pretrained beats scratch on macro_f1_4", "metric": "macro_f1_4",
             "holds_for_all_seeds": True, "holding_seeds": 3, "per_seed": [
                 {"seed": s, "pretrained": p, "scratch": q, "holds": True}
                 for s, p, q in ((0, 0.5, 0.45), (1, 0.52, 0.47), (2, 0.57, 0.45))]},
            {"statement": "pretrained beats scratch on michel F1", "metric": "f1.michel",
             "holds_for_all_seeds": False, "holding_seeds": 1, "per_seed": [
                 {"seed": 0, "pretrained": 0.1, "scratch": 0.2, "holds": False},
                 {"seed": 1, "pretrained": 0.3, "scratch": 0.1, "holds": True},
                 {"seed": 2, "pretrained": None, "scratch": 0.2, "holds": None}]}],
        "runs": {"model": ["seed_0", "seed_1", "seed_2"], "scratch": ["scratch_seed_0", "scratch_seed_1",
                                                                      "scratch_seed_2"]}})


def make_diversity(d: Path) -> None:
    """A diversity audit of two models (the layout of ``DiversityReport.to_dict``)."""
    write_json(d / "diversity.json", {
        "kind": "detfm-diversity/1", "events": 4, "points": 4321,
        "source": {"data": "events.h5", "selection": "test split of ma", "energy_threshold": 0.13,
                   "event_ids": [0, 1, 2, 3]},
        "names": ["ma", "mb"],
        "models": [{"name": "ma", "accuracy": 0.7111, "macro_f1": 0.4222, "accuracy_4": 0.8333,
                    "macro_f1_4": 0.5444, "error_rate": 0.2889, "run": "runs/ma"},
                   {"name": "mb", "accuracy": 0.6999, "macro_f1": 0.4111, "accuracy_4": 0.8222,
                    "macro_f1_4": 0.5333, "error_rate": 0.3001, "run": "runs/mb"}],
        "pairs": [{"a": "ma", "b": "mb", "error_correlation": 0.8123, "error_kappa": 0.7981,
                   "disagreement": 0.0456, "both_wrong": 0.25, "event_error_correlation": None}],
        "error_correlation": [[1.0, 0.8123], [0.8123, 1.0]], "event_error_correlation": [[None, None], [None, None]],
        "ensemble": {"accuracy": 0.7234, "macro_f1": 0.4199, "accuracy_4": 0.84, "macro_f1_4": 0.55,
                     "gain_accuracy": 0.0123, "best_accuracy_model": "ma", "gain_macro_f1": -0.0023,
                     "best_macro_f1_model": "ma"}})


@pytest.fixture(scope="module")
def finetune_run(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (3-step) semantic-segmentation fine-tune run from scratch, with 8 test events."""
    out = tmp_path_factory.mktemp("report_runs") / "ft"
    cfg = FinetuneConfig(model_overrides=TINY_SHALLOW, labels=4, max_eval_events=2, split=(0.5, 0.1, 0.4),
                         data=DataConfig(paths=(str(tiny_events),), rotate=False),
                         train=TrainConfig(steps=3, batch_size=2, warmup_steps=1, lr=3e-3, progress=False,
                                           log_every=1))
    with one_torch_thread():
        run_finetune(cfg, out)
    return out


def _data(run: Path) -> Path:
    """The event file a run was trained on."""
    return Path(json.loads((run / "split.json").read_text())["files"][0])


@pytest.fixture(scope="module")
def full_report(finetune_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report_all")
    make_pretrain_run(root / "pre")
    make_pid_eval(root / "pid")
    make_study(root / "study")
    make_systematics(root / "syst")
    make_anomalies(root / "anom")
    make_sensitivity(root / "sens")
    make_diversity(root / "div")
    predict_file(finetune_run, _data(finetune_run), root / "preds.h5")  # found in root, not named
    other = simulate_events(root / "other.h5", events=6, seed=9)  # a second event file, named by a run
    (root / "on_other").mkdir()
    (root / "on_other" / "config.yaml").write_text(f"# PretrainConfig\nmodel: pointmae_micro\ndata:\n"
                                                   f"  paths: [{other}]\n", encoding="utf-8")
    out = build_report([root, finetune_run], root / "out" / "report.html", max_events=6, title="Test <report>")
    return out, out.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- parsing
class _Page(html.parser.HTMLParser):
    """Collects section contents (text), image sources and every src/href value."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
            self.sections[self.section or ""] = []
            self.images[self.section or ""] = []
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key] or "")
        if tag == "img" and self.section:
            self.images[self.section].append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        if self.section:
            self.sections[self.section].append(data)

    def text(self, sid: str) -> str:
        return " ".join(self.sections[sid])


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    image.load()
    return image


# ----------------------------------------------------------------------------- tests
def test_every_section_is_filled_from_its_inputs(full_report: tuple[Path, str]) -> None:
    _, page = full_report
    p = parse(page)
    assert list(p.sections) == list(SECTION_IDS)
    for sid in SECTION_IDS:
        assert "Not available" not in p.text(sid), sid
    assert "<title>Test &lt;report&gt;</title>" in page  # the title is escaped
    prov = p.text("provenance")
    assert "0123456789abcdef" in prov and "uncommitted changes" in prov and "abababababababab" in prov
    assert "3.0 min" in prov  # duration from started/ended
    assert "1 unreadable line(s)" in p.text("training")
    evaluation = p.text("evaluation")
    assert "purity" in evaluation and "0.41" in evaluation
    assert "tagged (≥ half right)" in evaluation  # the semseg run's per-particle scores
    assert "pretrained/finetune" in p.text("label-efficiency") and "0.6 ± 0.02 (3)" in p.text("label-efficiency")
    assert "gain_up" in p.text("systematics") and "0.12" in p.text("systematics")
    assert "f1_track" in p.text("systematics") and "runs/ft" in p.text("systematics")
    calibration = p.text("calibration")
    assert "T = 1.7" in calibration and "target coverage 0.9" in calibration and "(aps)" in calibration
    assert "noise_up 0.13 0.04" in " ".join(calibration.split())
    anomalies = p.text("anomalies")
    assert "monopole" in anomalies and "reconstruction" in anomalies and "top 20 of 30" in anomalies
    scores = [float(x) for x in re.findall(r"\b\d+ \d+ (\d\.\d) 100 5\.0", " ".join(anomalies.split()))]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True) and scores[0] == 2.9
    # at least one picture per plotting section
    for sid in ("training", "evaluation", "label-efficiency", "sensitivity", "systematics", "calibration",
                "anomalies"):
        assert p.images[sid], sid


def test_sensitivity_section_shows_seed_spread_conclusions_and_diversity(full_report: tuple[Path, str]) -> None:
    _, page = full_report
    assert page.index('id="label-efficiency"') < page.index('id="sensitivity"') < page.index('id="systematics"')
    p = parse(page)
    text = " ".join(p.text("sensitivity").split())
    # seed spread: metric, mean, std, min, max, scratch mean; per-class F1 rows, not precision
    assert "macro_f1_4 0.53 0.03606 0.5 0.57 0.4567" in text
    assert "f1.track 0.8125 0.01392 0.8 0.8275 0.7" in text and "f1.michel 0.2 0.1414 0.1 0.3 0.1667" in text
    assert "precision.track" not in text and "accuracy_4 0.81" not in text
    # conclusions: verdict with holding seeds, and the seeds that break it
    assert "pretrained beats scratch on macro_f1_4 yes (3/3) –" in text
    assert "pretrained beats scratch on michel F1 no (1/3) 0, 2" in text
    # diversity: per-model scores and the ensemble, its gain, the pairs (undefined as n/a)
    assert "ma 0.7111 0.4222 0.8333 0.5444 0.2889" in text
    assert "ensemble (mean probabilities) 0.7234 0.4199 0.84 0.55 –" in text
    assert "accuracy 0.7234 ma +0.0123" in text and "macro-F1 0.4199 ma -0.0023" in text
    assert "error correlation (points) error correlation (events) error kappa disagreement both wrong" in text
    assert "ma mb 0.8123 n/a 0.7981 0.0456 0.25" in text
    assert "4 events, 4,321 points" in text and "test split of ma" in text
    assert len(p.images["sensitivity"]) == 1  # the per-seed headline values
    assert decode_png(p.images["sensitivity"][0]).width > 100


def test_sensitivity_section_reads_what_the_audits_write(tmp_path: Path) -> None:
    from detfm.audit.diversity import DiversityAccumulator
    from detfm.audit.sensitivity import SensitivityReport, aggregate_metrics, compare_to_scratch

    evals = [{"macro_f1_4": 0.6, "f1": {"track": 0.9}}, {"macro_f1_4": 0.62, "f1": {"track": 0.7}}]
    scratch = [{"macro_f1_4": 0.4, "f1": {"track": 0.8}}, {"macro_f1_4": 0.41, "f1": {"track": 0.8}}]
    report = SensitivityReport(seeds=(3, 7), headline="macro_f1_4", metrics=aggregate_metrics(evals),
                               scratch_metrics=aggregate_metrics(scratch),
                               conclusions=compare_to_scratch(evals, scratch, (3, 7), "macro_f1_4"),
                               runs={}, out_dir=tmp_path)
    write_json(tmp_path / "sens" / "sensitivity.json", report.to_dict())
    acc = DiversityAccumulator(["m1", "m2"])
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=60)
    acc.add([rng.dirichlet(np.ones(5), size=60), rng.dirichlet(np.ones(5), size=60)], truth,
            np.array([0, 20, 40, 60]))
    acc.report().save(tmp_path / "div", heatmap=False)
    p = parse(build_report([tmp_path], tmp_path / "r.html").read_text(encoding="utf-8"))
    text = " ".join(p.text("sensitivity").split())
    assert "macro_f1_4 0.61 " in text and "0.405" in text  # replica mean, scratch mean
    assert "pretrained beats scratch on track F1 no (1/2) 7" in text
    assert "m1 m2 " in text and "ensemble (mean probabilities)" in text and "best single model" in text
    assert len(p.images["sensitivity"]) == 1


def test_sensitivity_file_of_another_kind_is_noted(tmp_path: Path) -> None:
    write_json(tmp_path / "a" / "sensitivity.json", {"kind": "detfm-systematics/1", "metrics": {}})
    write_json(tmp_path / "a" / "diversity.json", {"models": []})
    p = parse(build_report([tmp_path], tmp_path / "r.html").read_text(encoding="utf-8"))
    text = " ".join(p.text("sensitivity").split())
    assert "Not available" not in text
    assert "sensitivity.json: kind 'detfm-systematics/1', this report reads detfm-sensitivity/1; not shown" in text
    assert "diversity.json: kind None, this report reads detfm-diversity/1; not shown" in text
    assert not p.images["sensitivity"]


def test_report_is_self_contained_and_its_images_decode(full_report: tuple[Path, str]) -> None:
    _, page = full_report
    p = parse(page)
    assert p.links, "the page should have navigation links and images"
    for link in p.links:
        assert link.startswith(("#", "data:image/png;base64,")), link[:60]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.IGNORECASE)
    assert "<link" not in page and "@import" not in page
    images = [src for srcs in p.images.values() for src in srcs]
    assert len(images) >= 10
    for src in images:
        image = decode_png(src)
        assert image.width > 50 and image.height > 50
        assert np.unique(np.asarray(image.convert("L"))).size > 2  # not a blank picture


def test_best_and_worst_events_come_from_the_model(full_report: tuple[Path, str], finetune_run: Path) -> None:
    _, page = full_report
    p = parse(page)
    text = p.text("events")
    split = json.loads((finetune_run / "split.json").read_text())
    scored = min(6, len(split["test"]))
    assert f"{scored} test events scored" in text
    best = [float(x) for x in re.findall(r"best: event \d+ \([\d,]+ points, accuracy ([\d.]+)\)", text)]
    worst = [float(x) for x in re.findall(r"worst: event \d+ \([\d,]+ points, accuracy ([\d.]+)\)", text)]
    assert len(best) == 2 and len(worst) == 2
    assert min(best) >= max(worst) and best == sorted(best, reverse=True)
    shown = re.findall(r"(?:best|worst): event (\d+)", text)
    assert {int(e) for e in shown} <= set(split["test"]) and len(set(shown)) == 4
    assert len(p.images["events"]) == 4


def test_absent_inputs_say_not_available(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    page = build_report([tmp_path / "empty"], tmp_path / "r.html").read_text(encoding="utf-8")
    p = parse(page)
    assert list(p.sections) == list(SECTION_IDS)
    for sid in SECTION_IDS:
        assert "Not available" in p.text(sid), sid
    assert not any(p.images.values())
    # a report.json of another kind is not a systematics report; metrics without loss are noted
    write_json(tmp_path / "other" / "report.json", {"kind": "something-else"})
    (tmp_path / "other" / "metrics.jsonl").write_text('{"step": 1, "acc": 0.5}\n', encoding="utf-8")
    p = parse(build_report([tmp_path / "other"], tmp_path / "r2.html").read_text(encoding="utf-8"))
    assert "Not available" in p.text("systematics")
    assert "no step/loss records" in p.text("training")


def test_missing_data_files_are_reported_in_the_events_section(finetune_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(finetune_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    data = tmp_path / "gone.h5"
    shutil.copy(_data(finetune_run), data)
    preds = predict_file(run, data, tmp_path / "preds.h5").path
    data.unlink()
    p = parse(build_report([run], tmp_path / "r.html", predictions=[preds], max_events=2).read_text(encoding="utf-8"))
    text = p.text("events")
    assert "data files are missing" in text and "gone.h5" in text
    assert not p.images["events"]
    assert "Not available" not in p.text("evaluation")  # the rest of the run still shows


def test_the_report_runs_no_model(finetune_run: Path, tmp_path: Path) -> None:
    """Best and worst events come from the predictions file alone: the run's weights are not read."""
    run = tmp_path / "ft"
    shutil.copytree(finetune_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    preds = predict_file(run, _data(run), tmp_path / "preds.h5").path
    (run / "model.safetensors").unlink()
    p = parse(build_report([run], tmp_path / "r.html", predictions=[preds], max_events=4).read_text(encoding="utf-8"))
    assert len(p.images["events"]) == 4 and "test events scored" in p.text("events")
    with pytest.raises(DetfmError, match="not a file written by `detfm predict`"):
        build_report([run], tmp_path / "r2.html", predictions=[_data(run)])


@pytest.mark.parametrize("name, content", [("eval.json", '{"macro_f1": 0.5,'),
                                           ("manifest.json", "[1, 2"),
                                           ("sensitivity.json", '{"kind": "detfm-sensitivity/1"'),
                                           ("diversity.json", "{]"),
                                           ("results.json", "not json")])
def test_corrupt_json_is_a_clear_error_naming_the_file(tmp_path: Path, name: str, content: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(content, encoding="utf-8")
    out = tmp_path / "r.html"
    with pytest.raises(DetfmError, match=re.escape(str(run / name)) + ": not valid JSON"):
        build_report([run], out)
    assert not out.exists() and not list(tmp_path.glob(".r.html*"))


def test_malformed_ranked_csv_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "ranked.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DetfmError, match="ranked.csv: expected columns 'event' and 'score'"):
        build_report([tmp_path], tmp_path / "r.html")
    with pytest.raises(DetfmError, match="no such directory"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(DetfmError, match="max_events"):
        build_report([tmp_path], tmp_path / "r.html", max_events=0)


def test_find_run_dirs_searches_one_level_down(tmp_path: Path) -> None:
    for name in ("b", "a", ".hidden", "checkpoints", "a/deeper"):
        (tmp_path / name).mkdir()
    assert find_run_dirs([tmp_path]) == [tmp_path, tmp_path / "a", tmp_path / "b"]  # one level down only
    found = find_run_dirs([tmp_path, tmp_path / "a"])
    assert found == [tmp_path, tmp_path / "a", tmp_path / "b", tmp_path / "a" / "deeper"]  # 'a' listed once


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_pretrain_run(tmp_path / "run")
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "--out", str(out), "--title", "Runs", "--max-events", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    assert "<h1>Runs</h1>" in page and 'id="training"' in page
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_finetune_config_dataclass_is_the_report_header(finetune_run: Path) -> None:
    # the report recognises fine-tune runs by the first line save_config writes
    first = (finetune_run / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# {FinetuneConfig.__name__}"


def test_runs_on_two_event_files_get_the_data_comparison(tiny_events: Path, tmp_path: Path) -> None:
    other = simulate_events(tmp_path / "other.h5", events=6, seed=9)
    for name, data in (("sim", tiny_events), ("data", other)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.yaml").write_text(
            f"# PretrainConfig\nmodel: pointmae_micro\ndata:\n  paths: [{data}]\n", encoding="utf-8")
    p = parse(build_report([tmp_path / "runs"], tmp_path / "r.html").read_text(encoding="utf-8"))
    text = p.text("data")
    assert "2 event files named by the runs" in text and "other.h5" in text
    assert len(p.images["data"]) >= 3  # the label-free distributions at least
    one = tmp_path / "one"
    shutil.copytree(tmp_path / "runs" / "sim", one / "sim")
    p = parse(build_report([one], tmp_path / "r1.html").read_text(encoding="utf-8"))
    assert "Not available" in p.text("data") and not p.images["data"]
