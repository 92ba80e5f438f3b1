"""Model cards: a Markdown page describing a registered version from what the registry stored.

The card is built only from the version's stored files (manifest.json, config.yaml,
eval.json, split.json, metrics.jsonl and any attached results), so it can be written long
after the run directory is gone. Sections: intended use, training data (files by hash,
event counts, labels), metrics with their spread over seeds, systematics, calibration,
known failure modes (lowest-F1 classes, largest confusions), lineage and how to
reproduce. Anything that was not measured says so ("not evaluated").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

import yaml

from detfm.evaluate.kinds import SENSITIVITY as SENSITIVITY_KIND
from detfm.audit.registry import BACKBONE_MANIFEST, SYSTEMATICS_KIND, ModelVersion, Registry, format_lineage

NOT_EVALUATED = "not evaluated"
MAX_ROWS = 30              # rows of a generic results table before it is cut
CONFUSIONS_SHOWN = 3       # largest off-diagonal confusions listed as failure modes
WEAKEST_SHOWN = 2          # lowest-F1 classes listed as failure modes
CALIBRATION_KEYS = ("ece", "calibration", "temperature", "coverage", "brier", "nll")


def model_card(entry: ModelVersion) -> str:
    """The Markdown model card of a registered version (:class:`DetfmError` if a stored file is missing)."""
    entry.check_stored()
    eval_ = _as_dict(entry.read_json("eval"))
    manifest = _as_dict(entry.read_json("manifest"))
    config = _config(entry)
    sections = [
        _header(entry, manifest),
        _intended_use(entry, config),
        _training_data(entry, config, manifest, eval_),
        _metrics(entry, eval_),
        _systematics(entry),
        _calibration(entry, eval_),
        _failure_modes(entry, eval_),
        _lineage(entry),
        _reproduce(entry, manifest),
    ]
    return "\n\n".join(s.rstrip() for s in sections) + "\n"


# ----------------------------------------------------------------------------- sections
def _header(entry: ModelVersion, manifest: dict[str, Any]) -> str:
    code = _as_dict(manifest.get("code")) or _as_dict(entry.metadata.get("code"))
    rows = [("name", f"`{entry.ref}`"), ("kind", entry.kind),
            ("weights sha256", f"`{entry.weights_sha256}`"), ("registered", entry.created),
            ("aliases", ", ".join(entry.aliases) or "-"),
            ("detfm", f"{code.get('detfm', 'unknown')}, commit `{code.get('git_commit') or 'unknown'}`"
                      + (" (uncommitted changes)" if code.get("git_dirty") else ""))]
    return f"# Model card: {entry.ref}\n\n" + _table(("", ""), rows)


def _intended_use(entry: ModelVersion, config: dict[str, Any]) -> str:
    if entry.kind == "pretrain":
        text = ("A self-supervised point-cloud encoder (masked point modeling) for 3D liquid-argon TPC "
                "events. Use it as a backbone: extract features, or adapt it to segmentation or particle "
                "identification with `detfm finetune`. It makes no physics predictions on its own.")
    elif config.get("task") == "pid":
        text = ("Particle identification of the particle instances of a 3D liquid-argon TPC event "
                "(one label per instance), adapted from a backbone in mode "
                f"`{config.get('mode', '?')}` on {config.get('labels', '?')} labeled events.")
    else:
        text = ("Per-point semantic segmentation of 3D liquid-argon TPC events (shower, track, Michel, "
                f"delta, low-energy), adapted from a backbone in mode `{config.get('mode', '?')}` on "
                f"{config.get('labels', '?')} labeled events.")
    return ("## Intended use\n\n" + text + "\n\nTrained and scored on the data listed below only; "
            "behaviour on other detectors, simulations or real data is not established by this card.")


def _training_data(entry: ModelVersion, config: dict[str, Any], manifest: dict[str, Any],
                   eval_: dict[str, Any]) -> str:
    parts = ["## Training data"]
    if entry.inputs:
        rows = [(f"`{i.path}`", _size(i.size), f"`{i.sha256}`" if i.sha256 else "unreadable")
                for i in entry.inputs]
        parts.append(_table(("file", "size", "sha256"), rows))
    else:
        parts.append("Data files: unknown (no manifest and no readable files in the config).")
    counts = []
    extra = _as_dict(manifest.get("extra"))
    if isinstance(extra.get("dataset_len"), int):
        counts.append(f"events in the training set (after filters): {extra['dataset_len']}")
    split = _as_dict(entry.read_json("split"))
    if split:
        usable = split.get("usable_events")
        sizes = {k: len(split[k]) for k in ("labeled", "train", "val", "test") if isinstance(split.get(k), list)}
        counts.append(f"usable labeled events: {usable}; split {split.get('split')} (seed "
                      f"{split.get('split_seed')}): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if eval_.get("events") is not None:
        counts.append(f"test events scored: {eval_['events']}"
                      + (f" ({eval_['points']} points)" if eval_.get("points") is not None else "")
                      + (f" ({eval_['instances']} particles)" if eval_.get("instances") is not None else ""))
    data = _as_dict(config.get("data"))
    if data:
        counts.append(f"energy threshold {data.get('energy_threshold')} MeV, min points {data.get('min_points')}, "
                      f"rotation {'on' if data.get('rotate') else 'off'}")
    if entry.kind == "finetune":
        classes = eval_.get("classes")
        counts.append(f"labels: {config.get('labels', '?')} labeled events"
                      + (f"; classes {', '.join(map(str, classes))}" if isinstance(classes, list) else ""))
    else:
        counts.append("labels: none (self-supervised)")
    parts.append("\n".join(f"- {c}" for c in counts))
    return "\n\n".join(parts)


def _metrics(entry: ModelVersion, eval_: dict[str, Any]) -> str:
    parts = ["## Metrics"]
    if not eval_:
        if entry.kind == "pretrain":
            loss = entry.metadata.get("final_loss")
            parts.append(f"Downstream metrics: {NOT_EVALUATED} (a backbone; evaluate it through probes or "
                         f"fine-tuning). Final training loss: {_num(loss)}.")
        else:
            parts.append(f"Test metrics: {NOT_EVALUATED} (no eval.json).")
    else:
        headline = [(k, _num(v)) for k, v in eval_.items() if isinstance(v, (int, float))
                    and not isinstance(v, bool) and k not in ("labels", "events", "points", "instances")]
        parts.append(f"On the `{eval_.get('split', 'test')}` split:\n\n" + _table(("metric", "value"), headline))
        per_class = _per_class_rows(eval_)
        if per_class:
            parts.append(_table(per_class[0], per_class[1]))
    parts.append("### Spread over seeds\n\n" + _spread(entry))
    return "\n\n".join(parts)


def _spread(entry: ModelVersion) -> str:
    parts = [text for text in (_sensitivity_spread(entry), _study_spread(entry)) if text]
    if not parts:
        return f"Spread over seeds and label counts: {NOT_EVALUATED} (a single run)."
    return "\n\n".join(parts)


def _sensitivity_spread(entry: ModelVersion) -> str | None:
    """The attached seed-sensitivity audit: headline and per-class F1 over the replicas, and
    whether each 'pretrained beats scratch' conclusion held for every seed."""
    report = entry.read_json("sensitivity")
    if not isinstance(report, Mapping) or report.get("kind") != SENSITIVITY_KIND:
        return None
    seeds = report.get("seeds") or []
    headline = str(report.get("headline", ""))
    metrics, scratch = _as_dict(report.get("metrics")), _as_dict(report.get("scratch_metrics"))
    names = [k for k in metrics if k == headline or k.startswith("f1.")]
    rows = []
    for name in names:
        mine, other = _as_dict(metrics[name]), _as_dict(scratch.get(name))
        rows.append((name, _num(mine.get("mean")), _num(mine.get("std")), _num(mine.get("min")),
                     _num(mine.get("max")), _num(other.get("mean")) if other else "-"))
    text = (f"Seed-sensitivity audit over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
            "sample std; the last column is the same configuration trained from scratch:\n\n"
            + _table(("metric", "mean", "std", "min", "max", "scratch mean"), rows))
    verdicts = [f"- {c.get('statement')}: "
                + ("holds for every seed" if c.get("holds_for_all_seeds")
                   else f"**does not hold for every seed** ({c.get('holding_seeds')}/{len(c.get('per_seed') or [])})")
                for c in report.get("conclusions") or [] if isinstance(c, Mapping)]
    if verdicts:
        text += "\n\nConclusions checked seed by seed:\n\n" + "\n".join(verdicts)
    replicas = [PurePath(str(r)).name for r in _as_dict(report.get("runs")).get("model") or []]
    if entry.run_dir is not None and PurePath(entry.run_dir).name in replicas:
        text += f"\n\nThis model is the audit's replica `{PurePath(entry.run_dir).name}`."
    return text


def _study_spread(entry: ModelVersion) -> str | None:
    study = entry.read_json("label_efficiency")
    if not isinstance(study, Mapping):
        return None
    metric = study.get("metric", "metric")
    summary = study.get("summary", study)
    rows = [(" / ".join(path), _num(leaf.get("mean")), _num(leaf.get("std")), str(leaf.get("n", "?")))
            for path, leaf in _stat_leaves(summary)]
    if not rows:
        return f"A label-efficiency study is attached but holds no mean/std entries ({NOT_EVALUATED})."
    text = (f"Label-efficiency study, {metric} (mean and sample std over seeds):\n\n"
            + _table(("variant / labels", "mean", "std", "seeds"), rows[:MAX_ROWS]) + _cut(rows))
    point = _study_point(study, entry.run_dir)
    if point is not None:
        text += (f"\n\nThis model is one point of the study: {point.get('backbone')}"
                 + (f" ({point['mode']})" if point.get("mode") else "")
                 + f", {point.get('labels')} labels, seed {point.get('seed')}: {metric} {_num(point.get(metric))}.")
    return text


def _study_point(study: Mapping[str, Any], run_dir: str | None) -> Mapping[str, Any] | None:
    """The study's entry for the run this version came from (matched by folder name)."""
    runs = study.get("runs")
    if run_dir is None or not isinstance(runs, list):
        return None
    name = PurePath(run_dir).name
    for run in runs:
        if isinstance(run, Mapping) and isinstance(run.get("run"), str) and PurePath(run["run"]).name == name:
            return run
    return None


