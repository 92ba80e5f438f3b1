"""Audit: run manifests, a content-addressed model registry with lineage, model cards.

* :mod:`detfm.engine.manifest` -- ``manifest.json`` in every run: inputs by hash, code
  version, environment, seeds, times.
* :mod:`detfm.audit.registry` -- register runs by the SHA-256 of their weights, with
  aliases, lineage (backbone, data), verification and export; ``detfm.load(ref)``.
* :mod:`detfm.audit.card` -- a Markdown model card from a registered version.
"""

from detfm.audit.card import model_card
from detfm.engine.manifest import file_sha256, read_manifest, write_manifest
from detfm.audit.registry import ModelVersion, Registry, load_model, parse_ref

__all__ = ["ModelVersion", "Registry", "file_sha256", "load_model", "model_card", "parse_ref", "read_manifest",
           "write_manifest"]
