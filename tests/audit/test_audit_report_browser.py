"""The HTML report in a real browser (headless chromium): no script errors, every picture
decodes, every section is there, and the page renders to a non-blank screenshot.

Chromium is installed by ``scripts/install_test_browser.sh`` (Debian's package); without it
the test is skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import chromium_path, console_messages, page_check_attributes, run_chromium
from PIL import Image

from detfm.audit.report import SECTION_IDS, build_report

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found on PATH; install it with "
                                                         "scripts/install_test_browser.sh (as root)")


def make_runs(root: Path) -> None:
    """Runs with a training curve, an evaluation and a systematics report (pictures in 4 sections)."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-3}) + "\n"
                                               for s in range(1, 30)), encoding="utf-8")
    classes = ["shower", "track", "michel", "delta", "low_energy"]
    (run / "eval.json").write_text(json.dumps({
        "task": "semseg", "mode": "finetune", "labels": 100, "events": 10, "classes": classes,
        "macro_f1_4": 0.8, "macro_f1_5": 0.7, "accuracy_4": 0.9, "f1": dict.fromkeys(classes, 0.7),
        "precision": dict.fromkeys(classes, 0.7), "recall": dict.fromkeys(classes, 0.7),
        "confusion": (np.eye(5, dtype=int) * 50 + 3).tolist()}), encoding="utf-8")
    (run / "report.json").write_text(json.dumps({
        "kind": "detfm-systematics/1", "variations": ["nominal", "gain_up"],
        "metrics": {"nominal": {"macro_f1_4": {"value": 0.8, "lo": 0.78, "hi": 0.82}}},
        "differences": {"gain_up": {"macro_f1_4": {"value": -0.01, "lo": -0.02, "hi": 0.0}}},
        "flip_fraction": {"gain_up": {"mean": 0.02, "median": 0.01, "p90": 0.05}},
        "calibration": {"ece_before": 0.1, "ece_after": 0.02, "temperature": 1.5, "reliability": {
            "before": {"confidence": [0.4, 0.8], "accuracy": [0.3, 0.6], "count": [5, 5]}}}}), encoding="utf-8")


def test_report_loads_cleanly_in_headless_chromium(tmp_path: Path) -> None:
    make_runs(tmp_path / "runs")
    page = build_report([tmp_path / "runs"], tmp_path / "report.html")

    dom = run_chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = page_check_attributes(dom.stdout)
    assert set(SECTION_IDS) <= parsed.ids
    assert "data-errors" not in parsed.root, parsed.root.get("data-errors")
    assert parsed.body.get("data-missing-sections") == ""
    assert int(parsed.body.get("data-images") or 0) >= 4
    assert parsed.body.get("data-broken-images") == "0"
    assert parsed.body.get("data-ok") == "1", parsed.body
    assert console_messages(dom.stderr) == []

    shot = tmp_path / "report.png"
    run = run_chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert gray.std() > 5.0  # text and pictures, not a blank page
    assert (gray < 128).mean() > 0.005


def test_the_checks_catch_a_broken_picture_and_a_script_error(tmp_path: Path) -> None:
    make_runs(tmp_path / "runs")
    page = build_report([tmp_path / "runs"], tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/png;base64,[^"]{0,40}', 'src="data:image/png;base64,AAAA', text, count=1)
    broken = broken.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    bad = tmp_path / "broken.html"
    bad.write_text(broken, encoding="utf-8")
    dom = run_chromium(bad, tmp_path / "profile", "--dump-dom")
    parsed = page_check_attributes(dom.stdout)
    assert parsed.body.get("data-broken-images") == "1"
    assert "notDefinedAnywhere" in (parsed.root.get("data-errors") or "")
    assert parsed.body.get("data-ok") == "0"
    assert any("notDefinedAnywhere" in line for line in console_messages(dom.stderr))
