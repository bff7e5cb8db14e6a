"""Training: joint over all exits (paper Section III-C) or by stages, then routers, thresholds.

The strategy is `train.strategy` (joint, or by stages: separate, layerwise; `training_stages`);
the learned routers train after it, thresholds are picked on validation data
(`fit_and_calibrate`), and the "Individual" baseline trains here too. The joint loss is the
weighted sum of the softmax cross-entropy at every exit, optimized with Adam using the
paper's hyper-parameters on a cosine schedule. Device dropout (`device_dropout`,
`one_missing_share`, `presence`) trains the model to decide with whatever devices answered,
through the same presence mask as evaluation and the live aggregators; `or_balance` keeps
each channel of an OR of binary maps near half +1 (`or_imbalance`).

Design: docs/design/training.md; the OR's loss: docs/design/or-balance.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ddnn.core.config import (
    DDNNConfig,
    ModelConfig,
    TrainConfig,
    validate_config,
    with_exit_settings,
)
from ddnn.core.errors import ConfigError
from ddnn.data import MultiViewData, Splits, check_trainable
from ddnn.nn.calibration import calibrated
from ddnn.nn.evaluate import (
    ExitOutputs,
    accuracy_percent,
    model_exit_points,
    presence_mask,
    run_model,
)
from ddnn.nn.layers import clip_quantized_weights
from ddnn.nn.model import DDNN, build_model
from ddnn.nn.router import fit_router, router_exits, training_rows

EpochCallback = Callable[[int, dict[str, float]], None]


def random_presence(
    batch: int, n_devices: int, dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """(batch, n_devices) bool: each device present with probability 1 - dropout, and at least
    one device present per sample (a sample nobody saw cannot be trained on)."""
    present = torch.rand(batch, n_devices, generator=generator) >= dropout
    nobody = ~present.any(dim=1)
    if nobody.any():
        keep = torch.randint(n_devices, (int(nobody.sum()),), generator=generator)
        present[nobody.nonzero().squeeze(1), keep] = True
    return present


def single_missing(batch: int, n_devices: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, n_devices) bool: exactly one device, drawn uniformly, missing from each sample
    (every device present when there is only one)."""
    present = torch.ones(batch, n_devices, dtype=torch.bool)
    if n_devices > 1:
        present[torch.arange(batch), torch.randint(n_devices, (batch,), generator=generator)] = (
            False
        )
    return present