def _systematics(entry: ModelVersion) -> str:
    report = entry.read_json("systematics")
    if report is None:
        return f"## Systematics\n\nDetector-variation systematics: {NOT_EVALUATED}."
    if isinstance(report, Mapping) and report.get("kind") == SYSTEMATICS_KIND:
        with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
            return "## Systematics\n\n" + _variation_table(report)
    rows = [(key, _num(value)) for key, value in _numeric_leaves(report)]
    body = _table(("quantity", "value"), rows[:MAX_ROWS]) + _cut(rows) if rows else "(no numbers in the report)"
    return "## Systematics\n\nFrom the attached systematics report:\n\n" + body


def _variation_table(report: Mapping[str, Any]) -> str:
    """One row per detector variation: headline metric with its interval, paired shift, flips."""
    metric = "macro_f1_4"
    rows = []
    for v in report["variations"]:
        m = report["metrics"][v][metric]
        d = (report.get("differences") or {}).get(v, {}).get(metric) or {}
        flips = (report.get("flip_fraction") or {}).get(v) or {}
        nominal = v == "nominal"
        rows.append((str(v), f"{_num(m.get('value'))} [{_num(m.get('lo'))}, {_num(m.get('hi'))}]",
                     "-" if nominal else f"{_signed(d.get('value'))} [{_signed(d.get('lo'))}, {_signed(d.get('hi'))}]",
                     "-" if nominal else _num(flips.get("mean"))))
    return (f"The same model on {report.get('events', '?')} events rendered through shifted detector models "
            f"(68 % bootstrap intervals; shifts are paired differences to nominal):\n\n"
            + _table(("variation", metric, "shift", "flip fraction"), rows))


