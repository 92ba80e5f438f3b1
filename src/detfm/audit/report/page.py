"""The HTML page around the sections: styles, navigation and the self-check script."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING


from detfm import __version__

if TYPE_CHECKING:
    pass

from detfm.evaluate.page_check import page_check_script
from detfm.audit.report.common import (
    ANOMALY_FILE,
    CONFIG_FILE,
    DIVERSITY_FILE,
    EVAL_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RANKED_FILE,
    SECTION_IDS,
    SENSITIVITY_FILE,
    STUDY_FILES,
    SYSTEMATICS_FILE,
    SYSTEMATICS_KIND,
    _esc,
    _na,
)


# ----------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1150px;
padding:0 1.2em 3em;color:#222;line-height:1.45}
h1{margin-top:.8em}h2{border-bottom:2px solid #4c78a8;padding-bottom:.2em;margin-top:2em}
h3{margin:1.4em 0 .4em;font-size:1.02em;word-break:break-all}h4{margin:1em 0 .3em;font-size:.95em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}caption{text-align:left;color:#555;
padding:.2em 0}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef2f7}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.82em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.na{color:#777;font-style:italic}
.note{color:#555;font-size:.9em}nav a{margin-right:1em}code{font-size:.9em}small{color:#666}
"""

_MISSING = {
    "provenance": f"no {MANIFEST_FILE} or {CONFIG_FILE} found",
    "training": f"no {METRICS_FILE} found",
    "evaluation": f"no {EVAL_FILE} found",
    "label-efficiency": f"no label-efficiency study ({' or '.join(STUDY_FILES)}) found",
    "sensitivity": f"no seed-sensitivity or diversity audit ({SENSITIVITY_FILE} or {DIVERSITY_FILE}) found",
    "systematics": f"no systematics report ({SYSTEMATICS_FILE} of kind {SYSTEMATICS_KIND}) found",
    "calibration": "no systematics report with calibration or conformal results found",
    "anomalies": f"no {ANOMALY_FILE} or {RANKED_FILE} found",
    "events": "no per-point predictions found (run `detfm predict` and pass --predictions)",
    "data": "the runs name fewer than two event files, so there is nothing to compare",
}


def _page(title: str, given: Sequence[str], sections: Sequence[tuple[str, str, str | None]]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_esc(name)}</h2>{content if content is not None else _na(_MISSING[sid])}</section>'
        for sid, name, content in sections)
    check = page_check_script(SECTION_IDS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style><script>{check}</script></head>"
            f'<body data-ok="0"><h1>{_esc(title)}</h1>'
            f'<p class="note">detfm {_esc(__version__)}, written {now}, from: '
            f'{_esc(", ".join(given))}</p><nav>{nav}</nav>{body}</body></html>\n')
