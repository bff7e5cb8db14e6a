"""Per-role artifacts: lossless, loaded one role at a time, refused when corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from ddnn.core.config import load_config
from ddnn.core.errors import ModelFileError
from ddnn.nn.export import export, load_cloud, load_device, load_edge, load_exported_model
from ddnn.nn.model import DDNN

EDGE = ["model.edge={groups: [[0, 1, 2], [3, 4, 5]]}"]


def trained_like(overrides: list[str] | None = None) -> tuple[DDNN, object]:
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    model = DDNN(cfg.model)
    with torch.no_grad():  # batch-norm statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval(), cfg


@pytest.mark.parametrize("overrides", [None, EDGE])
def test_the_exported_model_computes_exactly_what_the_original_does(tmp_path, overrides):
    model, cfg = trained_like(overrides)
    manifest = export(model, cfg, tmp_path, {"data": "synth"})
    assert manifest.meta == {"data": "synth"}
    loaded, loaded_cfg, _ = load_exported_model(tmp_path)
    assert loaded_cfg == cfg
    x = torch.rand(5, 6, 3, 32, 32) * 255
    with torch.no_grad():
        a, b = model(x).logits, loaded(x).logits
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, device = load_device(tmp_path, 4)
    with torch.no_grad():
        assert torch.equal(device(x[:, 4])[0], model.device_slices[4](x[:, 4])[0])


def test_roles_and_model_version(tmp_path):
    model, cfg = trained_like(EDGE)
    manifest = export(model, cfg, tmp_path)
    assert sorted(manifest.artifacts) == sorted(
        [f"device-{i}" for i in range(6)] + ["aggregator", "edge-0", "edge-1", "cloud"]
    )
    assert load_edge(tmp_path, 1)[1].in_shape == model.device_feature_shape
    assert export(model, cfg, tmp_path / "again").model_version == manifest.model_version
    with torch.no_grad():
        model.cloud.head.bn.bias += 1
    assert export(model, cfg, tmp_path / "changed").model_version != manifest.model_version


def test_corrupt_missing_or_mismatched_artifacts_are_refused(tmp_path):
    model, cfg = trained_like()
    export(model, cfg, tmp_path)
    with pytest.raises(ModelFileError, match="no role 'edge-0'"):
        load_edge(tmp_path, 0)
    (tmp_path / "cloud.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelFileError, match="does not match its hash"):
        load_cloud(tmp_path)
    (tmp_path / "device-2.npz").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_device(tmp_path, 2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="export version 99"):
        load_device(tmp_path, 0)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ModelFileError, match="not a valid manifest"):
        load_device(tmp_path, 0)