def _calibration(entry: ModelVersion, eval_: dict[str, Any]) -> str:
    stored = entry.read_json("calibration")
    rows = [(key, _num(value)) for key, value in _numeric_leaves(stored)] if stored is not None else []
    if not rows:
        rows = _systematics_calibration(entry.read_json("systematics"))
    rows += [(f"eval.{key}", _num(value)) for key, value in _numeric_leaves(eval_)
             if any(word in key.lower() for word in CALIBRATION_KEYS)]
    if not rows:
        return f"## Calibration\n\nCalibration (ECE, temperature, coverage): {NOT_EVALUATED}."
    return "## Calibration\n\n" + _table(("quantity", "value"), rows[:MAX_ROWS]) + _cut(rows)


def _systematics_calibration(report: Any) -> list[tuple[str, str]]:
    """Temperature, ECE and conformal coverage on nominal events from a systematics report."""
    if not isinstance(report, Mapping) or report.get("kind") != SYSTEMATICS_KIND:
        return []
    cal = _as_dict(report.get("calibration"))
    conf = _as_dict(report.get("conformal"))
    rows = []
    if cal.get("temperature") is not None:
        rows.append(("temperature (fitted on nominal)", _num(cal["temperature"])))
    for key, label in (("ece_before", "ECE before temperature scaling"), ("ece_after", "ECE after temperature scaling")):
        value = _as_dict(cal.get(key)).get("nominal")
        if value is not None:
            rows.append((f"{label}, nominal", _num(value)))
    coverage = _as_dict(conf.get("coverage")).get("nominal")
    if coverage is not None:
        target = 1 - conf["alpha"] if isinstance(conf.get("alpha"), (int, float)) else None
        rows.append((f"conformal {conf.get('method', '')} coverage, nominal (target {_num(target)})", _num(coverage)))
    size = _as_dict(conf.get("set_size")).get("nominal")
    if size is not None:
        rows.append(("conformal mean set size, nominal", _num(size)))
    return rows


