"""Configuration: one pydantic model describes a DDNN's topology, training and exits.

It loads from YAML or JSON (`load_config`) and takes dotted CLI overrides
(`train.epochs=50`). Everything is validated on load, so a bad file fails with a message that
names the field instead of a traceback deep inside training.

The default is configuration (c) of the paper's Fig. 2 as evaluated in Section IV: six
devices each with one binary ConvP block of 4 filters and an FC exit head, a local aggregator
using max pooling (MP), no edge, and a cloud that concatenates (CC) the devices' feature
maps and runs two more binary ConvP blocks. Other configurations of Fig. 2:
(a) cloud only: `device.conv_filters=[]` and `local=None` (raw input goes to the cloud);
(b) one device: `n_devices=1`; (d)/(e) one edge: `edge.groups=[[0, ..., n-1]]`;
(f) several edges: several groups. `cloud=None` leaves the highest remaining exit last; the
paper's "Individual" baseline is `n_devices=1, cloud=None`: one device slice and its exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ddnn.core.errors import ConfigError, problems

# Literals here rather than in the layers, so that reading a config needs no PyTorch (a device
# running the bit-packed slice reads its manifest's config without it). binary: +-1 weights and
# activations (the DDNN paper); 2bit, 4bit: k-bit weights (scaled) and activations (the
# hybrid-precision paper's hybrid networks); float: float32 weights, ReLU activations.
Precision = Literal["binary", "2bit", "4bit", "float"]
Aggregation = Literal["MP", "AP", "CC"]
# How a feature map travels (ddnn.core.payloads): bits, k-bit codes, uint8 pixels or float32.
FeatureFormat = Literal["binary", "2bit", "4bit", "pixels", "float"]
EXIT_ORDER = ("local", "edge", "cloud")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSpec(_Strict):
    """The slice that runs on every end device (each device has its own weights)."""

    conv_filters: list[int] = Field(default=[4], description="filters of each ConvP block")
    precision: Precision = "binary"


class LocalSpec(_Strict):
    """The local aggregator: fuses the devices' class scores, then the local exit."""

    aggregation: Aggregation = "MP"
    robust: bool = Field(
        default=False,
        description="trimmed fusion: per class, the highest and lowest of 3+ devices are left "
        "out, so that one lying device cannot force the exit (ddnn/core/fusion.py)",
    )


class EdgeSpec(_Strict):
    """An edge tier: each group of devices has an edge that fuses the group's feature maps,
    runs more ConvP blocks and an exit head; the edge exit fuses the edges' scores."""

    groups: list[list[int]] = Field(min_length=1)
    aggregation: Aggregation = "CC"
    exit_aggregation: Aggregation = "MP"
    conv_filters: list[int] = Field(default=[16], min_length=1)
    precision: Precision = "binary"
    taps: list[int] = Field(
        default=[],
        description="the exit-placement paper's multi-exit model: more exit heads, after these "
        "blocks of the "
        "edge (1-based, before its last), trained jointly as exits edge@<block>; `ddnn compare "
        "placement` activates one at a time. The live edge decides on its last block's head",
    )

    @model_validator(mode="after")
    def _check_taps(self) -> EdgeSpec:
        if not self.taps:
            return self
        if len(self.groups) != 1:
            raise ValueError("edge.taps needs one edge (a tap's scores are that edge's own)")
        last = len(self.conv_filters)
        if sorted(set(self.taps)) != self.taps or not all(1 <= t < last for t in self.taps):
            raise ValueError(
                f"edge.taps must be increasing block numbers from 1 to {last - 1} (the edge's "
                f"last block has its own head), got {self.taps}"
            )
        return self


def tap_exit(block: int) -> str:
    """The name of the tap after edge block `block` (1-based), as exits are named."""
    return f"edge@{block}"


class CloudSpec(_Strict):
    """The cloud: fuses the feature maps of the tier below, more blocks, the final exit."""

    aggregation: Aggregation = "CC"
    # 64 filters, not 32: with a device missing, the wider cloud makes better use of the
    # others (measured: README, "Results").
    conv_filters: list[int] = Field(default=[64, 64])
    fc_hidden: list[int] = Field(default=[], description="hidden FC blocks before the head")
    precision: Precision = "binary"


def _is_or(aggregation: str, precision: Precision) -> bool:
    """Whether fusing maps of `precision` by `aggregation` is an OR: the max of +-1 maps."""
    return aggregation == "MP" and precision == "binary"


