"""Equivalence of ``ptv3_base`` with the reference PT-v3m2 (Panda-Base) encoder, per point.

Builds the reference model (Pointcept's ``point_transformer_v3m2_sonata.py``, registered as
"PT-v3m2") with Panda-Base's configuration and seeded random weights, saves it as a Panda
checkpoint folder (``model.safetensors`` + ``config.json``), converts that folder with
``detfm convert panda``, runs both models on the same events and compares the features of
every encoder stage carried to the input points. Run on demand (not part of the tests)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/check_panda_equivalence.py \\
        --reference /path/to/Pointcept --reference-python /path/to/refenv/bin/python \\
        --events EVENTS.h5

The two models run in separate processes: this one (detfm's environment) prepares the
inputs, converts and runs ``ptv3_base``; ``--reference-python`` (an environment with torch,
numpy, safetensors, spconv, addict and timm) runs this same file with ``--reference-side``,
which puts ``--reference`` on ``sys.path`` and imports only the reference's PTv3 modules.
Stand-ins used on the reference side, where the real packages are absent:

* ``torch_scatter.segment_csr`` (grid pooling's per-cell reduction), in plain torch;
* ``timm.layers.DropPath`` (identity in eval mode) loaded from timm's ``layers/drop.py``
  alone: the ``timm`` package imports torchvision, whose registry wheels need CUDA torch;
* no ``flash_attn``: the model is built with ``enable_flash=False`` and runs its plain
  attention path. That path pads every window to ``min(smallest event, patch size)``
  voxels of the whole batch, so the reference runs one event per batch, where its windows
  are those of the flash path (an event of n <= 256 voxels is one window of n; a larger one
  gets ceil(n / 256) windows, the last covering its last 256 voxels) in float32 instead of
  the flash kernel's bfloat16;
* spconv's ``SubMConv3d`` runs in training mode (its CPU kernels cannot fuse the bias, as its
  inference mode asks; in training mode the bias is added after the convolution);
* the package ``__init__`` files of ``pointcept``, ``pointcept.models`` and
  ``pointcept.models.point_transformer_v3`` (which import every model of the code base) and
  ``pointcept.engines.hooks`` (only its ``HookBase`` base class is used) are replaced by
  empty modules.

Inputs are prepared as Panda does: coordinates normalised as ``(x - 384) / (768 sqrt(3) / 2)``,
grid cells of 0.001 in those units shifted to a per-event minimum of 0, points sharing a cell
merged (mean input), features (x, y, z, log energy).

Orders are not shuffled. The reference's ``GridPooling`` is built with its default
``shuffle_orders=True`` (the model's ``shuffle_orders`` is not passed on), so at every pooling
it re-permutes which order each block uses, in eval mode too, from torch's global RNG: its
stage 1-4 features change from call to call. The comparison sets ``shuffle_orders = False``
on those instances (detfm evaluates with the listed orders at every stage); a third pass
keeps the reference's shuffle, to show how far that alone moves the features.

Weights: the reference's own initialisation gives layer-scale 1e-5 and near-uniform attention,
so every block would barely change the features; all tensors are therefore redrawn from a
seeded generator at scales that make every block, every attention window and the
sparse-convolution kernel matter (see ``randomise``).

Writes ``benchmarks/results/panda_equivalence.json``: per stage the maximum absolute
difference, the maximum relative difference (to the largest reference magnitude of that
stage) and the relative L2 difference, over all points of all events, for the plain pass, a
pass with 10 % of the voxels replaced by the mask token, and the pooling-shuffle pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "panda_equivalence.json"

# Panda-Base ("PT-v3m2") as in its Sonata pretraining config, orders not shuffled.
PANDA_BASE: dict[str, Any] = {
    "in_channels": 4,
    "order": ["hilbert", "hilbert-trans", "z", "z-trans"],
    "stride": [2, 2, 2, 2],
    "enc_depths": [3, 3, 3, 9, 3],
    "enc_channels": [48, 96, 192, 384, 512],
    "enc_num_head": [3, 6, 12, 24, 32],
    "enc_patch_size": [256, 256, 256, 256, 256],
    "mlp_ratio": 4,
    "qkv_bias": True,
    "drop_path": 0.3,
    "layer_scale": 1e-5,
    "pre_norm": True,
    "shuffle_orders": False,
    "enable_rpe": False,
    "enable_flash": False,
    "upcast_attention": False,
    "upcast_softmax": False,
    "mask_token": True,
    "enc_mode": True,
}
BOX = 768.0
GRID_SIZE = 0.001
MASK_FRACTION = 0.1
TOLERANCE = 1e-4  # relative to the stage's largest reference magnitude


# ---------------------------------------------------------------------------------------
# input preparation (Panda's grid sampling), shared by both sides through an .npz file
# ---------------------------------------------------------------------------------------
def normalise(coord: torch.Tensor) -> torch.Tensor:
    """Panda's coordinates: the 768-voxel box's corners on the unit sphere."""
    return (coord - BOX / 2.0) / (BOX * math.sqrt(3.0) / 2.0)


def voxelise(coord: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid cells of one event: (N, 3) int cell, (N, 4) mean input, (P,) cell of each point."""
    norm = normalise(coord)
    cell = torch.floor(norm / GRID_SIZE).long()
    cell = cell - cell.min(0).values
    grid, inverse = torch.unique(cell, dim=0, return_inverse=True)
    inputs = torch.cat([norm, feat], dim=1).double()
    total = torch.zeros(grid.shape[0], inputs.shape[1], dtype=torch.float64).index_add_(0, inverse, inputs)
    count = torch.bincount(inverse, minlength=grid.shape[0]).double()
    return grid, (total / count[:, None]).float(), inverse


