"""Evaluation: metrics, probes, feature pictures, the event display, uncertainty and systematics.

Plotting libraries are imported only inside the functions that draw.
"""

from detfm.evaluate.calibration import (ReliabilityCurve, calibration_summary, expected_calibration_error,
                                        fit_temperature, reliability_curve)
from detfm.evaluate.conformal import ConformalPredictor, conformal_summary, fit_conformal
from detfm.evaluate.ensemble import ensemble_probs, ensemble_summary, mutual_information, predictive_entropy
from detfm.evaluate.metrics import (accuracy, confusion_matrix, macro_f1, per_class_f1, per_class_precision,
                                    per_class_recall)
from detfm.evaluate import particles as particles  # registers the particles scorer
from detfm.evaluate.outputs import ParticleOutputs, PointOutputs, collect_particle_outputs, collect_point_outputs
from detfm.evaluate.probe import (PointFeatures, ProbeResult, compare_probes, extract_point_features,
                                  fit_probe, linear_probe)

__all__ = ["ConformalPredictor", "ParticleOutputs", "PointFeatures", "PointOutputs", "ProbeResult",
           "ReliabilityCurve", "accuracy", "calibration_summary", "collect_particle_outputs",
           "collect_point_outputs", "compare_probes", "conformal_summary", "confusion_matrix",
           "ensemble_probs", "ensemble_summary", "expected_calibration_error", "extract_point_features",
           "fit_conformal", "fit_probe", "fit_temperature", "linear_probe", "macro_f1", "mutual_information",
           "per_class_f1", "per_class_precision", "per_class_recall", "predictive_entropy", "reliability_curve"]
