"""What every section of the report shares: file names, reading, HTML and figure helpers."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any


from detfm.engine.runs import CHECKPOINTS_DIR
from detfm.engine.runs import CONFIG_FILE as CONFIG_FILE
from detfm.engine.runs import EVAL_FILE as EVAL_FILE
from detfm.engine.runs import MANIFEST_FILE as MANIFEST_FILE
from detfm.engine.runs import METRICS_FILE as METRICS_FILE
from detfm.engine.runs import SPLIT_FILE as SPLIT_FILE
from detfm.errors import DetfmError
from detfm.evaluate import kinds

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Element ids of the report's sections, in page order.
SECTION_IDS: tuple[str, ...] = ("provenance", "training", "evaluation", "label-efficiency", "sensitivity",
                                "systematics", "calibration", "anomalies", "events", "data")

STUDY_FILES = ("results.json", "study.json")
SENSITIVITY_FILE = "sensitivity.json"
SENSITIVITY_KIND = kinds.SENSITIVITY
DIVERSITY_FILE = "diversity.json"
DIVERSITY_KIND = kinds.DIVERSITY
SYSTEMATICS_FILE = "report.json"
SYSTEMATICS_KIND = kinds.SYSTEMATICS
ANOMALY_FILE = "anomalies.json"
RANKED_FILE = "ranked.csv"

#: Rows of the ranked-events table of the anomalies section.
TOP_ANOMALIES = 20
#: Predictions files whose events are drawn (the first ones found); the others are listed.
MAX_EVENT_RUNS = 4
#: Events drawn per run: the best and the worst this many.
EVENTS_SHOWN = 2
_DPI = 80
_SKIP_DIRS = {CHECKPOINTS_DIR, "__pycache__"}


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    """A JSON file's content; a corrupt file raises :class:`DetfmError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetfmError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DetfmError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_yaml_text(path: Path) -> str:
    """The text of a YAML file, checked to parse (a corrupt file raises naming it)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DetfmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None
    return text


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl file and the number of lines that were not JSON objects
    (a crash can leave a partial last line)."""
    records: list[dict[str, Any]] = []
    bad = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _files(dirs: Sequence[Path], name: str) -> list[tuple[Path, Path]]:
    """(run directory, file) for every directory holding ``name``."""
    return [(d, d / name) for d in dirs if (d / name).is_file()]


# ----------------------------------------------------------------------------- HTML helpers
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    """A number for a table cell: ``digits`` significant digits, ``n/a`` for None/NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"
    return _esc(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str | None = None) -> str:
    """An HTML table; cells are given as ready HTML (escape text with :func:`_esc`)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _na(reason: str) -> str:
    return f'<p class="na">Not available: {_esc(reason)}.</p>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A bare matplotlib figure on the Agg canvas (no pyplot, no GUI, no global state).

    ``constrained=False`` skips the layout engine (one draw instead of two) for figures
    whose margins are set by hand.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG ``<img>``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'