class ModelConfig(_Strict):
    classes: list[str] = Field(default=["car", "bus", "person"], min_length=2)
    n_devices: int = Field(default=6, ge=1)
    input_shape: tuple[int, int, int] = (3, 32, 32)
    device: DeviceSpec = DeviceSpec()
    local: LocalSpec | None = LocalSpec()
    edge: EdgeSpec | None = None
    cloud: CloudSpec | None = CloudSpec()

    @model_validator(mode="after")
    def _check_topology(self) -> ModelConfig:
        if self.local is None and self.edge is None and self.cloud is None:
            raise ValueError("a topology needs at least one exit (local, edge or cloud)")
        if self.local is not None and not self.device.conv_filters:
            raise ValueError("a local exit needs a device ConvP block (device.conv_filters)")
        if self.edge is not None:
            seen = sorted(d for group in self.edge.groups for d in group)
            if seen != list(range(self.n_devices)):
                raise ValueError(
                    f"edge.groups must cover devices 0..{self.n_devices - 1} exactly once, got "
                    f"{self.edge.groups}"
                )
        return self

    @property
    def device_feature_format(self) -> FeatureFormat:
        """How a device's feature map is encoded on the wire (see ddnn.core.payloads)."""
        if not self.device.conv_filters:
            return "pixels"
        return _format_of(self.device.precision)

    @property
    def edge_feature_format(self) -> FeatureFormat:
        """How an edge's feature map is encoded on the wire, on its way to the cloud."""
        return "binary" if self.edge is None else _format_of(self.edge.precision)

    @property
    def exits(self) -> list[str]:
        """The exit points of this topology, lowest tier first; the last always decides."""
        present = {
            "local": self.local is not None,
            "edge": self.edge is not None,
            "cloud": self.cloud is not None,
        }
        return [name for name in EXIT_ORDER if present[name]]

    @property
    def edge_is_or(self) -> bool:
        """Whether the edges fuse their devices' maps by an OR (the max of +-1 maps)."""
        return self.edge is not None and _is_or(self.edge.aggregation, self.device.precision)

    @property
    def cloud_is_or(self) -> bool:
        """Whether the cloud fuses the maps of the tier below by an OR."""
        below = self.device if self.edge is None else self.edge
        return self.cloud is not None and _is_or(self.cloud.aggregation, below.precision)

    @property
    def has_or(self) -> bool:
        """Whether any tier fuses by an OR: what `train.or_balance` acts on
        (docs/design/or-balance.md); without one, the setting changes nothing."""
        return self.edge_is_or or self.cloud_is_or

    @property
    def tap_exits(self) -> list[str]:
        """The edge's taps (`EdgeSpec.taps`): exits that train and can be evaluated, but
        that no deployment decides at."""
        return [] if self.edge is None else [tap_exit(b) for b in self.edge.taps]


class TrainConfig(_Strict):
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    # Adam with the paper's hyper-parameters (Section IV-A).
    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Cosine decay (the paper gives only Adam's constants): with a constant rate a binary
    # net's last epoch lands anywhere in its noise (README, "Results").
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="cosine: the learning rate decays to 0 over the epochs"
    )
    strategy: Literal["joint", "separate", "layerwise"] = Field(
        default="joint",
        description="joint: every exit's loss at once (the paper); separate: the main path, "
        "then the early exits on it frozen; layerwise: tier by tier (ddnn/nn/train.py)",
    )
    exit_weights: dict[str, float] = Field(
        default={}, description="loss weight per exit name; missing exits weigh 1 (equal)"
    )
    # On by default: with it, losing any one device costs a few points instead of many
    # (pooling over present devices alone does not teach the cloud's CC layers to cope).
    # 0.5 rather than 0.3: the cloud learns to lean on no single device (README, "Results").
    device_dropout: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="probability that a device is absent from a sample (0: every device "
        "present in every training sample)",
    )
    # Half: with a device missing, the cloud then loses less to its best camera (measured:
    # README, "Results").
    one_missing_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="share of the training samples that lose exactly one device instead of "
        "each device at rate device_dropout (the case `eval --each-missing` measures); none "
        "at device_dropout 0",
    )
    presence: list[Literal["dropout", "full", "single"]] = Field(
        default=["dropout"],
        min_length=1,
        description="the presence masks each batch is trained under, one pass each (losses "
        "averaged): dropout (device_dropout), full (every device), single (one device missing)",
    )
    # Without it the OR of six +-1 maps is +1 almost everywhere, and an MP cloud learns
    # little: docs/design/or-balance.md.
    or_balance: float = Field(
        default=5.0,
        ge=0,
        description="weight of the loss that keeps each channel of a max-pooled binary map "
        "(an edge's or the cloud's MP over +-1 maps: an OR) near half +1 (0: none)",
    )
    freeze: list[Literal["devices", "edges"]] = Field(
        default=[],
        description="tiers whose parameters training leaves as they are (batch norm statistics "
        "included): with `ddnn train --init`, a new model whose device slices are "
        "bit-identical, so that only the upper tiers need rolling out",
    )
    validation_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="part of the training split held out for thresholds"
    )
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="the paper's 80/20 split")
    split_seed: int = Field(default=0, description="seed of the train/validation/test split")
    seed: int = Field(default=0, description="seed of initialization, batches and dropout")


