"""Rare signatures for anomaly-detection studies, injected into normal events on request.

The standard mixes never make these. ``SimConfig(anomaly=NAME)`` (``detfm simulate
--anomaly NAME``) simulates the normal event exactly as without it and then adds one
signature, transported on its own random stream, so that the normal part of anomalous
event ``i`` is the physics twin of normal event ``i`` with the same seed:

* ``"hsip"``: a slow heavily ionising particle, a stable singly charged particle of
  50 GeV (stau-like, PDG 1000015) with beta gamma uniform in 0.2-0.5 where it enters
  the box. Its Bethe dE/dx is 3-13 times a MIP; it crosses the box on a long, straight
  track, or stops inside it with a Bragg peak.
* ``"fractional"``: a lightly ionising particle, a lepton of muon mass and charge 1/3 or
  2/3 (equally often) and 1-20 GeV kinetic energy, crossing the box. Bethe with z = q
  gives q^2 times the unit-charge loss: 0.23 or 0.94 MeV/cm instead of 2.1. Charge 1/3
  is mostly below the voxel threshold: a faint, dotted straight line.
* ``"displaced_vertex"``: a neutral particle, invisible itself, decaying inside the box
  into two charged tracks: K0s -> pi+ pi- or a 400 MeV heavy neutral lepton
  N -> mu- pi+ (equally often), parent momentum 0.2-2 GeV/c. Two tracks from one vertex
  with nothing leading into it.

Labels: every track is ``track``; the heavy and fractional particles get PID ``none``
(the layout has no class for them), the decay products their own PID (muon, pion).
The injected primaries form their own interaction (one more than the event's largest).
"""

from __future__ import annotations

import math

import numpy as np

from detfm.errors import DetfmError
from detfm.io import layout
from detfm.sim.particles import HSIP_MASS_MEV, HSIP_PDG, LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG, species
from detfm.sim.transport import World, transport
from detfm.sim.truth import Deposits, Fragments, Primary, TruthEvent

ANOMALIES = ("hsip", "fractional", "displaced_vertex")

HSIP_BETA_GAMMA = (0.2, 0.5)
FRACTIONAL_CHARGES = {LIP_THIRD_PDG: 1.0 / 3.0, LIP_TWO_THIRDS_PDG: 2.0 / 3.0}
FRACTIONAL_KINETIC_MEV = (1000.0, 20000.0)
# Crossing tracks pass through a uniform point of this central cube (cm from each wall),
# so they are long; decay vertices are drawn in it too.
CENTRAL_MARGIN_CM = 30.0
K0S_MASS_MEV = 497.611      # PDG
HNL_MASS_MEV = 400.0        # model choice, above mu + pi threshold (245 MeV)
PARENT_MOMENTUM_MEV = (200.0, 2000.0)
# (parent mass, daughter 1 PDG, daughter 2 PDG)
DECAY_CHANNELS = ((K0S_MASS_MEV, 211, -211), (HNL_MASS_MEV, 13, 211))

# Stream number of the signature's generator in the event seed sequence (physics 0, detector 1).
ANOMALY_STREAM = 2


def check_anomaly(name: str | None) -> None:
    """Raise a DetfmError unless ``name`` is None or one of :data:`ANOMALIES`."""
    if name is not None and name not in ANOMALIES:
        raise DetfmError(f"unknown anomaly '{name}'; choose one of {', '.join(ANOMALIES)}")


def anomaly_rng(seed: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of the signature injected into event ``index`` (independent of its physics)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, ANOMALY_STREAM, attempt]))