def _failure_modes(entry: ModelVersion, eval_: dict[str, Any]) -> str:
    lines: list[str] = []
    f1 = _as_dict(eval_.get("f1"))
    scored = sorted(((v, k) for k, v in f1.items() if isinstance(v, (int, float))), key=lambda t: t[0])
    for value, name in scored[:WEAKEST_SHOWN]:
        lines.append(f"- lowest F1: **{name}** ({value:.3f})")
    absent = [k for k, v in f1.items() if v is None]
    if absent:
        lines.append(f"- no test examples (F1 undefined): {', '.join(absent)}")
    lines += [f"- confusion: {share:.1%} of true **{truth}** predicted as **{pred}**"
              for share, truth, pred in _top_confusions(eval_)]
    worst = _worst_variation(entry.read_json("systematics"))
    if worst is not None:
        lines.append(f"- detector variation with the largest drop: **{worst[0]}** (macro_f1_4 {worst[1]:+.3f})")
    if not lines:
        return f"## Known failure modes\n\nPer-class failure modes: {NOT_EVALUATED}."
    return "## Known failure modes\n\nObserved on the test split (and the detector variations, where measured):\n\n" + "\n".join(lines)


def _worst_variation(report: Any) -> tuple[str, float] | None:
    if not isinstance(report, Mapping) or report.get("kind") != SYSTEMATICS_KIND:
        return None
    shifts = []
    for name, by_metric in _as_dict(report.get("differences")).items():
        value = _as_dict(_as_dict(by_metric).get("macro_f1_4")).get("value")
        if name != "nominal" and isinstance(value, (int, float)):
            shifts.append((float(value), str(name)))
    if not shifts:
        return None
    value, name = min(shifts)
    return (name, value) if value < 0 else None


