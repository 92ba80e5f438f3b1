"""Provenance section: manifests and configs of the runs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    pass

from detfm.audit.report.common import (
    CONFIG_FILE,
    MANIFEST_FILE,
    _esc,
    _is_number,
    _note,
    _num,
    _read_json_object,
    _read_yaml_text,
    _table,
)


# ----------------------------------------------------------------------------- provenance
def _provenance(dirs: Sequence[Path]) -> str | None:
    parts = []
    for d in dirs:
        manifest, config = d / MANIFEST_FILE, d / CONFIG_FILE
        if not manifest.is_file() and not config.is_file():
            continue
        block = [f"<h3>{_esc(d)}</h3>"]
        if manifest.is_file():
            block.append(_manifest_html(manifest, _read_json_object(manifest)))
        else:
            block.append(_note(f"no {MANIFEST_FILE} in this run"))
        if config.is_file():
            text = _read_yaml_text(config)
            block.append(f"<details><summary>{CONFIG_FILE}</summary><pre>{_esc(text)}</pre></details>")
        parts.append("".join(block))
    return "".join(parts) or None


def _compact(value: object) -> str:
    """A manifest value for a table cell: lists of words joined, flat mappings as ``key value``
    pairs, anything nested as JSON in a collapsed block."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _esc(" ".join(value))
    if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
        return "<br>".join(f"{_esc(k)}: {_num(v) if _is_number(v) or v is None else _esc(v)}"
                           for k, v in value.items())
    if isinstance(value, (dict, list)):
        block = _esc(json.dumps(value, indent=1))
        return f"<details><summary>{len(value)} entries</summary><pre>{block}</pre></details>"
    return _num(value) if _is_number(value) or value is None else _esc(value)


def _manifest_html(path: Path, manifest: dict[str, Any]) -> str:
    """Code version, environment and timing as a key/value table, the inputs with their hashes."""
    rows: list[tuple[str, str]] = []
    schema = manifest.get("schema")
    warn = ""
    if schema is not None and schema != "detfm-manifest/1":
        warn = _note(f"{path.name}: schema {schema!r}, this report reads detfm-manifest/1; shown as found")
    code = manifest.get("code")
    if isinstance(code, dict):
        version = code.get("version", code.get("detfm", "?"))
        commit = str(code.get("commit") or code.get("git_commit") or "unknown")
        dirty = " (uncommitted changes)" if code.get("dirty", code.get("git_dirty")) else ""
        rows.append(("code", f"detfm {_esc(version)}, commit <code>{_esc(commit)}</code>{_esc(dirty)}"))
    for key, value in manifest.items():
        if key in ("schema", "code", "inputs"):
            continue
        rows.append((key, _compact(value)))
    started, ended = manifest.get("started"), manifest.get("ended")
    duration = _duration(started, ended)
    if duration:
        rows.append(("duration", _esc(duration)))
    out = [warn, _table(("field", "value"), [(_esc(k), v) for k, v in rows])]
    inputs = manifest.get("inputs")
    if isinstance(inputs, list) and inputs:
        cells = []
        for item in inputs:
            if not isinstance(item, dict):
                continue
            digest = str(item.get("sha256") or "")
            short = digest[:16] + ("…" if len(digest) > 16 else "")
            cells.append((_esc(item.get("path", "?")), _num(item.get("size")),
                          f'<code title="{_esc(digest)}">{_esc(short)}</code>'))
        out.append(_table(("input", "bytes", "sha256"), cells, caption="inputs"))
    return "".join(out)


def _duration(started: object, ended: object) -> str | None:
    if not isinstance(started, str) or not isinstance(ended, str):
        return None
    try:
        seconds = (dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)).total_seconds()
    except (ValueError, TypeError):
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
