"""Bad input to every command, one row per case: exit status, a one-line message, outputs untouched.

Each case builds its inputs in a fresh folder, runs ``detfm.cli.main(argv)`` in-process and checks
that (a) the exit status is the expected one, (b) stderr is one line matching the expected
message, with no traceback, and (c) the output path it names is byte-for-byte as before (or still
absent). The rows follow the hostile-user report of the hardening issue: unwritable outputs,
silent wrong successes, silent overwrites and unclear messages; the cases that already passed
are rows too, so they stay passing.

Unwritable paths are made with a regular file where a folder is expected (``blocker/out``), which
holds for every user, root included.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import one_torch_thread
from safetensors.numpy import load_file, save_file

from detfm.cli import main
from detfm.io import Event, layout, read_events, write_events

FEW = 6  # events in the small bad files


# ----------------------------------------------------------------------------- inputs
def _altered(src: Path, dst: Path, change: Callable[[Event], Event], events: int = FEW) -> Path:
    write_events(dst, [change(e) for e in read_events(src)[:events]])
    return dst


def _negative_energy(e: Event) -> Event:
    points = e.points.copy()
    points[0, layout.VALUE] = -5.0
    return dataclasses.replace(e, points=points)


def _outside_box(e: Event) -> Event:
    points = e.points.copy()
    points[0, layout.X] = 800.0
    return dataclasses.replace(e, points=points)


def _bad_pid(e: Event) -> Event:
    clusters = e.clusters.copy()
    clusters[-1, layout.C_PID] = 7
    return dataclasses.replace(e, clusters=clusters)


def _resized(weights: Path) -> None:
    """Give the first 2-D tensor of a weights file another width (as from a model of another size)."""
    tensors = load_file(str(weights))
    name = next(n for n, t in sorted(tensors.items()) if t.ndim == 2)
    t = tensors[name]
    tensors[name] = np.zeros((t.shape[0], t.shape[1] + 3), t.dtype)
    save_file(tensors, str(weights))


def _fake_run(folder: Path, kind: str = "PretrainConfig", weights: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    if weights is None:
        save_file({"w": np.arange(16, dtype=np.float32)}, str(folder / "model.safetensors"))
    else:
        (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.yaml").write_text(f"# {kind}\nmodel: pointmae_micro\ntrain:\n  steps: 2\n")
    return folder


@dataclass
class World:
    """The shared inputs every case may use (read-only) and the case's own folder."""

    tmp: Path
    events: Path
    pretrained: Path
    finetuned: Path
    negative: Path
    outside: Path
    bad_pid: Path

    def blocker(self) -> Path:
        """A regular file where a folder is expected: nothing can be written under it."""
        path = self.tmp / "blocker"
        path.write_text("a file, not a folder\n")
        return path

    def registry(self) -> Path:
        """A registry holding one version, 'm:1'."""
        reg = self.tmp / "reg"
        assert main(["registry", "add", str(_fake_run(self.tmp / "run_for_reg")), "--name", "m",
                     "--registry", str(reg)]) == 0
        return reg

    def copy_run(self, run: Path) -> Path:
        dst = self.tmp / f"copy_{run.name}"
        shutil.copytree(run, dst, symlinks=True)
        return dst