def dropout_presence(
    batch: int, n_devices: int, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """(batch, n_devices) bool: `cfg.one_missing_share` of the samples with exactly one device
    missing, the others with each device absent at rate `cfg.device_dropout` (every device
    present when that rate is 0). Dropout alone rarely leaves all devices but one (9 % of
    the samples with six devices at 0.5), the case a dead camera makes, and the cloud learns
    to lean on its best camera. Drawn within the one pass: no extra pass over the tiers."""
    present = random_presence(batch, n_devices, cfg.device_dropout, generator)
    if cfg.device_dropout == 0 or cfg.one_missing_share == 0:
        return present
    one = torch.rand(batch, generator=generator) < cfg.one_missing_share
    present[one] = single_missing(int(one.sum()), n_devices, generator)
    return present


def training_presence(
    kind: str, batch: int, n_devices: int, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """The presence mask of one training pass (`TrainConfig.presence`)."""
    if kind == "dropout":
        return dropout_presence(batch, n_devices, cfg, generator)
    if kind == "single":
        return single_missing(batch, n_devices, generator)
    return torch.ones(batch, n_devices, dtype=torch.bool)


@dataclass(frozen=True)
class Stage:
    """One phase of training: the exits whose losses count, with their weights, and the
    parameters it may change, by state-dict prefix (None: all of them)."""

    name: str
    weights: dict[str, float]
    trainable: tuple[str, ...] | None = None
    frozen: tuple[str, ...] = ()  # `train.freeze`'s, whatever the stage

    def trains(self, parameter: str) -> bool:
        mine = self.trainable is None or parameter.startswith(self.trainable)
        return mine and not parameter.startswith(self.frozen)


# `train.freeze`'s tiers, by state-dict prefix: a device's slice and its local-exit head (the
# device artifact), an edge's layers and its exit head
FROZEN = {"devices": ("device_slices.",), "edges": ("edges.",)}


def _exit_branches(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Each early exit's own parameters: the heads that score its inputs, and its fusion."""
    out = {}
    if cfg.local is not None:
        out["local"] = (*(f"device_slices.{i}.head." for i in range(cfg.n_devices)), "local.")
    if cfg.edge is not None:
        out["edge"] = (*(f"edges.{e}.head." for e in range(len(cfg.edge.groups))), "edge_exit.")
    return out


def _tiers(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Each exit, lowest first -> the parameters that it is the first exit to depend on."""
    own = {
        "local": ("device_slices.", "local."),
        "edge": ("edges.", "edge_exit."),
        "cloud": ("cloud.",),
    }
    out, unclaimed = {}, ("device_slices.",)  # without a local exit, the next one claims them
    for name in cfg.exits:
        out[name] = tuple(dict.fromkeys((*unclaimed, *own[name])))
        unclaimed = ()
    return out


def training_stages(cfg: DDNNConfig) -> list[Stage]:
    """The stages of `cfg.train.strategy` (`strategy_stages`), each kept off the tiers of
    `cfg.train.freeze`."""
    if "edges" in cfg.train.freeze and cfg.model.edge is None:
        raise ConfigError("train.freeze names edges, but the model has no edge tier")
    frozen = tuple(p for tier in cfg.train.freeze for p in FROZEN[tier])
    if not frozen:
        return strategy_stages(cfg)
    stages = [replace(stage, frozen=frozen) for stage in strategy_stages(cfg)]
    with torch.random.fork_rng(devices=[]):  # a model built aside, the seeded RNG untouched
        names = [name for name, _ in build_model(cfg).named_parameters()]
    # a stage left with nothing to train (layerwise: the devices' tier) is dropped
    return [stage for stage in stages if any(map(stage.trains, names))]


def strategy_stages(cfg: DDNNConfig) -> list[Stage]:
    """The stages of `cfg.train.strategy` (the hybrid-precision paper Section II-C; the early-exit
    survey's survey):

    - joint: every exit's loss at once, weighted by `train.exit_weights` (the DDNN paper);
    - separate: the main path alone (the last exit's loss), then, with it frozen, the early
      exits' own heads and fusions (the hybrid-precision paper: "train one early exit at a time";
      with the main path frozen their losses are independent, so one stage trains them all);
    - layerwise: tier by tier, lowest first: each exit's loss trains the parameters it is
      the first to depend on, with the tiers below frozen.

    Each stage runs `train.epochs` epochs.
    """
    exits, strategy = cfg.model.exits, cfg.train.strategy
    if strategy == "joint":
        # the taps of the exit-placement paper's multi-exit model too
        weighed = [*exits, *cfg.model.tap_exits]
        return [Stage("joint", {n: cfg.train.exit_weights.get(n, 1.0) for n in weighed})]
    if strategy == "separate":
        stages = [Stage("main path", {exits[-1]: 1.0})]
        branches = _exit_branches(cfg.model)
        early = [n for n in exits[:-1] if n in branches]
        if early:
            heads = tuple(p for n in early for p in branches[n])
            stages.append(Stage("early exits", dict.fromkeys(early, 1.0), heads))
        return stages
    return [Stage(f"{n} tier", {n: 1.0}, prefixes) for n, prefixes in _tiers(cfg.model).items()]


def _freeze(model: DDNN, stage: Stage) -> list[torch.nn.Parameter]:
    """Let `stage` change only its parameters; batch norms it may not train keep their
    running statistics too. Returns the parameters it trains."""
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(stage.trains(name))
        if stage.trains(name):
            trained.append(parameter)
    model.train()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not stage.trains(
            f"{name}."
        ):
            module.eval()
    return trained


def train_model(
    model: DDNN,
    data: MultiViewData,
    cfg: DDNNConfig,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place on `data` by the stages of `cfg.train.strategy`; returns per
    epoch (of every stage in turn) the loss and the training accuracy of every exit."""
    train = cfg.train
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.labels)
    history = []
    for stage in training_stages(cfg):
        params = _freeze(model, stage)
        opt = torch.optim.Adam(params, lr=train.lr, betas=train.betas, eps=train.eps)
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=train.epochs)
            if train.lr_schedule == "cosine"
            else None
        )
        for _ in range(train.epochs):
            stats = _epoch(model, stage, x, y, train, opt, gen)
            if schedule is not None:
                schedule.step()
            history.append(stats)
            if on_epoch is not None:
                on_epoch(len(history) - 1, stats)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    return history


def _epoch(
    model: DDNN,
    stage: Stage,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
) -> dict[str, float]:
    """One pass over the training data in random batches; the loss is the stage's."""
    order = torch.randperm(len(y), generator=gen)
    total, seen = 0.0, 0
    correct = dict.fromkeys(model.exits, 0)
    for start in range(0, len(y), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        if len(idx) < 2:  # batch norm needs two samples to estimate a variance
            continue
        xb, yb = x[idx], y[idx]
        scores, features = model.devices(xb)
        passes = []
        for kind in cfg.presence:
            present = training_presence(kind, len(idx), model.cfg.n_devices, cfg, gen)
            passes.append(model.above_devices(scores, features, present))
        loss = sum(
            sum(w * F.cross_entropy(out.logits[n], yb) for n, w in stage.weights.items())
            + cfg.or_balance * sum(or_imbalance(m) for m in out.or_maps)
            for out in passes
        ) / len(passes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clip_quantized_weights(model)
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        for name in correct:
            correct[name] += int((passes[0].logits[name].argmax(1) == yb).sum())
    stats = {"loss": total / max(seen, 1)}
    stats.update({f"train_acc_{n}": 100.0 * c / max(seen, 1) for n, c in correct.items()})
    return stats


def or_imbalance(fused: torch.Tensor) -> torch.Tensor:
    """How far each channel of an OR'd binary map (B, f, h, w) is from half +1: the mean
    squared gap of each channel's +1 share. Its gradient reaches, through the max and the
    sign's straight-through estimator, the device that set each bit."""
    share = (fused + 1).mean(dim=(0, 2, 3)) / 2
    return ((share - 0.5) ** 2).mean()


def adapt_config(cfg: DDNNConfig, data: MultiViewData) -> DDNNConfig:
    """Take the input shape, number of devices and classes from the data, so that one
    config serves MVMC, the synthetic set and tiled images."""
    tree = cfg.model_dump()
    tree["model"].update(data.model_settings())
    return validate_config(tree, source=f"config for {data.name}")


@dataclass
class TrainResult:
    model: DDNN
    config: DDNNConfig
    history: list[dict[str, float]]
    seconds: float


def fit(
    train: MultiViewData,
    cfg: DDNNConfig,
    on_epoch: EpochCallback | None = None,
    init: DDNN | None = None,
) -> TrainResult:
    """Build the model for the data's shape (or go on from `init`, changed in place), train
    it on `train`, then fit the router of each exit whose policy is "router" on the trained
    model's outputs."""
    check_trainable(train)
    cfg = adapt_config(cfg, train)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg) if init is None else init
    start = time.perf_counter()
    history = train_model(model, train, cfg, on_epoch)
    train_routers(model, cfg, train)
    return TrainResult(model, cfg, history, time.perf_counter() - start)


def router_passes(model: DDNN, cfg: DDNNConfig, data: MultiViewData) -> list[ExitOutputs]:
    """The model's outputs on `data` that a router learns from: every device present, then
    `cfg.router.masks` passes with devices absent at the training dropout rate."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    n, d = len(data), model.cfg.n_devices
    masks = [presence_mask(n, d)] + [
        random_presence(n, d, cfg.train.device_dropout, gen).numpy()
        for _ in range(cfg.router.masks)
    ]
    return [run_model(model, data, m) for m in masks]


def train_routers(model: DDNN, cfg: DDNNConfig, data: MultiViewData) -> None:
    """Fit the router of each routed exit of `model` (in place) on its outputs over `data`
    (ddnn/nn/router.py); nothing to do where no exit uses one."""
    if not cfg.routed_exits:
        return
    passes = router_passes(model, cfg, data)
    for name, after in router_exits(cfg).items():
        features, oracle = training_rows(
            [(out.inputs[name], out.probs[after]) for out in passes], data.labels
        )
        fit_router(model.routers[name], features, oracle, cfg.router, seed=cfg.train.seed)


def fit_and_calibrate(
    parts: Splits,
    cfg: DDNNConfig,
    on_epoch: EpochCallback | None = None,
    init: DDNN | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """`fit` on the training part, then the thresholds picked on the validation part by
    `cfg.calibration` (none without one): what `ddnn train` does. The result's config
    carries the thresholds."""
    result = fit(parts.train, cfg, on_epoch, init)
    if parts.validation is None:
        return result, {}
    outputs = run_model(result.model, parts.validation)
    points = model_exit_points(result.model, result.config)
    picked = calibrated(outputs, points, result.config.calibration)
    result.config = with_exit_settings(result.config, picked, {}, "calibration")
    return result, picked


def individual_config(cfg: DDNNConfig) -> DDNNConfig:
    """The paper's "Individual" model: one device's slice and its exit, trained alone."""
    model = cfg.model.model_copy(update={"n_devices": 1, "edge": None, "cloud": None})
    if model.local is None:
        model = model.model_copy(update={"local": ModelConfig().local})
    train = cfg.train.model_copy(update={"device_dropout": 0.0, "exit_weights": {}})
    return DDNNConfig(model=model, train=train)


def view(data: MultiViewData, device: int) -> MultiViewData:
    """One device's views of `data`, as a one-view data set (labels stay the sample's)."""
    return MultiViewData(
        data.x[:, device : device + 1],
        data.view_labels[:, device : device + 1],
        data.labels,
        data.classes,
        f"{data.name}[device {device}]",
    )


def individual_accuracy(
    parts: Splits, device: int, cfg: DDNNConfig, on_epoch: EpochCallback | None = None
) -> float:
    """Train `device`'s slice alone on its views of the training part (labels are the
    sample's, also where the camera sees nothing) and return its test accuracy in %."""
    result = fit(view(parts.train, device), individual_config(cfg), on_epoch)
    probs = run_model(result.model, view(parts.test, device)).probs["local"]
    return accuracy_percent(probs.argmax(1), parts.test.labels)