def _isotropic(rng: np.random.Generator) -> np.ndarray:
    cos_t = rng.uniform(-1.0, 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = math.sqrt(1.0 - cos_t * cos_t)
    return np.array([sin_t * math.cos(phi), sin_t * math.sin(phi), cos_t])


def _central_point(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(CENTRAL_MARGIN_CM, layout.BOX_CM - CENTRAL_MARGIN_CM, size=3)


def _crossing_start(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(entry point on the box surface, direction) of a track through a central point."""
    direction = _isotropic(rng)
    inside = _central_point(rng)
    with np.errstate(divide="ignore"):
        t_lo = (0.0 - inside) / direction
        t_hi = (layout.BOX_CM - inside) / direction
    t_enter = float(np.nanmax(np.minimum(t_lo, t_hi)))  # <= 0: back to the entry face
    return np.clip(inside + direction * t_enter, 0.0, layout.BOX_CM), direction


def kinetic_from_beta_gamma(beta_gamma: float, mass_mev: float) -> float:
    """Kinetic energy (MeV) of a particle of this mass moving with this beta gamma."""
    return mass_mev * (math.sqrt(1.0 + beta_gamma * beta_gamma) - 1.0)


def hsip_primaries(rng: np.random.Generator, interaction: int = 0) -> list[Primary]:
    """One slow heavy stable charged particle crossing into the box."""
    start, direction = _crossing_start(rng)
    bg = float(rng.uniform(*HSIP_BETA_GAMMA))
    return [Primary(HSIP_PDG, kinetic_from_beta_gamma(bg, HSIP_MASS_MEV), start, direction, interaction)]


def fractional_primaries(rng: np.random.Generator, interaction: int = 0) -> list[Primary]:
    """One fractionally charged (1/3 or 2/3) lepton crossing the box."""
    start, direction = _crossing_start(rng)
    pdg = (LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG)[int(rng.integers(2))]
    return [Primary(pdg, float(rng.uniform(*FRACTIONAL_KINETIC_MEV)), start, direction, interaction)]


def two_body_decay(parent_mass: float, parent_momentum: np.ndarray, m1: float, m2: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lab momenta (MeV/c, two 3-vectors) of a decay isotropic in the parent's rest frame."""
    if parent_mass < m1 + m2:
        raise DetfmError(f"two_body_decay: parent mass {parent_mass} MeV is below {m1} + {m2} MeV")
    m_sq = parent_mass * parent_mass
    p_star = math.sqrt((m_sq - (m1 + m2) ** 2) * (m_sq - (m1 - m2) ** 2)) / (2.0 * parent_mass)
    n = _isotropic(rng)
    p = np.asarray(parent_momentum, np.float64)
    p_abs = float(np.linalg.norm(p))
    energy = math.sqrt(p_abs * p_abs + m_sq)
    gamma, beta = energy / parent_mass, p_abs / energy
    axis = p / p_abs if p_abs > 0 else np.array([0.0, 0.0, 1.0])
    out = []
    for sign, m in ((1.0, m1), (-1.0, m2)):
        q = sign * p_star * n
        e_star = math.sqrt(p_star * p_star + m * m)
        q_par = float(q @ axis)
        out.append(q + axis * ((gamma - 1.0) * q_par + gamma * beta * e_star))
    return out[0], out[1]


def displaced_vertex_primaries(rng: np.random.Generator, interaction: int = 0) -> list[Primary]:
    """Two charged daughters of a neutral particle decaying at a point inside the box."""
    vertex = _central_point(rng)
    parent_mass, pdg1, pdg2 = DECAY_CHANNELS[int(rng.integers(len(DECAY_CHANNELS)))]
    momentum = float(rng.uniform(*PARENT_MOMENTUM_MEV)) * _isotropic(rng)
    m1, m2 = species(pdg1).mass_mev, species(pdg2).mass_mev
    p1, p2 = two_body_decay(parent_mass, momentum, m1, m2, rng)
    out = []
    for pdg, m, p in ((pdg1, m1, p1), (pdg2, m2, p2)):
        p_abs = float(np.linalg.norm(p))
        kinetic = math.sqrt(p_abs * p_abs + m * m) - m
        out.append(Primary(pdg, kinetic, vertex.copy(), p / p_abs, interaction))
    return out


_MAKERS = {"hsip": hsip_primaries, "fractional": fractional_primaries,
           "displaced_vertex": displaced_vertex_primaries}


def anomaly_primaries(name: str, rng: np.random.Generator, interaction: int = 0) -> list[Primary]:
    """The primaries of one signature (see the module docstring)."""
    check_anomaly(name)
    return _MAKERS[name](rng, interaction)


def merge_truth(a: TruthEvent, b: TruthEvent) -> TruthEvent:
    """One event holding ``a`` then ``b``: groups, fragment rows and deposits of ``b`` shifted."""
    n_prim, n_frag = len(a.primaries), len(a.fragments)
    fa, fb = a.fragments, b.fragments

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(fa, name), getattr(fb, name)])

    fragments = Fragments(role=cat("role"), pid=cat("pid"), pdg=cat("pdg"),
                          group=np.concatenate([fa.group, fb.group + n_prim]).astype(np.int32),
                          interaction=cat("interaction"), mass_mev=cat("mass_mev"),
                          momentum_gev=cat("momentum_gev"), vertex_cm=cat("vertex_cm"),
                          energy_mev=cat("energy_mev"),
                          parent=np.concatenate([fa.parent, np.where(fb.parent >= 0, fb.parent + n_frag, -1)]
                                                ).astype(np.int32))
    da, db = a.deposits, b.deposits
    deposits = Deposits(pos_cm=np.concatenate([da.pos_cm, db.pos_cm]),
                        de_mev=np.concatenate([da.de_mev, db.de_mev]),
                        dx_cm=np.concatenate([da.dx_cm, db.dx_cm]),
                        time_ns=np.concatenate([da.time_ns, db.time_ns]),
                        frag=np.concatenate([da.frag, db.frag + n_frag]).astype(np.int32),
                        direction=np.concatenate([da.direction, db.direction]))
    meta: dict[str, object] = dict(a.meta)
    for key, value in b.meta.items():
        if isinstance(value, (int, float)) and isinstance(meta.get(key), (int, float)):
            meta[key] = meta[key] + value  # type: ignore[operator]
    return TruthEvent(list(a.primaries) + list(b.primaries), fragments, deposits, meta)


def inject(truth: TruthEvent, name: str, rng: np.random.Generator, world: World = World()) -> TruthEvent:
    """``truth`` plus the signature ``name``, transported with ``rng`` as its own interaction."""
    interaction = max((p.interaction for p in truth.primaries), default=-1) + 1
    primaries = anomaly_primaries(name, rng, interaction)
    signature = transport(primaries, rng, world)
    merged = merge_truth(truth, signature)
    merged.meta["anomaly"] = name
    merged.meta["anomaly_groups"] = list(range(len(truth.primaries), len(merged.primaries)))
    return merged


__all__ = [
    "ANOMALIES", "anomaly_primaries", "anomaly_rng", "check_anomaly", "displaced_vertex_primaries",
    "fractional_primaries", "hsip_primaries", "inject", "kinetic_from_beta_gamma", "merge_truth",
    "two_body_decay",
]
