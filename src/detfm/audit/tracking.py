"""Send a finished run to an MLflow tracking server or database (optional: ``detfm[mlflow]``).

:func:`log_run` reads what a run directory already holds and records it as one MLflow run:

* params: ``config.yaml`` flattened to dotted keys (``train.lr``, ``data.paths``, ...);
* metrics: every numeric field of every ``metrics.jsonl`` line, at its ``step``; the
  numeric scores of ``eval.json`` flattened under ``eval/`` (``eval/f1/track``), at the
  run's last step;
* tags: the run directory and, from ``manifest.json``, the code version and commit;
* artifacts: the run's top-level files (config, metrics, manifest, eval, split, model card,
  weights; not ``checkpoints/``), and the model files under ``model/``;
* optionally a registered model version whose source is that ``model/`` folder, tagged with
  the SHA-256 of the weights.

Weights stay safetensors: nothing is pickled (no ``mlflow.pytorch.log_model``). The
MlflowClient API is used throughout, so no global MLflow state (active run, tracking URI)
is touched. Only the main process logs (``RANK`` unset or 0).

Usage::

    from detfm.audit.tracking import log_run, require_mlflow
    require_mlflow()  # before training: a missing extra fails at once, not after the run
    ...
    log_run("sqlite:///mlflow.db", "runs/ft", register_as="semseg-micro")

Any tracking URI MLflow understands works (``sqlite:///file.db``, ``http://host:5000``,
a ``file:`` store). For a ``sqlite:`` URI the artifacts go, unless ``artifact_location`` is
given, to ``mlartifacts/`` beside the database file.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detfm.engine.runs import BACKBONE_FILE, CONFIG_FILE, EVAL_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE
from detfm.errors import DetfmError
from detfm.io import file_sha256

__all__ = ["flatten", "is_main_process", "log_run", "require_mlflow"]

#: Files that describe the model next to its weights (copied under ``model/``).
MODEL_FILES = (MODEL_FILE, CONFIG_FILE, BACKBONE_FILE)
MODEL_ARTIFACT_PATH = "model"
INSTALL_HINT = "pip install 'detfm[mlflow]'"

# MLflow's limits on one log_batch call and on a parameter value (mlflow.utils.validation).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LENGTH = 6000
_KEY_OK = re.compile(r"[^A-Za-z0-9_\-./ ]")


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed job (env ``RANK``)."""
    rank = os.environ.get("RANK", "").strip()
    return rank in ("", "0")


def require_mlflow() -> None:
    """Raise :class:`DetfmError` with the install hint if mlflow cannot be imported.

    Call it before a long run that will be tracked, so a missing extra fails at once.
    """
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError:
        raise DetfmError(f"experiment tracking needs mlflow: {INSTALL_HINT}") from None


