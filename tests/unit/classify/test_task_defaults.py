"""Per-task training defaults (core.config.TASK_DEFAULTS) fill what a TrainConfig or YAML leaves out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import TASK_DEFAULTS, ConfigError, TrainConfig

TUNED = ("lr", "epochs", "max_length", "batch_size")


@pytest.mark.parametrize("task", ["sft", "classification"])
def test_omitted_fields_take_the_tasks_defaults(task: str) -> None:
    cfg = TrainConfig(data_path="d.csv", adapter_name="a", task=task)  # type: ignore[arg-type]
    assert {k: getattr(cfg, k) for k in TUNED} == {k: TASK_DEFAULTS[task][k] for k in TUNED}


def test_classification_defaults_are_not_the_sft_ones() -> None:
    """The bug of issue 8: the CLI trained classifiers with SFT's learning rate (2e-4), worse than zero-shot."""
    cls = TrainConfig(data_path="d.csv", adapter_name="a", task="classification")
    assert cls.lr >= 1e-3 and cls.batch_size >= 16
    assert set(TUNED) <= set(TASK_DEFAULTS["classification"]) and set(TUNED) <= set(TASK_DEFAULTS["sft"])


def test_given_values_win_over_defaults() -> None:
    cfg = TrainConfig(data_path="d.csv", adapter_name="a", task="classification", lr=5e-4, epochs=2, batch_size=4)
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (5e-4, 2, 4)
    assert cfg.max_length == TASK_DEFAULTS["classification"]["max_length"]


def test_yaml_that_omits_them_gets_the_tasks_defaults_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data_path": "d.csv", "adapter_name": "a", "task": "classification"}))
    cfg = TrainConfig.from_yaml(path)
    assert cfg.lr == TASK_DEFAULTS["classification"]["lr"]
    assert cfg.batch_size == TASK_DEFAULTS["classification"]["batch_size"]
    cfg.to_yaml(path)
    again = TrainConfig.from_yaml(path)
    assert again == cfg and yaml.safe_load(path.read_text())["lr"] == cfg.lr  # resolved values are written out


@pytest.mark.parametrize(("override", "field"), [({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size")])
def test_bad_values_are_still_refused_with_their_name(override: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(data_path="d.csv", adapter_name="a", task="classification", **override)
