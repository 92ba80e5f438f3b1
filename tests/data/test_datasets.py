"""Dataset kinds: the LArTPC entry and what models and tasks read from it."""

from __future__ import annotations

import pytest
import torch

from detfm.data import DatasetSpec, get_dataset, list_datasets, register_dataset
from detfm.errors import ConfigError
from detfm.io import layout


def test_lartpc_supplies_class_names_excluded_class_and_normalisation() -> None:
    spec = get_dataset("lartpc")
    assert spec.semantic_classes == layout.SEMANTIC_CLASSES
    assert spec.pid_classes == ("photon", "electron", "muon", "pion", "proton")
    assert spec.semantic_classes[spec.excluded_semantic] == "low_energy"
    assert spec.headline_semantic_classes == ("shower", "track", "michel", "delta")
    corners = spec.normalise(torch.tensor([[0.0, 384.0, 768.0]]))
    torch.testing.assert_close(corners, torch.tensor([[-1.0, 0.0, 1.0]]))


def test_a_new_kind_registers_once_and_typos_are_named() -> None:
    name = "toy_detector_for_tests"
    if name not in list_datasets():
        register_dataset(DatasetSpec(name=name, semantic_classes=("a", "b"), pid_classes=("x",),
                                     excluded_semantic=None, box_size=100.0, units="cm"))
    assert get_dataset(name).normalise(torch.tensor([50.0])).item() == 0.0
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset(get_dataset(name))
    with pytest.raises(ConfigError, match="did you mean 'lartpc'"):
        get_dataset("lartcp")
