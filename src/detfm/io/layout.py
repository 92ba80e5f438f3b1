"""Constants of the PILArNet-M HDF5 layout (see DESIGN.md, "Data contract").

Each event is one row of three variable-length float datasets:

* ``point``: (N, 8) per voxel — x, y, z (voxel index 0-767), value (MeV), dE (MeV),
  time (ns), electrons, dx (mm).
* ``cluster``: (M, 6) per cluster — n_points, fragment id, group id, interaction id,
  semantic class, pid. Older files have (M, 5) without pid.
* ``cluster_extra``: (M, 5) per cluster — mass (MeV), momentum (GeV), vertex x, y, z (voxels).

Points are stored ordered by cluster; cluster row 0 is the low-energy bucket.
"""

from __future__ import annotations

FORMAT_VERSION = "1"

POINT_COLUMNS = ("x", "y", "z", "value", "dE", "time", "electrons", "dx")
CLUSTER_COLUMNS = ("n_points", "fragment", "group", "interaction", "semantic", "pid")
CLUSTER_COLUMNS_V5 = CLUSTER_COLUMNS[:5]
CLUSTER_EXTRA_COLUMNS = ("mass", "momentum", "vx", "vy", "vz")

N_POINT = len(POINT_COLUMNS)
N_CLUSTER = len(CLUSTER_COLUMNS)
N_CLUSTER_V5 = len(CLUSTER_COLUMNS_V5)
N_CLUSTER_EXTRA = len(CLUSTER_EXTRA_COLUMNS)

# Column indices, so code reads ``points[:, VALUE]`` rather than ``points[:, 3]``.
X, Y, Z, VALUE, DE, TIME, ELECTRONS, DX = range(N_POINT)
C_NPOINTS, C_FRAGMENT, C_GROUP, C_INTERACTION, C_SEMANTIC, C_PID = range(N_CLUSTER)

# Detector geometry: 3 mm voxels in a 768^3 box.
VOXEL_SIZE_CM = 0.3
BOX_VOXELS = 768
BOX_CM = VOXEL_SIZE_CM * BOX_VOXELS  # 230.4 cm

SEMANTIC_CLASSES = ("shower", "track", "michel", "delta", "low_energy")
SHOWER, TRACK, MICHEL, DELTA, LOW_ENERGY = range(len(SEMANTIC_CLASSES))

PID_CLASSES = ("photon", "electron", "muon", "pion", "proton", "none")
PID_PHOTON, PID_ELECTRON, PID_MUON, PID_PION, PID_PROTON, PID_NONE = range(len(PID_CLASSES))

# Loaders drop voxels below this value (MeV), as the reference datasets do.
DEFAULT_ENERGY_THRESHOLD_MEV = 0.13

DATASETS = ("point", "cluster", "cluster_extra")
