"""The `detfm compare` page in a real browser (headless chromium): no script errors, every
picture decodes, and the page renders to a non-blank screenshot.

Chromium is installed by ``scripts/install_test_browser.sh`` (Debian's package); without it
the test is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import chromium_path, console_messages, page_check_attributes, run_chromium
from PIL import Image

from detfm.evaluate.compare import run_compare, write_compare
from detfm.sim.simulate import SimConfig, simulate_to_file

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found on PATH; install it with "
                                                         "scripts/install_test_browser.sh (as root)")
FIGURES = 8


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare-browser")
    a, b = root / "a.h5", root / "b.h5"
    simulate_to_file(SimConfig(events=20, seed=7), a, progress=False)
    simulate_to_file(SimConfig(events=20, seed=8, detector="data_like"), b, progress=False)
    return write_compare(run_compare([a, b]), root / "out")


def test_compare_page_loads_cleanly_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    dom = run_chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = page_check_attributes(dom.stdout)
    assert "data-errors" not in parsed.root, parsed.root.get("data-errors")
    assert int(parsed.body.get("data-images") or 0) == FIGURES
    assert parsed.body.get("data-broken-images") == "0"
    assert parsed.body.get("data-ok") == "1", parsed.body
    assert {f"compare-{k}" for k in ("points_per_event", "class_shares", "track_dedx", "shower_lateral")} <= parsed.ids
    assert console_messages(dom.stderr) == []

    shot = tmp_path / "compare.png"
    run = run_chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,1600")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert gray.std() > 5.0 and (gray < 128).mean() > 0.005  # text and pictures, not a blank page


def test_the_checks_catch_a_broken_picture(page: Path, tmp_path: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/png;base64,[^"]{0,40}', 'src="data:image/png;base64,AAAA', text, count=1)
    bad = tmp_path / "broken.html"
    bad.write_text(broken, encoding="utf-8")
    dom = run_chromium(bad, tmp_path / "profile", "--dump-dom")
    parsed = page_check_attributes(dom.stdout)
    assert parsed.body.get("data-broken-images") == "1"
    assert parsed.body.get("data-ok") == "0"
