"""TrainConfig validation and the YAML helpers (round trip, typos, types, nesting, hashing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from detfm.engine import (RESUME_FREE_FIELDS, TrainConfig, config_hash, config_to_dict, load_config,
                          save_config)
from detfm.errors import ConfigError


@dataclass(frozen=True)
class ModelSettings:
    name: str = "pointmae_tiny"
    depth: int = 4
    drop: float = 0.1


@dataclass(frozen=True)
class RunSettings:
    """A whole-run config nesting TrainConfig, as the CLI would build."""

    data: list[str] = field(default_factory=list)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    mode: Literal["probe", "finetune"] = "probe"
    out: Path | None = None
    class_weights: dict[str, float] | None = None
    crop: tuple[int, ...] = (64, 64)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=7, batch_size=12, lr=2e-3, betas=(0.8, 0.99), accum_steps=3,
                      precision="fp32", device="cpu", progress=False)
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert text.startswith("# TrainConfig\n") and "betas:\n- 0.8\n- 0.99" in text
    back = load_config(TrainConfig, tmp_path / "c.yaml")
    assert back == cfg and isinstance(back.betas, tuple)
    assert config_hash(back) == config_hash(cfg)


def test_nested_round_trip(tmp_path: Path) -> None:
    run = RunSettings(data=["a.h5", "b.h5"], model=ModelSettings(depth=2), train=TrainConfig(steps=3),
                      mode="finetune", out=Path("runs/x"), class_weights={"track": 2.0}, crop=(1, 2, 3))
    save_config(run, tmp_path / "run.yaml")
    assert load_config(RunSettings, tmp_path / "run.yaml") == run
    assert load_config(RunSettings, config_to_dict(run)) == run


def test_missing_keys_take_defaults_and_empty_file_is_default(tmp_path: Path) -> None:
    assert load_config(TrainConfig, {"steps": 5}) == TrainConfig(steps=5)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(TrainConfig, tmp_path / "empty.yaml") == TrainConfig()


def test_unknown_key_names_the_closest_valid_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in TrainConfig; did you mean 'lr'\?"):
        load_config(TrainConfig, {"lrr": 0.1})
    with pytest.raises(ConfigError, match=r"unknown key 'warmup' .*did you mean 'warmup_steps'"):
        load_config(TrainConfig, {"warmup": 3})
    (tmp_path / "run.yaml").write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'train\.stpes' in TrainConfig; "
                                          r"did you mean 'steps'"):
        load_config(RunSettings, tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="valid keys: steps, batch_size"):
        load_config(TrainConfig, {"zzzzzz": 1})


def test_wrong_types_are_clear() -> None:
    with pytest.raises(ConfigError, match=r"steps: expected int, got 'ten'"):
        load_config(TrainConfig, {"steps": "ten"})
    with pytest.raises(ConfigError, match=r"steps: expected int, got True"):
        load_config(TrainConfig, {"steps": True})
    with pytest.raises(ConfigError, match=r"progress: expected bool, got 'yes please'"):
        load_config(TrainConfig, {"progress": "yes please"})
    with pytest.raises(ConfigError, match=r"betas: expected 2 values, got 3"):
        load_config(TrainConfig, {"betas": [0.9, 0.9, 0.9]})
    with pytest.raises(ConfigError, match=r"model\.depth: expected int, got 2\.5"):
        load_config(RunSettings, {"model": {"depth": 2.5}})
    with pytest.raises(ConfigError, match=r"model: expected a mapping of ModelSettings keys, got list"):
        load_config(RunSettings, {"model": [1, 2]})
    with pytest.raises(ConfigError, match=r"mode: must be one of probe, finetune, got 'fine-tune'; "
                                          r"did you mean 'finetune'"):
        load_config(RunSettings, {"mode": "fine-tune"})
    with pytest.raises(ConfigError, match=r"precision: must be one of auto, fp32, bf16, got 'bf61'"):
        load_config(TrainConfig, {"precision": "bf61"})


def test_float_fields_accept_ints_and_yaml_exponent_strings(tmp_path: Path) -> None:
    # PyYAML reads "1e-3" (no decimal point) as a string; a float field accepts it.
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nmin_lr: 0\n")
    cfg = load_config(TrainConfig, tmp_path / "c.yaml")
    assert cfg.lr == 0.001 and cfg.min_lr == 0.0 and isinstance(cfg.min_lr, float)


def test_invalid_values_are_clear() -> None:
    with pytest.raises(ConfigError, match=r"lr must be > 0, got -1"):
        load_config(TrainConfig, {"lr": -1})
    with pytest.raises(ConfigError, match=r"batch_size \(10\) must be divisible by accum_steps \(4\)"):
        TrainConfig(batch_size=10, accum_steps=4)
    with pytest.raises(ConfigError, match=r"min_lr \(0.1\) must not exceed lr"):
        TrainConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(ConfigError, match=r"device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match=r"betas must be two numbers in \[0, 1\)"):
        TrainConfig(betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match=r"steps must be >= 1, got 0"):
        TrainConfig(steps=0)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 2, column 1: not valid YAML"):
        load_config(TrainConfig, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: TrainConfig: expected a mapping"):
        load_config(TrainConfig, tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="needs a dataclass type"):
        load_config(dict, {})  # type: ignore[type-var]


def test_missing_required_key() -> None:
    @dataclass(frozen=True)
    class Needs:
        path: str

    with pytest.raises(ConfigError, match=r"missing key 'path' in Needs"):
        load_config(Needs, {})


def test_hash_ignores_resume_free_fields_only() -> None:
    base = TrainConfig()
    assert {"num_workers", "log_every", "checkpoint_every", "device"} <= RESUME_FREE_FIELDS
    assert config_hash(TrainConfig(num_workers=4, log_every=1, checkpoint_every=7, progress=False)) \
        == config_hash(base)
    assert config_hash(TrainConfig(lr=1e-3)) != config_hash(base)
    assert config_hash(TrainConfig(seed=1)) != config_hash(base)
    assert config_hash(TrainConfig(lr=1)) == config_hash(TrainConfig(lr=1.0))  # int vs float
    nested = RunSettings(train=TrainConfig(num_workers=3))
    assert config_hash(nested) == config_hash(RunSettings())
    assert config_hash(RunSettings(model=ModelSettings(depth=9))) != config_hash(RunSettings())


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    from detfm.engine.config import read_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n  lr: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, bad)
    message = str(err.value)
    assert message.startswith(f"{bad}, line ") and ", column " in message and "\n" not in message
    with pytest.raises(ConfigError, match="is a folder"):
        read_yaml(tmp_path)
