"""`detfm convert panda`: a Panda / pimm PTv3 checkpoint as a detfm run directory of ``ptv3_base``.

The run directory it writes is what every detfm tool reads from a pretraining run:

    model.safetensors   the backbone's weights under ``backbone.`` (engine.runs layout)
    backbone.yaml       the ``ptv3_base`` architecture (PTv3Config)
    config.yaml         a pretraining-run config naming ``model: ptv3_base`` (no training was
                        run: the weights come from the checkpoint; see conversion.json)
    conversion.json     source file and its SHA-256, prefix, tensor and parameter counts,
                        tensors left out (heads, a teacher), dtypes cast to float32
    manifest.json       provenance (engine.manifest)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONVERSION_FILE = "conversion.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm convert`` (with its ``panda`` source)."""
    p = sub.add_parser("convert", help="turn an external checkpoint into a detfm run directory",
                       description="Convert a checkpoint of another code base into a detfm run directory "
                                   "that probe, finetune, predict, evaluate and the registry read.")
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    panda = sources.add_parser(
        "panda", help="a Panda / pimm PTv3 (Panda-Base) checkpoint onto ptv3_base",
        description="Map a Panda-Base checkpoint (Hugging Face folder with model.safetensors and "
                    "config.json, a .safetensors file, or a .pth read with torch.load(weights_only=True)) "
                    "onto detfm's ptv3_base. Every tensor of Panda-Base must be present with its shape; a "
                    "missing, extra or mis-shaped tensor is named and nothing is written.")
    panda.add_argument("checkpoint", metavar="CHECKPOINT", help="folder, .safetensors or .pth file")
    panda.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    panda.add_argument("--prefix", default=None,
                       help="name prefix of the backbone's tensors (default: found automatically, e.g. "
                            "'', 'backbone.', 'module.', 'student.backbone.')")
    panda.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in --out")
    panda.set_defaults(func=convert_panda_command)


def convert_panda_command(args: argparse.Namespace) -> int:
    """Run ``detfm convert panda``: check everything, then write the run directory atomically."""
    from safetensors.torch import save_file

    from detfm.engine.config import save_config
    from detfm.engine.manifest import write_manifest
    from detfm.engine.runs import (
        BACKBONE_FILE,
        BACKBONE_PREFIX,
        CONFIG_FILE,
        MODEL_FILE,
    )
    from detfm.io import atomic_path, atomic_write_text, check_output_dir, file_sha256
    from detfm.models.convert_panda import convert_checkpoint, panda_base_config
    from detfm.models.ptv3.sizes import ensure_registered
    from detfm.recipes.pretrain import PretrainConfig

    ensure_registered()  # the run directory names ptv3_base; readers rebuild it from the registry

    started = time.time()
    out = check_output_dir(args.out, overwrite=args.overwrite,
                           outputs=(MODEL_FILE, BACKBONE_FILE, CONFIG_FILE, CONVERSION_FILE))
    source = Path(args.checkpoint)
    converted, report = convert_checkpoint(source, prefix=args.prefix)
    cfg = panda_base_config()
    weights_file = source / "model.safetensors" if source.is_dir() else source
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file({BACKBONE_PREFIX + k: v for k, v in converted.items()}, str(tmp),
                  metadata={"format": "pt", "converted_from": "panda"})
    atomic_write_text(out / BACKBONE_FILE, cfg.to_yaml())
    save_config(PretrainConfig(model=cfg.name), out / CONFIG_FILE)
    record = {**report.to_dict(), "source_sha256": file_sha256(weights_file), "model": cfg.name}
    atomic_write_text(out / CONVERSION_FILE, json.dumps(record, indent=2) + "\n")
    write_manifest(out, inputs=[weights_file], seeds={}, config=record, device="cpu", started=started,
                   ended=time.time(), extra={"command": "convert panda"})
    print(f"converted {report.tensors} tensors ({report.parameters:,} parameters) from {source} "
          f"(prefix '{report.prefix}'{f', {len(report.ignored)} other tensors left out' if report.ignored else ''})")
    print(f"wrote {out}")
    return 0