def flatten(tree: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings as one level with ``sep``-joined keys; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def log_run(uri: str, run_dir: str | os.PathLike[str], *, experiment: str = "detfm",
            register_as: str | None = None, artifact_location: str | None = None) -> str | None:
    """Record the finished run ``run_dir`` in the MLflow store at ``uri``.

    Args:
        uri: MLflow tracking URI (also used as the model-registry URI).
        run_dir: a run directory of ``detfm pretrain`` / ``detfm finetune``.
        experiment: MLflow experiment name (created if missing).
        register_as: if given, register the run's model under this name (a new version).
        artifact_location: artifact root of a newly created experiment (default: MLflow's,
            or ``mlartifacts/`` beside a sqlite database).

    Returns:
        The MLflow run id, or None on a non-zero ``RANK`` (nothing is logged there).

    Raises:
        DetfmError: mlflow is not installed, ``run_dir`` is not a run, a run file is
            corrupt, or the store refuses the run (the message says why).
    """
    if not is_main_process():
        return None
    run = Path(run_dir)
    if not run.is_dir():
        raise DetfmError(f"{run}: no such run directory")
    if not (run / CONFIG_FILE).is_file():
        raise DetfmError(f"{run}: not a run directory (no {CONFIG_FILE})")
    if register_as is not None and not (run / MODEL_FILE).is_file():
        raise DetfmError(f"{run}: no {MODEL_FILE} to register (is the run finished?)")
    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    params = _params(run)
    steps = _metric_steps(run)
    scores = _eval_scores(run)
    tags = _tags(run)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = _experiment(client, experiment, artifact_location or _default_artifacts(uri))
        mlrun = client.create_run(experiment_id, run_name=run.resolve().name, tags=tags)
        run_id = mlrun.info.run_id
        try:
            _log_data(client, run_id, params, steps, scores)
            _log_artifacts(client, run_id, run)
            if register_as is not None:
                _register(client, run_id, mlrun.info.artifact_uri, register_as, run)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    except MlflowException as exc:
        raise DetfmError(f"mlflow at {uri}: {exc.message}") from None
    return run_id


# ----------------------------------------------------------------------------- reading the run
def _params(run: Path) -> dict[str, str]:
    import yaml

    path = run / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DetfmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise DetfmError(f"{path}: expected a mapping of config fields")
    params = {}
    for key, value in flatten(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[_key(key)] = text[:_MAX_PARAM_LENGTH]
    return params


def _metric_steps(run: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, numeric fields) of each metrics.jsonl line (unreadable lines skipped, as a
    crash can leave a partial last line)."""
    from detfm.engine.progress import read_metrics  # here: importing detfm.engine loads torch

    return [(int(record["step"]), {_key(k): float(v) for k, v in record.items() if k != "step" and _numeric(v)})
            for record in read_metrics(run / METRICS_FILE) if _numeric(record.get("step"))]


def _eval_scores(run: Path) -> dict[str, float]:
    path = run / EVAL_FILE
    if not path.is_file():
        return {}
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetfmError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(scores, dict):
        raise DetfmError(f"{path}: expected a JSON object")
    return {_key(f"eval/{k}"): float(v) for k, v in flatten(scores, sep="/").items() if _numeric(v)}


def _tags(run: Path) -> dict[str, str]:
    tags = {"detfm.run_dir": str(run.resolve())}
    first = (run / CONFIG_FILE).read_text(encoding="utf-8").split("\n", 1)[0].strip()
    if first.startswith("#"):
        tags["detfm.config"] = first.lstrip("# ").strip()
    path = run / MANIFEST_FILE
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DetfmError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        code = manifest.get("code") if isinstance(manifest, dict) else None
        if isinstance(code, dict):
            for tag, keys in (("detfm.version", ("version", "detfm")), ("mlflow.source.git.commit",
                                                                       ("commit", "git_commit")),
                              ("detfm.git_dirty", ("dirty", "git_dirty"))):
                value = next((code[k] for k in keys if code.get(k) is not None), None)
                if value is not None:
                    tags[tag] = str(value)
    return tags


def _numeric(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key(name: str) -> str:
    """An MLflow-safe key (letters, digits and ``_-./`` and space)."""
    return _KEY_OK.sub("_", name)


# ----------------------------------------------------------------------------- logging
def _default_artifacts(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def _experiment(client: Any, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise DetfmError(f"mlflow experiment '{name}' is deleted; restore it or pick another name")
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for a in range(0, len(items), size):
        yield items[a:a + size]


def _log_data(client: Any, run_id: str, params: dict[str, str], steps: list[tuple[int, dict[str, float]]],
              scores: dict[str, float]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for step, values in steps for key, value in values.items()]
    last = max((step for step, _ in steps), default=0)
    metrics += [Metric(key, value, now, last) for key, value in scores.items()]
    for chunk in _chunks([Param(k, v) for k, v in params.items()], _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metrics, _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def _log_artifacts(client: Any, run_id: str, run: Path) -> None:
    for path in sorted(run.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            client.log_artifact(run_id, str(path))
    for name in MODEL_FILES:
        if (run / name).is_file():
            client.log_artifact(run_id, str(run / name), MODEL_ARTIFACT_PATH)


def _register(client: Any, run_id: str, artifact_uri: str, name: str, run: Path) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="detfm model (safetensors weights and configs)")
    client.create_model_version(name, source=f"{artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}", run_id=run_id,
                                tags={"detfm.weights_sha256": file_sha256(run / MODEL_FILE),
                                      "detfm.format": "safetensors"})