# ---------------------------------------------------------------------------------------
# reference side (runs in the reference's environment; imports nothing of detfm)
# ---------------------------------------------------------------------------------------
def _segment_csr(src: torch.Tensor, indptr: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Stand-in for ``torch_scatter.segment_csr`` on a 1-D ``indptr``: reduce the rows of each
    segment ``src[indptr[i]:indptr[i + 1]]``."""
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    index = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    out = src.new_zeros((counts.numel(), *src.shape[1:]))
    mode = {"sum": "sum", "add": "sum", "mean": "mean", "max": "amax", "min": "amin"}[reduce]
    return out.scatter_reduce(0, index, src, reduce=mode, include_self=False)


def install_stand_ins(reference: Path) -> list[str]:
    """Make the reference's PTv3 importable without its compiled extras; returns what was
    replaced."""
    sys.path.insert(0, str(reference))
    used = []
    if importlib.util.find_spec("torch_scatter") is None:
        scatter = types.ModuleType("torch_scatter")
        scatter.segment_csr = _segment_csr  # type: ignore[attr-defined]
        sys.modules["torch_scatter"] = scatter
        used.append("torch_scatter.segment_csr (plain torch scatter_reduce)")
    if importlib.util.find_spec("flash_attn") is None:
        used.append("no flash_attn: enable_flash=False, plain attention path, one event per batch")
    try:
        import timm.layers  # noqa: F401
    except (ImportError, RuntimeError):
        # timm's package imports torchvision, whose registry wheels need CUDA torch; the
        # reference uses timm's DropPath only (identity in eval mode): load timm's own
        # timm/layers/drop.py (it imports torch only) as timm.layers
        for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.origin is None:
            raise SystemExit("the reference environment needs timm (for DropPath)") from None
        drop_spec = importlib.util.spec_from_file_location(
            "timm_layers_drop", Path(spec.origin).parent / "layers" / "drop.py")
        assert drop_spec is not None and drop_spec.loader is not None
        drop = importlib.util.module_from_spec(drop_spec)
        drop_spec.loader.exec_module(drop)
        timm = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")
        layers.DropPath = drop.DropPath  # type: ignore[attr-defined]
        timm.layers = layers  # type: ignore[attr-defined]
        sys.modules.update({"timm": timm, "timm.layers": layers})
        used.append("timm.layers.DropPath loaded from timm's layers/drop.py alone (the timm package "
                    "imports torchvision, whose registry wheels need a CUDA build of torch)")
    package = reference / "pointcept"
    for name, folder in (("pointcept", package), ("pointcept.models", package / "models"),
                         ("pointcept.models.point_transformer_v3", package / "models" / "point_transformer_v3"),
                         ("pointcept.engines", package / "engines")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]  # type: ignore[attr-defined]
        sys.modules[name] = module
    hooks = types.ModuleType("pointcept.engines.hooks")
    hooks.HookBase = type("HookBase", (), {})  # type: ignore[attr-defined]
    sys.modules["pointcept.engines.hooks"] = hooks
    used.append("empty package modules for pointcept, pointcept.models, "
                "pointcept.models.point_transformer_v3, pointcept.engines(.hooks.HookBase)")
    return used


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Redraw every tensor so that all of them matter: Linear and sparse-conv weights
    N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.2^2) and biases
    N(0, 0.2^2), layer scales U(0.3, 1), the mask token N(0, 1). Drawn in ``state_dict``
    order, so the tensors depend on the seed and the parameter names only."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                value = 0.3 + 0.7 * torch.rand(p.shape, generator=gen)
            elif name.endswith("mask_token"):
                value = torch.randn(p.shape, generator=gen)
            elif leaf == "bias":
                is_norm = ".norm" in name or name.endswith(("cpe.2.bias", "stem.norm.bias"))
                value = torch.randn(p.shape, generator=gen) * (0.2 if is_norm else 0.1)
            elif p.dim() == 1:  # LayerNorm weight
                value = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            else:  # Linear (out, in) or sparse conv (out, k, k, k, in)
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            p.copy_(value)


# The passes run on both sides: name -> (mask 10 % of the voxels, keep the reference's
# GridPooling shuffle of the orders).
PASSES: dict[str, tuple[bool, bool]] = {"plain": (False, False), "mask_token": (True, False),
                                        "reference_pooling_shuffle": (False, True)}


def reference_side(args: argparse.Namespace) -> int:
    reference = Path(args.reference).resolve()
    stand_ins = install_stand_ins(reference)
    import spconv
    import spconv.pytorch as spconv_torch
    from safetensors.torch import save_file

    from pointcept.models.point_transformer_v3.point_transformer_v3m2_sonata import (
        GridPooling,
        PointTransformerV3,
    )

    model = PointTransformerV3(**PANDA_BASE).eval()
    randomise(model, args.seed)
    for module in model.modules():
        # spconv's CPU kernels cannot fuse the bias, which its inference mode asks of them
        # ("cpu don't support act and bias"); in training mode it adds the bias after the
        # convolution. A SubMConv3d has no other train/eval difference.
        if isinstance(module, spconv_torch.SubMConv3d):
            module.train()
    poolings = [m for m in model.modules() if isinstance(m, GridPooling)]
    work = Path(args.work)
    ckpt = work / "panda"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({"model_type": "PT-v3m2", **PANDA_BASE}, indent=2) + "\n")

    data = np.load(work / "inputs.npz")
    out: dict[str, np.ndarray] = {}
    seconds = 0.0
    torch.manual_seed(args.seed)  # the draws of the reference's pooling shuffle
    for tag, (masked, pooling_shuffle) in PASSES.items():
        # GridPooling is built with its default shuffle_orders=True (the model's flag is not
        # passed on), so the reference re-permutes the orders at every pooling, in eval
        # mode too, from the global RNG; the comparison turns that off on the instances
        for pooling in poolings:
            pooling.shuffle_orders = pooling_shuffle
        for e in range(int(data["num_events"])):
            point = {"coord": torch.from_numpy(data[f"norm{e}"]), "feat": torch.from_numpy(data[f"feat{e}"]),
                     "grid_coord": torch.from_numpy(data[f"grid{e}"]).int(),
                     "offset": torch.tensor([data[f"grid{e}"].shape[0]])}
            if masked:
                point["mask"] = torch.from_numpy(data[f"mask{e}"])
            start = time.perf_counter()
            with torch.no_grad():
                result = model(point)
            seconds += time.perf_counter() - start
            # walk the pooling chain back to the full-resolution voxels
            stages = [result]
            while "pooling_parent" in stages[0].keys():
                stages.insert(0, stages[0]["pooling_parent"])
            index = torch.arange(stages[0].feat.shape[0])
            for s, level in enumerate(stages):
                if s > 0:
                    index = level.pooling_inverse[index]
                out[f"{tag}{e}_stage{s}"] = level.feat[index].numpy()
                out[f"{tag}{e}_voxels{s}"] = np.array(level.feat.shape[0])
    np.savez(work / "reference.npz", **out)
    (work / "reference.json").write_text(json.dumps({
        "torch": torch.__version__, "spconv": getattr(spconv, "__version__", "unknown"),
        "stand_ins": stand_ins, "forward_seconds": round(seconds, 2),
        "parameters": sum(v.numel() for v in state.values()), "tensors": len(state)}, indent=2))
    return 0


# ---------------------------------------------------------------------------------------
# detfm side and the comparison
# ---------------------------------------------------------------------------------------
def max_cell(coord: torch.Tensor) -> int:
    """Largest grid-cell index of an event (after the per-event minimum shift)."""
    cell = torch.floor(normalise(coord) / GRID_SIZE).long()
    return int((cell - cell.min(0).values).max())


def depth_edge_event(coord: torch.Tensor, feat: torch.Tensor, depth: int = 10
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """An event whose largest cell index m sits just below 2^depth (m in [2^depth - 4, 2^depth - 2]):
    ``coord`` moved to the box's corner and stretched about it. At level s the reference
    serializes with depth ``bit_length((m >> s) + 1)``, which here is one more than
    ``depth - s`` for s >= 2: the case where the per-level depth is not the level-0 depth
    minus s."""
    low = coord.min(0).values
    lo, hi = 0.0, 4.0
    target = (1 << depth) - 3
    for _ in range(60):  # bisection on the stretch factor
        k = (lo + hi) / 2
        m = max_cell(8.0 + (coord - low) * k)
        if m == target:
            break
        lo, hi = (k, hi) if m < target else (lo, k)
    moved = 8.0 + (coord - low) * k
    m = max_cell(moved)
    if not (1 << depth) - 4 <= m <= (1 << depth) - 2 or float(moved.max()) >= BOX:
        raise SystemExit(f"could not place the depth-edge event (largest cell {m})")
    levels = {s: ((m >> s) + 1).bit_length() for s in range(5)}
    return moved, feat, {"max_cell": m, "reference_depth_per_level": levels,
                         "level0_depth_minus_level": {s: levels[0] - s for s in range(5)}}


def reference_commit(reference: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def compare(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max()) / scale,
            "rel_l2_diff": float(np.linalg.norm(diff) / np.linalg.norm(ref.astype(np.float64))),
            "ref_max_abs": scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="a Pointcept checkout (put on sys.path)")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="python of the reference's environment (torch, spconv, addict, timm, safetensors)")
    parser.add_argument("--events", help="event file (detfm simulate --events 4 --seed 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the mask")
    parser.add_argument("--no-depth-edge-event", dest="depth_edge_event", action="store_false",
                        help="do not add the stretched copy of the first event whose largest cell index "
                             "lies just below a power of two")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULT))
    parser.add_argument("--reference-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_side:
        return reference_side(args)
    if not args.events:
        parser.error("--events is required")
    with tempfile.TemporaryDirectory(prefix="panda_equivalence_") as tmp:
        args.work = args.work or tmp
        return detfm_side(args)


def detfm_side(args: argparse.Namespace) -> int:
    from detfm.data.batch import PackedBatch
    from detfm.data.collate import collate
    from detfm.data.dataset import EventDataset
    from detfm.engine.runs import load_backbone

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = EventDataset(args.events, labels=False)
    batch = collate([dataset[i] for i in range(len(dataset))])
    edge_info: dict[str, Any] | None = None
    if args.depth_edge_event:
        coord, feat, edge_info = depth_edge_event(batch.coord[: int(batch.offsets[1])],
                                                  batch.feat[: int(batch.offsets[1])])
        batch = PackedBatch(coord=torch.cat([batch.coord, coord]), feat=torch.cat([batch.feat, feat]),
                            offsets=torch.cat([batch.offsets, batch.offsets[-1:] + coord.shape[0]]),
                            energy=torch.zeros(batch.num_points + coord.shape[0]))
    gen = torch.Generator().manual_seed(args.seed)
    arrays: dict[str, np.ndarray] = {"num_events": np.array(len(batch))}
    inverses, point_masks = [], []
    for e in range(len(batch)):
        a, b = int(batch.offsets[e]), int(batch.offsets[e + 1])
        grid, feat, inverse = voxelise(batch.coord[a:b], batch.feat[a:b])
        voxel_mask = torch.rand(grid.shape[0], generator=gen) < MASK_FRACTION
        arrays.update({f"grid{e}": grid.numpy(), f"feat{e}": feat.numpy(), f"mask{e}": voxel_mask.numpy(),
                       f"norm{e}": feat[:, :3].numpy().copy()})
        inverses.append(inverse)
        point_masks.append(voxel_mask[inverse])
    np.savez(work / "inputs.npz", **arrays)

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    subprocess.run([args.reference_python, str(Path(__file__).resolve()), "--reference-side",
                    "--reference", args.reference, "--work", str(work), "--seed", str(args.seed)],
                   check=True, env=env)
    ref_seconds = time.perf_counter() - start
    detfm_exe = Path(sys.executable).with_name("detfm")
    run = work / "run"
    subprocess.run([str(detfm_exe), "convert", "panda", str(work / "panda"), "--out", str(run), "--overwrite"],
                   check=True, env=env)

    model = load_backbone(run).eval()
    ref = np.load(work / "reference.npz")
    features: dict[bool, tuple[torch.Tensor, ...]] = {}
    start = time.perf_counter()
    for masked in (False, True):
        with torch.no_grad():
            features[masked] = model.forward_features(batch, mask=torch.cat(point_masks) if masked else None).levels
    detfm_seconds = time.perf_counter() - start
    result: dict[str, list[dict[str, Any]]] = {}
    for tag, (masked, _) in PASSES.items():
        stages = []
        for s, level in enumerate(features[masked]):
            ours = level.numpy()
            theirs = np.concatenate([ref[f"{tag}{e}_stage{s}"][inverses[e].numpy()] for e in range(len(batch))])
            voxels = [int(ref[f"{tag}{e}_voxels{s}"]) for e in range(len(batch))]
            per_event = [float(np.abs(ours[a:b] - theirs[a:b]).max())
                         for a, b in zip(batch.offsets[:-1].tolist(), batch.offsets[1:].tolist(), strict=True)]
            stages.append({"stage": s, "channels": int(ours.shape[1]), "voxels_per_event": voxels,
                           **compare(ours, theirs), "max_abs_diff_per_event": per_event})
        result[tag] = stages

    worst = max(st["max_rel_diff"] for tag in ("plain", "mask_token") for st in result[tag])
    record = {
        "what": "per-point features of every encoder stage: detfm ptv3_base (converted with `detfm convert "
                "panda`) against the reference PT-v3m2 with the same seeded random weights",
        "reference": {"repository": "Pointcept/Pointcept", "commit": reference_commit(Path(args.reference)),
                      "model": "pointcept/models/point_transformer_v3/point_transformer_v3m2_sonata.py (PT-v3m2)",
                      "config": PANDA_BASE,
                      "pooling_shuffle": "GridPooling.shuffle_orders set to False on the instances (it defaults to "
                                         "True: the reference re-permutes the orders at every pooling, in eval "
                                         "mode too); 'reference_pooling_shuffle' keeps it on for comparison",
                      "batches": "one event per forward pass",
                      **json.loads((work / "reference.json").read_text())},
        "events": {"file": Path(args.events).name, "num_events": len(batch), "num_points": batch.num_points,
                   "points_per_event": batch.counts.tolist(),
                   "depth_edge_event": None if edge_info is None else {
                       "index": len(batch) - 1, "made_from": "event 0, moved to the box corner and stretched",
                       **edge_info}},
        "seed": args.seed,
        "input": {"grid_size": GRID_SIZE, "normalisation": "(x - 384) / (768 * sqrt(3) / 2)",
                  "features": "normalised x, y, z and detfm's log-energy feature, mean per grid cell",
                  "mask_fraction": MASK_FRACTION},
        "detfm": {"batch": f"all {len(batch)} events in one batch", "torch": torch.__version__},
        "stages": result["plain"],
        "stages_with_mask_token": result["mask_token"],
        "stages_against_reference_with_pooling_shuffle": result["reference_pooling_shuffle"],
        "max_rel_diff": worst,
        "tolerance": TOLERANCE,
        "equivalent": worst < TOLERANCE,
        "seconds": {"reference_side": round(ref_seconds, 1), "detfm_forward": round(detfm_seconds, 1)},
        "host": {"python": platform.python_version(), "threads": torch.get_num_threads()},
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    for tag, stages in result.items():
        for st in stages:
            print(f"{tag:26s} stage {st['stage']}: max abs {st['max_abs_diff']:.3g}  max rel {st['max_rel_diff']:.3g}  "
                  f"rel L2 {st['rel_l2_diff']:.3g}")
    print(f"wrote {out_path}")
    return 0 if record["equivalent"] else 1


if __name__ == "__main__":
    sys.exit(main())
