from pathlib import Path

import pytest

from ddnn.core.config import load_config
from ddnn.core.errors import ConfigError


def test_defaults_are_the_papers_configuration_c():
    cfg = load_config()
    m = cfg.model
    assert (m.n_devices, m.device.conv_filters, m.local.aggregation) == (6, [4], "MP")
    assert m.edge is None and m.cloud.aggregation == "CC"
    assert m.exits == ["local", "cloud"]
    assert (cfg.train.lr, cfg.train.betas, cfg.train.eps) == (1e-3, (0.9, 0.999), 1e-8)


def test_yaml_file_and_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  local:\n    aggregation: AP\ntrain:\n  epochs: 7\n")
    cfg = load_config(path, ["train.device_dropout=0.25", "model.edge={groups: [[0,1,2],[3,4,5]]}"])
    assert cfg.model.local.aggregation == "AP" and cfg.train.epochs == 7
    assert cfg.train.device_dropout == 0.25
    assert cfg.model.exits == ["local", "edge", "cloud"]


def test_json_config(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"local": null}}')
    assert load_config(path).model.exits == ["cloud"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  epochs: -3\n", "train.epochs"),
        ("train:\n  epoch: 3\n", "train.epoch: Extra inputs are not permitted"),
        ("model:\n  local:\n    aggregation: XX\n", "model.local"),
        ("model:\n  edge:\n    groups: [[0, 1]]\n", "edge.groups must cover devices 0..5"),
        ("exits:\n  edge:\n    threshold: 0.3\n", "not in this topology"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file_and_bad_override(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.epochs"])
