"""The training loop: exact resume, accumulation, metrics.jsonl, callbacks, bad tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_toy import ToyEvents, ToyTask, toy_collate
from safetensors.torch import load_file
from torch import nn

from detfm.engine import TrainConfig, lr_at, read_metrics, train
from detfm.errors import DetfmError


def small(**kw: Any) -> TrainConfig:
    base = dict(steps=10, batch_size=8, lr=1e-2, warmup_steps=2, min_lr=1e-4, log_every=1,
                checkpoint_every=5, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


class Interrupt(Exception):
    """Raised by a callback to simulate a crash after a given step."""


def crash_after(step: int):
    def callback(record: dict[str, Any], task: nn.Module) -> None:
        if record["step"] == step:
            raise Interrupt
    return callback


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    # Accumulation, dropout, generator noise, and an epoch-dependent augmentation; 20 events
    # with batch 8 is 2 steps per epoch, so the run crosses 5 epochs and resumes mid-epoch.
    cfg = small(accum_steps=2, log_every=3)   # lines at steps 3, 5 (checkpoint), 6, 9, 10

    def make() -> tuple[ToyTask, ToyEvents]:
        return ToyTask(dropout=0.2, noise=0.1), ToyEvents(20, jitter=0.1)

    task, data = make()
    straight = train(task, data, toy_collate, cfg, tmp_path / "straight")

    task, data = make()
    with pytest.raises(Interrupt):  # crash after step 6: checkpoint at 5, metrics up to 6
        train(task, data, toy_collate, cfg, tmp_path / "resumed", callbacks=[crash_after(6)])
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == [3, 5, 6]
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "state.json").read_text())
    assert (state["step"], state["next_epoch"], state["next_batch_in_epoch"]) == (5, 2, 1)

    task, data = make()  # a fresh process would start from fresh objects
    resumed = train(task, data, toy_collate, cfg, tmp_path / "resumed", resume=True)
    assert resumed.start_step == 5 and resumed.steps == 10
    assert_bitwise_equal(straight.model_path, resumed.model_path)
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in b] == [3, 5, 6, 9, 10]      # step 6 replaced, not duplicated
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]


def test_data_order_follows_seed_and_epoch(tmp_path: Path) -> None:
    seen = {}
    for seed in (0, 1):
        task = ToyTask()
        train(task, ToyEvents(20), toy_collate, small(steps=4, seed=seed), tmp_path / f"s{seed}")
        seen[seed] = task.seen
    # each epoch (2 steps x 8 events) holds 16 distinct events; epochs differ; seeds differ
    assert len(set(seen[0][:16])) == 16 and len(set(seen[0][16:])) == 16
    assert seen[0][:16] != seen[0][16:]
    assert seen[0] != seen[1]


def test_workers_give_the_same_result(tmp_path: Path) -> None:
    cfg = small(steps=4, accum_steps=2)
    a = train(ToyTask(noise=0.1), ToyEvents(20, jitter=0.1), toy_collate, cfg, tmp_path / "w0")
    b = train(ToyTask(noise=0.1), ToyEvents(20, jitter=0.1), toy_collate,
              small(steps=4, accum_steps=2, num_workers=1), tmp_path / "w1")
    assert_bitwise_equal(a.model_path, b.model_path)


def test_accumulation_gives_the_full_batch_gradient(tmp_path: Path) -> None:
    one = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=6), tmp_path / "a1")
    four = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=6, accum_steps=4), tmp_path / "a4")
    g1 = [r["grad_norm"] for r in read_metrics(tmp_path / "a1" / "metrics.jsonl")]
    g4 = [r["grad_norm"] for r in read_metrics(tmp_path / "a4" / "metrics.jsonl")]
    assert g1 == pytest.approx(g4, rel=1e-5)   # loss / accum_steps: same gradient scale
    w1, w4 = weights(one.model_path), weights(four.model_path)
    for key in w1:
        torch.testing.assert_close(w1[key], w4[key], atol=1e-5, rtol=0)


def test_metrics_jsonl_content(tmp_path: Path) -> None:
    cfg = small(steps=5, log_every=2, warmup_steps=1)
    records = []
    result = train(ToyTask(), ToyEvents(20), toy_collate, cfg, tmp_path / "m",
                   callbacks=[lambda record, task: records.append(record)])
    lines = read_metrics(tmp_path / "m" / "metrics.jsonl")
    assert [r["step"] for r in lines] == [2, 4, 5] and lines == records
    for r in lines:
        assert {"step", "epoch", "loss", "lr", "grad_norm", "events_per_s", "time_s", "mse",
                "mean_pred"} <= r.keys()
        assert "pred" not in r                                  # not a scalar output
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, lr=cfg.lr, min_lr=cfg.min_lr,
                                              warmup_steps=cfg.warmup_steps, steps=cfg.steps))
        assert r["loss"] == pytest.approx(r["mse"]) and r["events_per_s"] > 0
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert result.final_loss == lines[-1]["loss"] and result.metrics == lines[-1]


def test_training_reduces_the_loss(tmp_path: Path) -> None:
    train(ToyTask(), ToyEvents(40), toy_collate, small(steps=40, lr=3e-2, batch_size=8, log_every=10),
          tmp_path / "fit")
    losses = [r["loss"] for r in read_metrics(tmp_path / "fit" / "metrics.jsonl")]
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoints_are_pruned_and_last_points_at_the_newest(tmp_path: Path) -> None:
    cfg = small(steps=8, checkpoint_every=2, keep_checkpoints=2)
    result = train(ToyTask(), ToyEvents(20), toy_collate, cfg, tmp_path / "k")
    folder = tmp_path / "k" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last", "step_00000006", "step_00000008"]
    assert (folder / "last").resolve() == (folder / "step_00000008").resolve() == result.checkpoint
    assert_bitwise_equal(folder / "last" / "model.safetensors", result.model_path)


def test_caller_rng_is_left_alone(tmp_path: Path) -> None:
    task = ToyTask(dropout=0.3)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    train(task, ToyEvents(20), toy_collate, small(steps=2), tmp_path / "r")
    assert torch.equal(torch.get_rng_state(), before)


def test_progress_bar_shows_loss_and_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(ToyTask(), ToyEvents(20), toy_collate, small(steps=3, progress=True), tmp_path / "p")
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err and "ev_s=" in err


def test_frozen_parameters_are_not_trained(tmp_path: Path) -> None:
    task = ToyTask()
    for p in task.net[0].parameters():
        p.requires_grad_(False)
    first = task.net[0].weight.detach().clone()
    last = task.net[4].weight.detach().clone()
    train(task, ToyEvents(20), toy_collate, small(steps=3), tmp_path / "f")
    assert torch.equal(task.net[0].weight, first) and not torch.equal(task.net[4].weight, last)


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train(ToyTask(), ToyEvents(20), toy_collate, small(steps=2), tmp_path / "x")
    before = (tmp_path / "x" / "metrics.jsonl").read_bytes()
    with pytest.raises(DetfmError, match=r"already holds a run \(config.yaml, metrics.jsonl, checkpoints"):
        train(ToyTask(), ToyEvents(20), toy_collate, small(steps=2), tmp_path / "x")
    assert (tmp_path / "x" / "metrics.jsonl").read_bytes() == before


def test_resuming_a_finished_run_does_nothing(tmp_path: Path) -> None:
    first = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=3), tmp_path / "done")
    saved = weights(first.model_path)
    again = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=3), tmp_path / "done", resume=True)
    assert again.start_step == 3 and again.final_loss == first.final_loss
    assert all(torch.equal(saved[k], v) for k, v in weights(again.model_path).items())


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes_bitwise(tmp_path: Path) -> None:
    # A budget far below one step's time: the run stops after its first step, saves a
    # checkpoint and the weights of that step, and says so in its manifest.
    straight = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=6), tmp_path / "straight")
    cut = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=6, time_limit_s=1e-9), tmp_path / "cut")
    assert cut.stopped_early and cut.steps == 1 and not straight.stopped_early
    state = json.loads((tmp_path / "cut" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 1
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert "time limit" in json.dumps(manifest) and "step 1 of 6" in json.dumps(manifest)
    with open(cut.model_path, "rb") as f:  # the weights differ from the untrained ones and the finished run
        assert f.read() != straight.model_path.read_bytes()
    # the budget is free to change on resume; without one the run finishes exactly as if never cut
    resumed = train(ToyTask(), ToyEvents(20), toy_collate, small(steps=6), tmp_path / "cut", resume=True)
    assert resumed.start_step == 1 and resumed.steps == 6 and not resumed.stopped_early
    assert_bitwise_equal(straight.model_path, resumed.model_path)


def test_time_limit_must_not_be_negative() -> None:
    with pytest.raises(Exception, match="time_limit_s must be >= 0"):
        small(time_limit_s=-1.0)


class BadTask(nn.Module):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.result = result

    def forward(self, batch: Any) -> Any:
        return self.result(self.w)


@pytest.mark.parametrize(("result", "message"), [
    (lambda w: w.sum(), r"must return \{'loss': tensor, 'outputs': dict\}, got Tensor"),
    (lambda w: {"loss": w}, "loss must be a scalar tensor"),
    (lambda w: {"los": w.sum()}, r"got a dict with keys \['los'\]"),
    (lambda w: {"loss": torch.tensor(1.0)}, "does not depend on any trainable parameter"),
    (lambda w: {"loss": w.sum(), "outputs": [1]}, "'outputs' must be a dict"),
    (lambda w: {"loss": w.sum() * float("nan")}, r"the gradient became nan at step 1"),
])
def test_bad_task_results(tmp_path: Path, result: Any, message: str) -> None:
    with pytest.raises(DetfmError, match=message):
        train(BadTask(result), ToyEvents(20), toy_collate, small(steps=2), tmp_path / "bad")


def test_nothing_to_train_and_tiny_dataset(tmp_path: Path) -> None:
    frozen = ToyTask().requires_grad_(False)
    with pytest.raises(DetfmError, match="no trainable parameters"):
        train(frozen, ToyEvents(20), toy_collate, small(), tmp_path / "a")
    with pytest.raises(DetfmError, match="the dataset has 5 events, fewer than batch_size 8"):
        train(ToyTask(), ToyEvents(5), toy_collate, small(), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_weight_decay_skips_biases_and_norms() -> None:
    from detfm.engine import build_optimizer

    task = ToyTask()
    opt = build_optimizer(task, small(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in task.named_parameters() if id(p) in decayed}
    assert names == {"net.0.weight", "net.4.weight"}       # not biases, not LayerNorm (net.1)


class DtypeProbe(ToyTask):
    """Records the dtype its first layer computes in (bf16 under autocast)."""

    def forward(self, batch: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        self.dtypes = getattr(self, "dtypes", set()) | {self.net[0](batch.feat).dtype}
        return super().forward(batch, generator)


@pytest.mark.parametrize(("precision", "dtype"), [("auto", torch.float32), ("fp32", torch.float32),
                                                  ("bf16", torch.bfloat16)])
def test_precision(tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    task = DtypeProbe()
    result = train(task, ToyEvents(20), toy_collate, small(steps=2, precision=precision), tmp_path / "p")
    assert task.dtypes == {dtype}                               # auto on CPU is fp32
    assert task.net[0].weight.dtype == torch.float32            # master weights stay fp32
    assert result.final_loss is not None and result.final_loss == result.final_loss
