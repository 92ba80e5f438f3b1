"""The self-check script of detfm's HTML pages (the report, `detfm compare`).

Once the page has loaded it checks that every picture decoded and that every expected
section id is present, collects script errors, and writes the result on ``<body>``:
``data-ok`` ("1" when all is well), ``data-images``, ``data-broken-images`` and
``data-missing-sections``; errors go to ``data-errors`` on ``<html>``. The browser tests
read these attributes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["page_check_script"]

_JS = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || 'error'));
    document.documentElement.setAttribute('data-errors', errors.join(' | '));
  });
  window.addEventListener('load', function () {
    var ids = %s;
    var missing = ids.filter(function (id) { return !document.getElementById(id); });
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    var body = document.body;
    body.setAttribute('data-images', String(imgs.length));
    body.setAttribute('data-broken-images', String(broken.length));
    body.setAttribute('data-missing-sections', missing.join(' '));
    body.setAttribute('data-ok', (missing.length === 0 && broken.length === 0 && errors.length === 0) ? '1' : '0');
  });
})();
"""


def page_check_script(section_ids: Sequence[str] = ()) -> str:
    """The script's source, expecting the elements ``section_ids``."""
    return _JS % json.dumps(list(section_ids))