def _lineage(entry: ModelVersion) -> str:
    chain = Registry(entry.root).lineage(entry)
    text = format_lineage(chain)
    notes = []
    if entry.kind == "finetune" and entry.parent is None:
        notes.append("Trained from scratch (random initialisation), no pretrained backbone.")
    elif len(chain) > 1 and chain[1].entry is None:
        stored = " (its manifest is stored with this version)" if BACKBONE_MANIFEST in entry.files else ""
        notes.append(f"The backbone is not registered{stored}.")
    return "## Lineage\n\n```\n" + text + "\n```" + ("\n\n" + " ".join(notes) if notes else "")


def _reproduce(entry: ModelVersion, manifest: dict[str, Any]) -> str:
    if not manifest:
        return f"## Reproduce\n\nNo manifest stored: code version, environment and seeds are {NOT_EVALUATED}."
    env = _as_dict(manifest.get("environment"))
    seeds = _as_dict(manifest.get("seeds"))
    lines = [f"- config sha256: `{manifest.get('config_sha256')}` (config.yaml is stored with this version)",
             "- seeds: " + (", ".join(f"{k}={v}" for k, v in seeds.items()) or "none recorded"),
             f"- command: `{' '.join(map(str, manifest.get('command') or []))}`",
             f"- device: {manifest.get('device')}",
             f"- environment: Python {env.get('python')}, torch {env.get('torch')}, numpy {env.get('numpy')}, "
             f"{env.get('platform')}",
             f"- started {manifest.get('started')}, ended {manifest.get('ended') or 'not recorded'}, "
             f"wall {_num(manifest.get('wall_seconds'))} s"
             + (f", resumed {len(manifest['resumes'])} time(s)" if manifest.get("resumes") else "")]
    return "## Reproduce\n\n" + "\n".join(lines) + f"\n\nExport the run: `detfm registry export {entry.ref} DIR`."


# ----------------------------------------------------------------------------- helpers
def _config(entry: ModelVersion) -> dict[str, Any]:
    data = entry.read_bytes("config")
    if data is None:
        return {}
    try:
        return _as_dict(yaml.safe_load(data.decode("utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _per_class_rows(eval_: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]] | None:
    columns = [k for k in ("f1", "precision", "recall", "efficiency", "purity") if isinstance(eval_.get(k), Mapping)]
    if "f1" not in columns:
        return None
    classes = list(eval_["f1"])
    rows = [(c, *(_num(eval_[k].get(c)) for k in columns)) for c in classes]
    return ("class", *columns), rows


def _top_confusions(eval_: dict[str, Any]) -> list[tuple[float, str, str]]:
    """The largest off-diagonal entries of the confusion matrix, as shares of the true class."""
    matrix, classes = eval_.get("confusion"), eval_.get("classes")
    if not isinstance(matrix, list) or not isinstance(classes, list) or len(matrix) != len(classes):
        return []
    found = []
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != len(classes):
            return []
        total = sum(row)
        for j, count in enumerate(row):
            if i != j and total > 0 and count > 0:
                found.append((count / total, str(classes[i]), str(classes[j])))
    return sorted(found, reverse=True)[:CONFUSIONS_SHOWN]


def _stat_leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """Every mapping holding ``mean`` and ``std`` under ``tree``, with its key path."""
    if isinstance(tree, Mapping):
        if "mean" in tree and "std" in tree:
            yield path, tree
            return
        for key, value in tree.items():
            yield from _stat_leaves(value, (*path, str(key)))


def _numeric_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number under ``tree`` (lists of more than 8 numbers are skipped), by dotted key."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _numeric_leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, list) and len(tree) <= 8:
        for i, value in enumerate(tree):
            yield from _numeric_leaves(value, f"{prefix}{i}.")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix.rstrip("."), float(tree)


def _signed(value: Any) -> str:
    return f"{value:+.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cut(rows: list[Any]) -> str:
    return f"\n\n({len(rows) - MAX_ROWS} more rows in the stored file)" if len(rows) > MAX_ROWS else ""


__all__ = ["NOT_EVALUATED", "model_card"]