# The exit policy learned from data (the learned-router paper): ddnn/core/routing.py; the others are
# rules on the exit's probabilities (ddnn/core/exits.py).
ROUTER = "router"


def _format_of(precision: Precision) -> FeatureFormat:
    """How a tier of this precision sends its feature map: a float tier's values are not
    quantized (ReLU), every other's travel as its codes."""
    return "float" if precision == "float" else precision


class ExitSpec(_Strict):
    # "criterion" is this field's name in model files written before the router existed.
    policy: Literal["entropy", "max_prob", "margin", "router"] = Field(
        default="entropy",
        validation_alias=AliasChoices("policy", "criterion"),
        description="how the exit decides: a rule on its probabilities, or a learned router",
    )
    threshold: float = 0.8
    drop: float | None = Field(
        default=None,
        description="the exit-placement paper's drop threshold: a sample whose statistic lies "
        "beyond it, on "
        "the side of doubt (entropy above it), is answered 'abstain' here, not escalated",
    )


class RouterSpec(_Strict):
    """How `ddnn train` fits the learned router of each exit whose policy is "router" (the
    learned-router paper): a 2-layer MLP on the exit's outputs (ddnn/core/routing.py), trained on
    the routing oracle o(x) = 1{this exit is wrong and the next tier right} over the training split,
    with the coverage penalty of eq. (7)."""

    hidden: int = Field(default=32, ge=1, description="units of the router's hidden layer")
    coverage: float = Field(
        default=0.7, gt=0, lt=1, description="share of samples the penalty keeps at the exit"
    )
    penalty: float = Field(default=1.0, ge=0, description="lambda_r of eq. (7)")
    epochs: int = Field(default=300, ge=1, description="full-batch Adam steps")
    lr: float = Field(default=1e-2, gt=0)
    masks: int = Field(
        default=3,
        ge=0,
        description="passes over the training split with random devices absent (train."
        "device_dropout), besides the one with all present: the router learns what a "
        "missing device means",
    )


class CalibrationSpec(_Strict):
    """How `ddnn train` picks thresholds on the held-out validation part
    (ddnn/nn/calibration.py says why the default is a share).

    rule "share": `shares` of the samples leave at the exits named there, unless the samples
    are evidence (`confidence` standard errors) that this loses more than `max_loss` points
    against the last exit alone, when "max_loss" decides instead; "max_loss": the lowest
    communication whose accuracy loss, plus `confidence` standard errors of it, is at most
    `max_loss` points; "best": the best overall accuracy.
    """

    rule: Literal["share", "max_loss", "best"] = "share"
    shares: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default={"local": 0.6},
        description="rule share: exit name -> share of all samples leaving there",
    )
    max_loss: float = Field(default=1.0, ge=0)
    confidence: float = Field(default=1.5, ge=0, description="standard errors of margin")


class DDNNConfig(_Strict):
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    exits: dict[str, ExitSpec] = Field(default={}, description="per-exit policy and threshold")
    calibration: CalibrationSpec = CalibrationSpec()
    router: RouterSpec = RouterSpec()

    @model_validator(mode="after")
    def _check_exits(self) -> DDNNConfig:
        unknown = set(self.exits) - set(self.model.exits)
        if unknown:
            raise ValueError(f"exits {sorted(unknown)} are not in this topology {self.model.exits}")
        last = self.model.exits[-1]
        if last in self.exits and self.exits[last].policy == ROUTER:
            raise ValueError(
                f"the last exit ({last}) always decides: it has no next tier to route to"
            )
        for name, spec in self.exits.items():
            if spec.drop is not None and spec.policy == ROUTER:
                raise ValueError(
                    f"exit {name!r}: a drop threshold needs a policy on the exit's own "
                    "confidence (entropy, max_prob, margin); a router's statistic says where "
                    "a sample should go, not whether it is hopeless"
                )
        if last in self.exits and self.exits[last].drop is not None:
            raise ValueError(
                f"the last exit ({last}) always decides: a drop threshold belongs to an exit "
                "that would escalate"
            )
        unknown = set(self.train.exit_weights) - {*self.model.exits, *self.model.tap_exits}
        if unknown:
            raise ValueError(f"train.exit_weights names unknown exits {sorted(unknown)}")
        if self.model.tap_exits and self.train.strategy != "joint":
            raise ValueError(
                "edge.taps train jointly with every exit (the exit-placement paper); "
                "train.strategy must be "
                f"joint, got {self.train.strategy}"
            )
        return self

    @property
    def routed_exits(self) -> list[str]:
        """The exits whose policy is the learned router, lowest tier first."""
        return [n for n in self.model.exits if n in self.exits and self.exits[n].policy == ROUTER]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


