"""The ``kind`` tag of each results file that other tools read back.

The commands that write these files import heavy training code; the readers (model cards,
the HTML report, the registry) must not. Both sides take the tag from here, so a writer
and its readers cannot drift apart.
"""

SYSTEMATICS = "detfm-systematics/1"   # report.json of `detfm evaluate`
SENSITIVITY = "detfm-sensitivity/1"   # sensitivity.json of `detfm audit sensitivity`
DIVERSITY = "detfm-diversity/1"       # diversity.json of `detfm audit diversity`

__all__ = ["DIVERSITY", "SENSITIVITY", "SYSTEMATICS"]