@pytest.fixture(scope="module")
def world_inputs(tiny_events: Path, tiny_pretrained: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad_inputs")
    finetuned = base / "ft"
    with one_torch_thread():
        assert main(["finetune", "--backbone", str(tiny_pretrained), "--data", str(tiny_events), "--labels", "4",
                     "--steps", "1", "--mode", "head", "--out", str(finetuned)]) == 0
    return {"events": tiny_events, "pretrained": tiny_pretrained, "finetuned": finetuned,
            "negative": _altered(tiny_events, base / "negative.h5", _negative_energy),
            "outside": _altered(tiny_events, base / "outside.h5", _outside_box),
            "bad_pid": _altered(tiny_events, base / "bad_pid.h5", _bad_pid, events=10)}


@pytest.fixture
def world(world_inputs: dict[str, Path], tmp_path: Path) -> World:
    return World(tmp=tmp_path, **world_inputs)


# ----------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """``setup(world) -> (argv, output path)``; the command must exit ``code`` with ``message``."""

    id: str
    setup: Callable[[World], tuple[list[str], Path]]
    code: int
    message: str


def _existing(path: Path, text: str = "keep me\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _existing_dir_output(folder: Path, name: str) -> Path:
    _existing(folder / name)
    return folder / name


def _fake(w: World) -> Path:
    return _fake_run(w.tmp / "fake")


CASES = [
    # --- 1. outputs that cannot be written: one line naming the path, exit 2 (were tracebacks)
    Case("simulate-out-is-folder",
         lambda w: (["simulate", "--events", "2", "--out", str(w.tmp), "--overwrite", "--quiet"], w.tmp),
         2, r"is a folder"),
    Case("simulate-unwritable",
         lambda w: (["simulate", "--events", "2", "--out", str(w.blocker() / "ev.h5"), "--quiet"], w.tmp / "blocker"),
         2, r"blocker.*is a file, not a folder"),
    Case("show-png-unwritable",
         lambda w: (["show", str(w.events), "--out", str(w.blocker() / "e.png")], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("show-html-unwritable",
         lambda w: (["show", str(w.events), "--out", str(w.blocker() / "e.html")], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("predict-unwritable",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.events), "--out",
                     str(w.blocker() / "p.h5"), "--quiet"], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("card-unwritable",
         lambda w: (["card", "m", "--registry", str(w.registry()), "--out", str(w.blocker() / "card.md")],
                    w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("anomalies-unwritable",
         lambda w: (["anomalies", "--model", str(w.pretrained), "--data", str(w.events), "--out",
                     str(w.blocker() / "r.csv"), "--quiet"], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("report-unwritable",
         lambda w: (["report", str(w.pretrained), "--out", str(w.blocker() / "r.html")], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("evaluate-unwritable",
         lambda w: (["evaluate", "--model", str(w.finetuned), "--data", str(w.events), "--out",
                     str(w.blocker() / "ev"), "--quiet"], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("pretrain-unwritable",
         lambda w: (["pretrain", "--data", str(w.events), "--steps", "1", "--out", str(w.blocker() / "run")],
                    w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("finetune-unwritable",
         lambda w: (["finetune", "--backbone", str(w.pretrained), "--data", str(w.events), "--labels", "4",
                     "--steps", "1", "--out", str(w.blocker() / "run")], w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    Case("registry-add-new-unwritable",
         lambda w: (["registry", "add", str(_fake(w)), "--name", "m", "--registry", str(w.blocker() / "reg")],
                    w.tmp / "blocker"),
         2, r"registry.*blocker.*not a folder|blocker.*registry"),
    Case("registry-add-existing-unwritable",
         lambda w: _blobs_blocked(w), 2, r"blobs"),
    Case("registry-export-unwritable",
         lambda w: (["registry", "export", "m", str(w.blocker() / "out"), "--registry", str(w.registry())],
                    w.tmp / "blocker"),
         2, r"blocker.*not a folder"),
    # --- 2. silent wrong successes: now errors naming file, event and field
    Case("simulate-zero-events",
         lambda w: (["simulate", "--events", "0", "--out", str(w.tmp / "ev.h5"), "--quiet"], w.tmp / "ev.h5"),
         2, r"--events must be >= 1"),
    Case("validate-empty-file",
         lambda w: (["validate", str(_empty_file(w))], w.tmp / "empty.h5"), 1, r"empty.h5: 1 violation"),
    Case("show-negative-event",
         lambda w: (["show", str(w.events), "--event", "-1", "--out", str(w.tmp / "e.html")], w.tmp / "e.html"),
         2, r"--event must be >= 0"),
    Case("pretrain-negative-energy",
         lambda w: (["pretrain", "--data", str(w.negative), "--steps", "1", "--batch-size", "2",
                     "--out", str(w.tmp / "run")], w.tmp / "run"),
         2, r"negative\.h5, event \d+, field 'point': 1 point\(s\) with a negative voxel value"),
    Case("pretrain-outside-box",
         lambda w: (["pretrain", "--data", str(w.outside), "--steps", "1", "--batch-size", "2",
                     "--out", str(w.tmp / "run")], w.tmp / "run"),
         2, r"outside\.h5, event \d+, field 'point': 1 point\(s\) with coordinates outside \[0, 768\)"),
    Case("predict-negative-energy",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.negative), "--out",
                     str(w.tmp / "p.h5"), "--quiet"], w.tmp / "p.h5"),
         2, r"negative\.h5, event \d+, field 'point': .*negative voxel value"),
    Case("predict-outside-box",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.outside), "--out",
                     str(w.tmp / "p.h5"), "--quiet"], w.tmp / "p.h5"),
         2, r"outside\.h5, event \d+, field 'point': .*coordinates outside"),
    Case("anomalies-negative-energy",
         lambda w: (["anomalies", "--model", str(w.pretrained), "--data", str(w.negative), "--out",
                     str(w.tmp / "r.csv"), "--masks", "1", "--quiet"], w.tmp / "r.csv"),
         2, r"negative\.h5, event \d+, field 'point': .*negative voxel value"),
    Case("anomalies-outside-box",
         lambda w: (["anomalies", "--model", str(w.pretrained), "--data", str(w.outside), "--out",
                     str(w.tmp / "r.csv"), "--masks", "1", "--quiet"], w.tmp / "r.csv"),
         2, r"outside\.h5, event \d+, field 'point': .*coordinates outside"),
    Case("finetune-pid-out-of-range",
         lambda w: (["finetune", "--backbone", str(w.pretrained), "--data", str(w.bad_pid), "--task", "pid",
                     "--labels", "4", "--steps", "1", "--out", str(w.tmp / "run")], w.tmp / "run"),
         2, r"bad_pid\.h5, event \d+, field 'cluster': unknown pid code\(s\) \[7\]"),
    Case("registry-add-truncated-weights",
         lambda w: _add_weights(w, "truncated"), 2, r"model\.safetensors: truncated"),
    Case("registry-add-random-weights",
         lambda w: _add_weights(w, "random"), 2, r"model\.safetensors: not a safetensors file"),
    Case("report-no-runs",
         lambda w: (["report", str(_empty_dir(w)), "--out", str(w.tmp / "r.html")], w.tmp / "r.html"),
         2, r"nothing to report in .*empty"),
    # --- 3. existing outputs: one rule, --overwrite or refuse
    Case("simulate-exists",
         lambda w: (["simulate", "--events", "2", "--out", str(_existing(w.tmp / "ev.h5")), "--quiet"],
                    w.tmp / "ev.h5"), 2, r"ev\.h5 exists; pass --overwrite"),
    Case("predict-exists",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.events), "--out",
                     str(_existing(w.tmp / "p.h5")), "--quiet"], w.tmp / "p.h5"),
         2, r"p\.h5 exists; pass --overwrite"),
    Case("show-exists",
         lambda w: (["show", str(w.events), "--out", str(_existing(w.tmp / "e.html"))], w.tmp / "e.html"),
         2, r"e\.html exists; pass --overwrite"),
    Case("card-exists",
         lambda w: (["card", "m", "--registry", str(w.registry()), "--out", str(_existing(w.tmp / "card.md"))],
                    w.tmp / "card.md"), 2, r"card\.md exists; pass --overwrite"),
    Case("report-exists",
         lambda w: (["report", str(w.pretrained), "--out", str(_existing(w.tmp / "r.html"))], w.tmp / "r.html"),
         2, r"r\.html exists; pass --overwrite"),
    Case("anomalies-exists",
         lambda w: (["anomalies", "--model", str(w.pretrained), "--data", str(w.events), "--out",
                     str(_existing(w.tmp / "r.csv")), "--quiet"], w.tmp / "r.csv"),
         2, r"r\.csv exists; pass --overwrite"),
    Case("anomalies-study-exists",
         lambda w: (["anomalies", "study", "--model", str(w.pretrained), "--normal", str(w.events),
                     "--anomalous", f"x={w.events}", "--reference", str(w.events), "--out", str(w.tmp / "st"),
                     "--quiet"], _existing_dir_output(w.tmp / "st", "anomalies.json")),
         2, r"already holds anomalies\.json; pass --overwrite"),
    Case("evaluate-exists",
         lambda w: (["evaluate", "--model", str(w.finetuned), "--data", str(w.events), "--out", str(w.tmp / "ev"),
                     "--quiet"], _existing_dir_output(w.tmp / "ev", "report.json")),
         2, r"already holds report\.json; pass --overwrite"),
    Case("pretrain-finished-run",
         lambda w: (["pretrain", "--data", str(w.events), "--steps", "1", "--batch-size", "2", "--out",
                     str(w.copy_run(w.pretrained))],
                    w.tmp / "copy_pre" / "model.safetensors"),
         2, r"already holds a run"),
    # --- 4. unclear messages
    Case("bad-yaml",
         lambda w: (["pretrain", "--config", str(_existing(w.tmp / "bad.yaml", "train:\n  steps: 2\n lr: [1\n")),
                     "--out", str(w.tmp / "run")], w.tmp / "run"),
         2, r"bad\.yaml, line \d+, column \d+: not valid YAML"),
    Case("predict-weights-of-another-size",
         lambda w: (["predict", "--model", str(_resized_copy(w, w.finetuned)), "--data", str(w.events),
                     "--out", str(w.tmp / "p.h5"), "--quiet"], w.tmp / "p.h5"),
         2, r"model\.safetensors: weights do not fit this model .*tensor '[^']+' is \[\d+, \d+\] in the file, "
            r"\[\d+, \d+\] in this model"),
    Case("anomalies-weights-of-another-size",
         lambda w: (["anomalies", "--model", str(_resized_copy(w, w.pretrained)), "--data", str(w.events),
                     "--out", str(w.tmp / "r.csv"), "--quiet"], w.tmp / "r.csv"),
         2, r"model\.safetensors: weights do not fit this model .*tensor '[^']+' is \[\d+, \d+\] in the file"),
    Case("predict-device-unavailable",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.events), "--out", str(w.tmp / "p.h5"),
                     "--device", "cuda:99", "--quiet"], w.tmp / "p.h5"),
         2, r"device 'cuda:99' (is not available|does not exist)"),
    Case("predict-device-unknown",
         lambda w: (["predict", "--model", str(w.finetuned), "--data", str(w.events), "--out", str(w.tmp / "p.h5"),
                     "--device", "tpu9", "--quiet"], w.tmp / "p.h5"),
         2, r"unknown device 'tpu9'; use cpu, cuda or cuda:N"),
    Case("anomalies-device-unknown",
         lambda w: (["anomalies", "--model", str(w.pretrained), "--data", str(w.events), "--out", str(w.tmp / "r.csv"),
                     "--device", "tpu9", "--quiet"], w.tmp / "r.csv"),
         2, r"unknown device 'tpu9'"),
    # --- already clear before the hardening (kept as rows so they stay so)
    Case("info-missing-file",
         lambda w: (["info", str(w.tmp / "missing.h5")], w.tmp / "missing.h5"), 2, r"missing\.h5: file not found"),
    Case("pretrain-resume-without-checkpoint",
         lambda w: (["pretrain", "--resume", "--out", str(_killed_early(w))], w.tmp / "early" / "config.yaml"),
         2, r"nothing to resume.*without --resume to start it again in place"),
    Case("registry-export-nonempty",
         lambda w: (["registry", "export", "m", str(_existing_dir_output(w.tmp / "dest", "x").parent),
                     "--registry", str(w.registry())], w.tmp / "dest" / "x"),
         2, r"dest exists and is not an empty folder"),
]


def _blobs_blocked(w: World) -> tuple[list[str], Path]:
    reg = w.registry()
    blobs = reg / "blobs"
    shutil.rmtree(blobs)
    blobs.write_text("not a folder\n")
    return ["registry", "add", str(_fake_run(w.tmp / "other", weights=None)), "--name", "n",
            "--registry", str(reg)], reg / "registry.db"


def _empty_file(w: World) -> Path:
    write_events(w.tmp / "empty.h5", [])
    return w.tmp / "empty.h5"


def _empty_dir(w: World) -> Path:
    (w.tmp / "empty" / "sub").mkdir(parents=True)
    return w.tmp / "empty"


def _add_weights(w: World, how: str) -> tuple[list[str], Path]:
    good = _fake_run(w.tmp / "good").joinpath("model.safetensors").read_bytes()
    data = good[:-7] if how == "truncated" else np.random.default_rng(0).bytes(len(good))
    run = _fake_run(w.tmp / how, weights=data)
    return ["registry", "add", str(run), "--name", "m", "--registry", str(w.tmp / "reg")], w.tmp / "reg"


def _resized_copy(w: World, run: Path) -> Path:
    copy = w.copy_run(run)
    _resized(copy / "model.safetensors")
    return copy


def _killed_early(w: World) -> Path:
    """A pretraining folder as a kill before the first checkpoint leaves it: config and metrics only."""
    run = w.tmp / "early"
    run.mkdir()
    shutil.copy(w.pretrained / "config.yaml", run / "config.yaml")
    (run / "metrics.jsonl").write_text("")
    return run


def _snapshot(path: Path) -> object:
    if path.is_symlink():
        return ("link", str(path.readlink()))
    if path.is_file():
        return ("file", path.read_bytes())
    if path.is_dir():
        return ("dir", sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None)
                              for p in path.rglob("*")))
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    argv, output = case.setup(world)
    capsys.readouterr()
    before = _snapshot(output)
    with one_torch_thread():
        code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
        assert lines[0].startswith(f"detfm {argv[0]}: error: "), lines[0]
        assert re.search(case.message, lines[0]), f"{case.message!r} not in {lines[0]!r}"
        assert len(lines[0]) < 400, f"message too long ({len(lines[0])} characters)"
    assert code == case.code, err
    assert "Traceback" not in err
    if case.code != 2:
        assert re.search(case.message, err + captured.out), err + captured.out
    assert _snapshot(output) == before, f"{output} changed"


def test_every_row_names_a_distinct_case() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 40


def test_show_draws_a_bad_event_as_stored_and_warns(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The display is the tool to look at a bad event: it draws it, and says what other commands refuse."""
    out = world.tmp / "e.html"
    assert main(["show", str(world.negative), "--event", "0", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert out.is_file()
    assert len(err) == 1 and re.search(r"warning: .*negative\.h5: event 0: point: 1 point\(s\) with a negative "
                                       r"voxel value .*other commands refuse this event", err[0]), err
