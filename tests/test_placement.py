"""Exit placement (the exit-placement paper): the edge's taps (exits after inner blocks of a
multi-exit model), and `ddnn compare placement`, single-exit models against one multi-exit model."""

from __future__ import annotations

import pytest
import torch

from ddnn.core.config import load_config
from ddnn.core.errors import ConfigError, DDNNError
from ddnn.nn.model import build_model
from ddnn.nn.studies.placement import placement_candidates, split_config
from ddnn.nn.train import training_stages
from tests.helpers import ddnn, ddnn_json

MEM = [
    "model.local=null",
    "model.edge.groups=[[0,1,2,3,4,5]]",
    "model.edge.conv_filters=[8,8,8]",
    "model.edge.taps=[1,2]",
    "model.cloud.conv_filters=[8]",
]


def test_a_tap_is_an_exit_head_on_its_blocks_feature_map_and_trains_jointly():
    cfg = load_config(None, MEM)
    assert cfg.model.exits == ["edge", "cloud"]
    assert cfg.model.tap_exits == ["edge@1", "edge@2"]
    weights = training_stages(cfg)[0].weights
    assert weights == {"edge": 1.0, "cloud": 1.0, "edge@1": 1.0, "edge@2": 1.0}
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(5, 6, 3, 32, 32)
    present = torch.ones(5, 6, dtype=torch.bool)
    present[0, :3] = False
    with torch.no_grad():
        out = model(x, present)
        edge = model.edges[0]
        h = edge.aggregate(out.device_features, present)
        for block in (1, 2):
            h = edge.blocks[block - 1](h)
            assert torch.equal(out.logits[f"edge@{block}"], edge.taps[str(block)](h))
    assert set(out.logits) == {"edge@1", "edge@2", "edge", "cloud"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.edge.taps=[3]"], "from 1 to 2"),
        (["model.edge.taps=[2,1]"], "increasing block numbers"),
        (["model.edge.groups=[[0,1,2],[3,4,5]]"], "needs one edge"),
        (["train.strategy=separate"], "must be joint"),
    ],
)
def test_bad_taps_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*MEM, *overrides])


def test_placement_splits_one_path_between_edge_and_cloud():
    cfg = load_config()
    sems = placement_candidates(cfg, [8, 16, 32, 32], [1, 3], 0.3)
    assert [c.label["model"] for c in sems] == ["SEM-1", "SEM-3", "MEM"]
    one, three, mem = (c.config.model for c in sems)
    assert (one.edge.conv_filters, one.cloud.conv_filters) == ([8], [16, 32, 32])
    assert (three.edge.conv_filters, three.cloud.conv_filters) == ([8, 16, 32], [32])
    assert (mem.edge.conv_filters, mem.edge.taps, mem.cloud.conv_filters) == (
        [8, 16, 32],
        [1],
        [32],
    )
    assert one.local is None and one.edge.groups == [[0, 1, 2, 3, 4, 5]]
    assert sems[0].config.exits["edge"].threshold == 0.3
    assert split_config(cfg, [8, 16], 1, 0.5).model.cloud.conv_filters == [16]
    for path, positions, message in (
        ([8], [1], "at least two blocks"),
        ([8, 8], [2], "leaves no block for the cloud"),
        ([8, 8, 8], [2, 1], "increasing block numbers"),
    ):
        with pytest.raises(DDNNError, match=message):
            placement_candidates(cfg, path, positions, 0.3)
    with pytest.raises(DDNNError, match="between 0 and 1"):
        placement_candidates(cfg, [8, 8], [1], 1.5)


def test_compare_placement_reports_seed_001s_measures_for_every_model(mvmc_file):
    document = ddnn_json(
        "compare", "placement", "--data", f"mvmc:{mvmc_file}", "--epochs", "2",
        "--path", "8,8,8", "--positions", "1,2", "--threshold", "0.6",
    )  # fmt: skip
    rows = document["rows"]
    assert [r["model"] for r in rows] == ["SEM-1", "SEM-2", "MEM@1", "MEM@2"]
    assert [r["exit_block"] for r in rows] == [1, 2, 1, 2]
    for row in rows:
        share = row["edge_exit"] / 100
        edge, cloud = row["edge_accuracy"] or 0.0, row["cloud_accuracy"] or 0.0
        # the overall accuracy is the edge's and the cloud's, weighed by who decided
        assert row["accuracy"] == pytest.approx(share * edge + (1 - share) * cloud, abs=0.02)
        assert row["energy_uj"] > 0
    assert "SEM" in document["paper"]["finding"]
    bad = ddnn("compare", "placement", "--path", "8,x", check=False)
    assert bad.returncode != 0 and "--path takes comma-separated whole numbers" in bad.stderr
    assert "Traceback" not in bad.stderr