class FittedSettingError(ConfigError):
    """A `model` setting given in a config file or override that the data decides otherwise
    (`load_config`'s `fitted`): it would be replaced unseen, so it is refused by name."""


# How an error names what the data gives each setting it decides (`load_config`'s `fitted`).
_FITTED_AS = {
    "n_devices": lambda v: f"{v} views (a device each)",
    "classes": lambda v: f"the classes {', '.join(v)}",
    "input_shape": lambda v: f"views of shape {'x'.join(str(n) for n in v)}",
}


def _check_fitted(tree: dict[str, Any], fitted: dict[str, Any], data: str, source: str) -> None:
    """Refuse each `model` setting of `tree` (a config file's or an override's) that the data
    decides otherwise: `model.n_devices=4` on six-view data once trained six devices without
    a word. A setting that agrees with the data stays allowed; one that is not even a valid
    value is a config error about that value."""
    given = tree.get("model")
    if not isinstance(given, dict):
        return
    try:
        ours = ModelConfig.model_validate(fitted)
    except ValidationError:
        return  # data that fits no model: the whole config's check names the problem
    for key in fitted:
        if key not in given:
            continue
        try:
            theirs = DDNNConfig.model_validate({"model": {**fitted, key: given[key]}})
        except ValidationError as e:
            raise ConfigError(f"invalid {source}: {problems(e)}") from None
        if getattr(theirs.model, key) != getattr(ours, key):
            value = getattr(ours, key)
            described = _FITTED_AS[key](value) if key in _FITTED_AS else f"{key} {value}"
            raise FittedSettingError(
                f"model.{key}={given[key]} but {data} has {described}: the data decides "
                f"model.{key}, so leave it out of the config and --set"
            )


def load_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    fitted: dict[str, Any] | None = None,
    data: str = "the data",
    base: DDNNConfig | None = None,
) -> DDNNConfig:
    """Read a YAML or JSON config file (or the defaults), apply `key.sub=value` overrides.

    Override values are parsed as YAML, so `train.epochs=5`, `model.edge.groups=[[0,1],[2]]`
    and `model.edge=null` all work. `fitted`: the `model` settings the data decides
    (`MultiViewData.model_settings`), applied last, before anything is checked: edge groups
    are then checked against the data's devices (nine on a 3x3 grid), not the default six.
    The file or an override may give one of them only as the data has it (`data` names the
    data in the error, a `FittedSettingError`). `base`: a config to start from instead of
    the defaults (a model's own, to continue its training), in place of a file.
    """
    tree: dict[str, Any] = {} if base is None else base.model_dump(mode="json")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:  # said without the file's name, it named no file
            raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start})") from None
        try:
            loaded = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"config {path} is not valid YAML/JSON: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must hold a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
        _set_dotted(tree, key.strip(), value)
    source = str(path) if path else "config"
    if fitted:
        _check_fitted(tree, fitted, data, source)
    for key, value in (fitted or {}).items():
        _set_dotted(tree, f"model.{key}", value)
    return validate_config(tree, source=source)


def validate_config(tree: dict[str, Any], source: str = "config") -> DDNNConfig:
    try:
        return DDNNConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"invalid {source}: {problems(e)}") from None


def with_exit_settings(
    cfg: DDNNConfig, thresholds: dict[str, float], drops: dict[str, float], source: str
) -> DDNNConfig:
    """A copy of `cfg` with these exits' thresholds and drop thresholds (policies as they
    were), checked as a config file's would be: `source` names what set them in the error,
    for example a drop threshold on an exit decided by a router."""
    exits = {name: spec.model_dump() for name, spec in cfg.exits.items()}
    for name, t in thresholds.items():
        exits.setdefault(name, {})["threshold"] = t
    for name, d in drops.items():
        exits.setdefault(name, {})["drop"] = d
    return validate_config({**cfg.model_dump(), "exits": exits}, source)


def pooled_size(size: int, n_blocks: int) -> int:
    """Spatial size after `n_blocks` ConvP blocks (each pool: k=3, s=2, p=1)."""
    for _ in range(n_blocks):
        size = (size + 2 * 1 - 3) // 2 + 1
    return size
