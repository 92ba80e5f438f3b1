"""Detector models: the named, documented parameters of the detector-response stage.

A :class:`DetectorModel` says how ionisation charge from transport becomes recorded
voxels (recombination, drift, lifetime, diffusion, calibration, noise, dead regions,
threshold). :data:`DETECTORS` is the catalogue of named variations used for systematic
studies: the same physics rendered through each gives exact twins of the nominal events.

Defaults are typical LArTPC values from PHYSICS.md ("Detector response"); each number
cites its source where it is defined.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from detfm.errors import ConfigError, DetfmError
from detfm.io import layout

VoxelRange = tuple[int, int]
DeadRegion = tuple[VoxelRange, VoxelRange, VoxelRange]

# PDG "Atomic and nuclear properties of materials", liquid argon: minimum ionisation
# 1.508 MeV cm^2/g x 1.396 g/cm^3 = 2.105 MeV/cm. The charge calibration is set at this dE/dx.
MIP_DEDX_MEV_CM = 2.105


@dataclass(frozen=True)
class DetectorModel:
    """How energy deposits become recorded voxels.

    Attributes:
        name: catalogue name (recorded in file attributes).
        description: one sentence on what this variation is for.
        recombination: ``"box"`` (modified box model) or ``"birks"``; the choice is a
            classic systematic.
        box_alpha: modified-box alpha (dimensionless). ArgoNeuT, JINST 8 (2013) P08005: 0.93.
        box_beta: modified-box beta in (kV/cm)(g/cm^2)/MeV. ArgoNeuT (same): 0.212.
        birks_a: Birks A (dimensionless). ICARUS, NIM A523 (2004) 275: 0.800.
        birks_k: Birks k in (kV/cm)(g/cm^2)/MeV. ICARUS (same): 0.0486.
        min_dedx_mev_cm: dE/dx below this is raised to it before recombination (the box
            model turns negative below ~0.2 MeV/cm and peaks near 1.55 MeV/cm, under the
            range it was fitted on); LArSoft's ISCalcSeparate guards with the same 1 MeV/cm.
        density_g_cm3: liquid-argon density used in recombination (PDG: 1.396 g/cm^3).
        efield_kv_cm: drift field in kV/cm (PHYSICS.md: 500 V/cm).
        w_ion_ev: mean energy per ionisation electron in eV (PDG: 23.6 eV).
        drift_velocity_cm_us: electron drift speed in cm/us (PHYSICS.md: ~1.6 mm/us at 500 V/cm).
        electron_lifetime_us: electron lifetime in us; charge drifting for t survives with
            probability exp(-t/tau) (PHYSICS.md: 3-10 ms typical).
        diffusion_long_cm2_s: longitudinal diffusion constant D_L in cm^2/s (PHYSICS.md: 7.2).
        diffusion_trans_cm2_s: transverse diffusion constant D_T in cm^2/s (PHYSICS.md: 12).
        energy_scale: multiplies the reconstructed voxel value (gain miscalibration).
        threshold_mev: voxels whose reconstructed value is below this (MeV) are not
            recorded (PHYSICS.md, PILArNet-M: 0.05 MeV).
        noise_hits_per_event: mean (Poisson) number of noise voxels per event.
        noise_mean_mev: noise hits carry the charge of ``threshold_mev + Exp(noise_mean_mev)``
            MeV of calibrated energy (small, mostly near threshold).
        dead_regions: voxel boxes ``((x0, x1), (y0, y1), (z0, z1))``, half-open ranges of
            voxel indices, where nothing is recorded (dead channels, cracks).

    Values are checked on construction; :meth:`from_dict` builds one from YAML/JSON.
    """

    name: str = "nominal"
    description: str = "Reference response: typical LArTPC values from PHYSICS.md, no noise, no dead regions."
    recombination: Literal["box", "birks"] = "box"
    box_alpha: float = 0.93
    box_beta: float = 0.212
    birks_a: float = 0.800
    birks_k: float = 0.0486
    min_dedx_mev_cm: float = 1.0
    density_g_cm3: float = 1.396
    efield_kv_cm: float = 0.5
    w_ion_ev: float = 23.6
    drift_velocity_cm_us: float = 0.16
    electron_lifetime_us: float = 10_000.0
    diffusion_long_cm2_s: float = 7.2
    diffusion_trans_cm2_s: float = 12.0
    energy_scale: float = 1.0
    threshold_mev: float = 0.05
    noise_hits_per_event: float = 0.0
    noise_mean_mev: float = 0.2
    dead_regions: tuple[DeadRegion, ...] = ()

    def __post_init__(self) -> None:
        if self.recombination not in ("box", "birks"):
            raise ConfigError(f"detector '{self.name}': recombination must be 'box' or 'birks', "
                              f"got {self.recombination!r}")
        positive = ("box_alpha", "box_beta", "birks_a", "birks_k", "min_dedx_mev_cm", "density_g_cm3",
                    "efield_kv_cm", "w_ion_ev", "drift_velocity_cm_us", "electron_lifetime_us",
                    "energy_scale", "noise_mean_mev")
        non_negative = ("diffusion_long_cm2_s", "diffusion_trans_cm2_s", "threshold_mev",
                        "noise_hits_per_event")
        for key in positive + non_negative:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"detector '{self.name}': {key} must be a finite number, got {value!r}")
            if key in positive and value <= 0:
                raise ConfigError(f"detector '{self.name}': {key} must be > 0, got {value}")
            if value < 0:
                raise ConfigError(f"detector '{self.name}': {key} must be >= 0, got {value}")
        if self.recombination == "box" and not self.box_alpha + self.box_beta * self.min_dedx_mev_cm / (
                self.density_g_cm3 * self.efield_kv_cm) > 1.0:
            raise ConfigError(f"detector '{self.name}': box model gives no charge at min_dedx_mev_cm="
                              f"{self.min_dedx_mev_cm}; raise it or alpha")
        # Normalise lists (from YAML/JSON) to tuples so the model stays hashable and frozen.
        object.__setattr__(self, "dead_regions", _check_dead_regions(self.name, self.dead_regions))

    def survival_fraction(self, dedx_mev_cm: np.ndarray | float) -> np.ndarray:
        """Fraction of ionisation electrons escaping recombination at the given dE/dx (MeV/cm).

        Modified box: R = ln(alpha + xi) / xi with xi = beta dE/dx / (rho E).
        Birks: R = A / (1 + k dE/dx / (rho E)).
        """
        dedx = np.maximum(np.asarray(dedx_mev_cm, dtype=np.float64), self.min_dedx_mev_cm)
        scaled = dedx / (self.density_g_cm3 * self.efield_kv_cm)
        if self.recombination == "box":
            xi = self.box_beta * scaled
            return np.log(self.box_alpha + xi) / xi
        return self.birks_a / (1.0 + self.birks_k * scaled)

    def max_drift_us(self) -> float:
        """Drift time across the whole box (anode at x = 0), in us."""
        return layout.BOX_CM / self.drift_velocity_cm_us

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (for YAML/JSON and file attributes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorModel:
        """Build from a mapping; unknown keys raise a :class:`ConfigError` naming them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = [f"'{k}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, known, 1))
                     else f"'{k}'" for k in unknown]
            raise ConfigError(f"unknown detector key(s) {', '.join(hints)}; valid keys: {', '.join(known)}")
        return cls(**dict(data))

    def describe(self) -> str:
        """One paragraph for ``--list-detectors``: purpose, key parameters, changes from nominal."""
        if self.recombination == "box":
            recomb = f"modified box (alpha={self.box_alpha:g}, beta={self.box_beta:g})"
        else:
            recomb = f"Birks (A={self.birks_a:g}, k={self.birks_k:g})"
        r_mip = float(self.survival_fraction(MIP_DEDX_MEV_CM))
        noise = "no noise"
        if self.noise_hits_per_event > 0:
            noise = (f"{self.noise_hits_per_event:g} noise hits/event "
                     f"(mean {self.noise_mean_mev:g} MeV above threshold)")
        dead = f"{len(self.dead_regions)} dead region(s)" if self.dead_regions else "no dead regions"
        text = (f"{self.name}: {self.description} Recombination {recomb}, R(MIP)={r_mip:.3f} at "
                f"{self.efield_kv_cm:g} kV/cm; drift {self.drift_velocity_cm_us:g} cm/us, electron lifetime "
                f"{self.electron_lifetime_us / 1000:g} ms; diffusion D_L={self.diffusion_long_cm2_s:g}, "
                f"D_T={self.diffusion_trans_cm2_s:g} cm^2/s; energy scale {self.energy_scale:g}; threshold "
                f"{self.threshold_mev:g} MeV; {noise}; {dead}.")
        changed = self.changes_from(NOMINAL)
        if changed and self.name != NOMINAL.name:
            text += f" Differs from nominal in: {', '.join(changed)}."
        return text

    def changes_from(self, other: DetectorModel) -> list[str]:
        """Names of the physics parameters that differ from ``other`` (name/description ignored)."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ("name", "description") and getattr(self, f.name) != getattr(other, f.name)]


def _check_dead_regions(name: str, regions: Any) -> tuple[DeadRegion, ...]:
    where = f"detector '{name}': dead_regions"
    try:
        boxes = [tuple(tuple(axis) for axis in box) for box in regions]
    except TypeError:
        raise ConfigError(f"{where} must be a list of ((x0, x1), (y0, y1), (z0, z1)) voxel ranges, "
                          f"got {regions!r}") from None
    out = []
    for k, box in enumerate(boxes):
        if len(box) != 3 or any(len(axis) != 2 for axis in box):
            raise ConfigError(f"{where}[{k}] must be ((x0, x1), (y0, y1), (z0, z1)), got {box!r}")
        ranges = []
        for axis, (lo, hi) in zip("xyz", box, strict=True):
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)):
                raise ConfigError(f"{where}[{k}] {axis} range must be integer voxel indices, "
                                  f"got {(lo, hi)!r}")
            if not 0 <= lo < hi <= layout.BOX_VOXELS:
                raise ConfigError(f"{where}[{k}] {axis} range {(lo, hi)} must satisfy "
                                  f"0 <= start < stop <= {layout.BOX_VOXELS}")
            ranges.append((int(lo), int(hi)))
        out.append(tuple(ranges))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class Calibration:
    """The fixed charge-to-energy calibration used to reconstruct every detector's voxels.

    It is the NOMINAL detector's (box-model recombination at a MIP, nominal W and electron
    lifetime), never the rendered detector's own, so a detector variation shifts the
    reconstructed energy the way a mis-modelled detector would in data.

    value (MeV) = electrons * w_ion_ev * 1e-6 / r_mip * exp(t_drift / lifetime_us) * energy_scale
    """

    w_ion_ev: float
    r_mip: float
    lifetime_us: float

    @staticmethod
    def of(detector: DetectorModel) -> Calibration:
        """The calibration someone would derive from ``detector`` at a MIP."""
        return Calibration(detector.w_ion_ev, float(detector.survival_fraction(MIP_DEDX_MEV_CM)),
                           detector.electron_lifetime_us)


NOMINAL = DetectorModel()
CALIBRATION = Calibration.of(NOMINAL)

# Two thin dead slabs (dead wire groups span the full drift length) and one dead block.
_DEAD_SLABS: tuple[DeadRegion, ...] = (
    ((0, 768), (0, 768), (250, 262)),      # 12 voxels = 3.6 cm of dead channels in z
    ((0, 768), (480, 488), (0, 768)),      # 8 voxels in y
    ((600, 700), (100, 200), (600, 700)),  # a 30 cm dead block
)


def _variant(name: str, description: str, **changes: Any) -> DetectorModel:
    return dataclasses.replace(NOMINAL, name=name, description=description, **changes)


DETECTORS: dict[str, DetectorModel] = {d.name: d for d in (
    NOMINAL,
    _variant("escale_up", "Energy scale +5 % (gain miscalibration).", energy_scale=1.05),
    _variant("escale_down", "Energy scale -5 % (gain miscalibration).", energy_scale=0.95),
    _variant("short_lifetime", "Electron lifetime 3 ms instead of 10 ms (poor argon purity), "
             "corrected with the nominal lifetime.", electron_lifetime_us=3_000.0),
    _variant("birks", "Birks recombination (ICARUS) instead of the modified box model.",
             recombination="birks"),
    _variant("noisy", "300 noise voxels per event (electronics noise).", noise_hits_per_event=300.0),
    _variant("dead_regions", "Dead channel slabs and a dead block where nothing is recorded.",
             dead_regions=_DEAD_SLABS),
    _variant("high_diffusion", "Diffusion constants doubled.", diffusion_long_cm2_s=14.4,
             diffusion_trans_cm2_s=24.0),
    _variant("data_like", "A realistic mis-modelled detector for sim-vs-data studies: +2 % energy "
             "scale, 6 ms lifetime, Birks recombination, noise and dead regions together.",
             energy_scale=1.02, electron_lifetime_us=6_000.0, recombination="birks",
             noise_hits_per_event=100.0, dead_regions=_DEAD_SLABS[:2]),
)}


def get_detector(name: str) -> DetectorModel:
    """The catalogue entry called ``name``; a :class:`DetfmError` lists valid names otherwise."""
    if name in DETECTORS:
        return DETECTORS[name]
    close = difflib.get_close_matches(str(name).strip().lower().replace("-", "_"), list(DETECTORS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DetfmError(f"unknown detector '{name}'.{hint} Valid detectors: {', '.join(DETECTORS)}")
