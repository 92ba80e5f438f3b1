"""Data section: the event files the runs name, compared (`detfm compare`'s distributions).

When the report's runs were trained on two or more event files (say, simulation and data,
or a nominal and a shifted detector), the plots a physicist makes first when simulation
meets data are drawn for them, the first file named being the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detfm.audit.report.common import CONFIG_FILE, _esc, _note
from detfm.engine.runs import run_settings
from detfm.errors import DetfmError

#: Events read per file for the comparison (the distributions settle well before).
MAX_COMPARE_EVENTS = 500


def run_data_files(dirs: Sequence[Path]) -> list[Path]:
    """The event files named by the runs' configs (``data.paths``), each once, in order."""
    found: dict[Path, None] = {}
    for d in dirs:
        if not (d / CONFIG_FILE).is_file():
            continue
        try:
            data = run_settings(d).get("data") or {}
        except DetfmError:
            continue
        for name in (data.get("paths") or []) if isinstance(data, dict) else []:
            for candidate in (Path(str(name)), d / str(name)):
                if candidate.is_file():
                    found.setdefault(candidate.resolve(), None)
                    break
    return list(found)


def _data(dirs: Sequence[Path]) -> str | None:
    from detfm.evaluate.compare import compare_section

    files = run_data_files(dirs)
    if len(files) < 2:
        return None
    intro = _note(f"{len(files)} event files named by the runs; the first is the reference; up to "
                  f"{MAX_COMPARE_EVENTS} events each: " + ", ".join(_esc(f) for f in files))
    return intro + compare_section([str(f) for f in files], max_events=MAX_COMPARE_EVENTS)
