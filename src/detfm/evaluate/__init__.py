"""Evaluation: metrics, probes, feature pictures and the event display.

Plotting libraries are imported only inside the functions that draw.
"""

from detfm.evaluate.metrics import (accuracy, confusion_matrix, macro_f1, per_class_f1, per_class_precision,
                                    per_class_recall)
from detfm.evaluate.probe import (PointFeatures, ProbeResult, compare_probes, extract_point_features,
                                  fit_probe, linear_probe)

__all__ = ["PointFeatures", "ProbeResult", "accuracy", "compare_probes", "confusion_matrix",
           "extract_point_features", "fit_probe", "linear_probe", "macro_f1", "per_class_f1",
           "per_class_precision", "per_class_recall"]
