"""Sparse voxel operations in plain PyTorch: hashing, kernel maps, submanifold convolution,
grid pooling and space-filling-curve serialization."""

from detfm.models.sparse.conv import SubMConv3d, submanifold_conv3d
from detfm.models.sparse.hashing import (
                                               KERNEL_OFFSETS,
                                               KernelMap,
                                               kernel_map,
                                               voxel_keys,
)
from detfm.models.sparse.pooling import PoolMap, grid_pool_map, max_pool, unpool
from detfm.models.sparse.serialization import (
                                               DEPTH,
                                               ORDERS,
                                               encode,
                                               hilbert_encode,
                                               inverse_permutation,
                                               serialize,
                                               z_order_encode,
)

__all__ = [
                                               "DEPTH",
                                               "KERNEL_OFFSETS",
                                               "ORDERS",
                                               "KernelMap",
                                               "PoolMap",
                                               "SubMConv3d",
                                               "encode",
                                               "grid_pool_map",
                                               "hilbert_encode",
                                               "inverse_permutation",
                                               "kernel_map",
                                               "max_pool",
                                               "serialize",
                                               "submanifold_conv3d",
                                               "unpool",
                                               "voxel_keys",
                                               "z_order_encode",
]
