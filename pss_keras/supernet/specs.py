"""The search space: subnet configs and the ranges of one supernet.

A subnet of a PSS supernet is an input resolution plus one width multiplier
per stage (see ``shared/docs/pss_method.md``). This module holds the pure
Python description of that space, with no TensorFlow dependency, because it is
used millions of times by the sampler and by the FLOPs counter:

* `SubnetConfig`: one subnet, an immutable and hashable value.
* `SearchSpace`: the ranges of one supernet, which validates, encodes and
  samples configs and gives their channel counts.

The architectures themselves (block tables, channel counts, the layer plan)
are in `pss_keras.supernet.blocks`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterable, Sequence

import numpy as np

from pss_keras.supernet.blocks import ARCH_SPECS, ArchSpec, stage_channels

MODEL_NAMES = ("mobilenet_v1", "mobilenet_v2")

# Multipliers drawn at random are rounded to this many decimals, as in the
# reference implementation, so that random configs have short stable names.
MULT_DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class SubnetConfig:
    """One subnet: an input resolution and one width multiplier per stage.

    A config is valid for any positive resolution and multipliers (FLOPs are
    defined for any); whether it belongs to one supernet's search space is
    checked by `SearchSpace.validate`.

    Attributes:
        model_name: ``"mobilenet_v1"`` (14 stage multipliers) or
            ``"mobilenet_v2"`` (9 stage multipliers).
        resolution: input resolution in pixels (square images).
        stage_width_mults: one multiplier per stage, applied to the stage's
            base channel count.
    """

    model_name: str
    resolution: int
    stage_width_mults: tuple[float, ...]

    def __post_init__(self):
        if self.model_name not in MODEL_NAMES:
            raise ValueError(
                f"model_name={self.model_name!r} is not supported; use one of {MODEL_NAMES}."
            )
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, (int, np.integer)):
            raise ValueError(
                f"resolution must be an int, got {self.resolution!r} "
                f"({type(self.resolution).__name__})."
            )
        if self.resolution <= 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}.")
        mults = tuple(float(m) for m in self.stage_width_mults)
        for i, m in enumerate(mults):
            if not (m > 0 and math.isfinite(m)):
                raise ValueError(f"stage_width_mults[{i}]={m!r} must be a positive finite number.")
        expected = ARCH_SPECS[self.model_name].num_stages
        if len(mults) != expected:
            raise ValueError(
                f"stage_width_mults has {len(mults)} values but {self.model_name} "
                f"has {expected} stages."
            )
        object.__setattr__(self, "resolution", int(self.resolution))
        object.__setattr__(self, "stage_width_mults", mults)

    @property
    def name(self) -> str:
        """A stable, readable string, e.g. ``mobilenet_v1-r224-w1,1,...``."""
        mults = ",".join(f"{m:g}" for m in self.stage_width_mults)
        return f"{self.model_name}-r{self.resolution}-w{mults}"

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "resolution": self.resolution,
            "stage_width_mults": list(self.stage_width_mults),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal configs, equal JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> SubnetConfig:
        missing = {"model_name", "resolution", "stage_width_mults"} - set(data)
        if missing:
            raise ValueError(f"Subnet config is missing field(s) {sorted(missing)}: {data!r}")
        return cls(
            model_name=data["model_name"],
            resolution=data["resolution"],
            stage_width_mults=tuple(data["stage_width_mults"]),
        )

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Subnet config is not valid JSON ({e}): {text!r}") from None
        if not isinstance(data, dict):
            raise ValueError(f"Subnet config JSON must be an object, got {text!r}")
        return cls.from_dict(data)


# --------------------------------------------------------------------------
# The search space of one supernet.


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The ranges of one supernet's subnets.

    Args:
        model_name: ``"mobilenet_v1"`` or ``"mobilenet_v2"``.
        resolution_range: (min, max) input resolution, both on the grid.
        resolution_step: grid step of the resolution.
        width_range: (min, max) stage width multiplier.
        width_scale: global width scale of the supernet (1.0 is MobileNet;
            e.g. 0.25 for tiny test models). Channels are
            ``make_divisible(base * width_scale * mult)``.
        num_classes: classifier outputs (used by FLOPs and parameter counts).
    """

    model_name: str = "mobilenet_v1"
    resolution_range: tuple[int, int] = (128, 224)
    resolution_step: int = 8
    width_range: tuple[float, float] = (0.75, 1.0)
    width_scale: float = 1.0
    num_classes: int = 1000

    def __post_init__(self):
        if self.model_name not in MODEL_NAMES:
            raise ValueError(
                f"model_name={self.model_name!r} is not supported; use one of {MODEL_NAMES}."
            )
        r_min, r_max = (int(r) for r in self.resolution_range)
        if not 0 < r_min <= r_max:
            raise ValueError(
                f"resolution_range={self.resolution_range} must be (min, max) with 0 < min <= max."
            )
        if self.resolution_step <= 0 or (r_max - r_min) % self.resolution_step:
            raise ValueError(
                f"resolution_step={self.resolution_step} must be positive and divide "
                f"max - min of resolution_range={self.resolution_range}."
            )
        w_min, w_max = (float(w) for w in self.width_range)
        if not 0 < w_min <= w_max:
            raise ValueError(
                f"width_range={self.width_range} must be (min, max) with 0 < min <= max."
            )
        if not self.width_scale > 0:
            raise ValueError(f"width_scale={self.width_scale} must be positive.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be at least 1.")
        object.__setattr__(self, "resolution_range", (r_min, r_max))
        object.__setattr__(self, "width_range", (w_min, w_max))

    @property
    def arch(self) -> ArchSpec:
        return ARCH_SPECS[self.model_name]

    @property
    def num_stages(self) -> int:
        return self.arch.num_stages

    @property
    def resolutions(self) -> tuple[int, ...]:
        r_min, r_max = self.resolution_range
        return tuple(range(r_min, r_max + 1, self.resolution_step))

    def largest(self) -> SubnetConfig:
        """The largest subnet: max resolution, every multiplier at max."""
        return SubnetConfig(
            self.model_name, self.resolution_range[1], (self.width_range[1],) * self.num_stages
        )

    def smallest(self) -> SubnetConfig:
        """The smallest subnet: min resolution, every multiplier at min."""
        return SubnetConfig(
            self.model_name, self.resolution_range[0], (self.width_range[0],) * self.num_stages
        )

    def random(self, rng: random.Random | None = None) -> SubnetConfig:
        """A uniformly random subnet (resolution on the grid, 3-decimal widths)."""
        rng = rng or random
        resolution = rng.choice(self.resolutions)
        w_min, w_max = self.width_range
        mults = tuple(
            min(w_max, max(w_min, round(rng.uniform(w_min, w_max), MULT_DECIMALS)))
            for _ in range(self.num_stages)
        )
        return SubnetConfig(self.model_name, resolution, mults)

    def random_arrays(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` uniformly random subnets as arrays (resolutions [n], mults [n, S])."""
        resolutions = rng.choice(np.asarray(self.resolutions), size=n)
        w_min, w_max = self.width_range
        mults = np.round(rng.uniform(w_min, w_max, size=(n, self.num_stages)), MULT_DECIMALS)
        return resolutions.astype(np.int64), np.clip(mults, w_min, w_max)

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """Checks that ``config`` belongs to this space.

        Raises:
            ValueError: naming the offending field (model_name,
                stage_width_mults length or value, or resolution).
        """
        if not isinstance(config, SubnetConfig):
            raise ValueError(f"Expected a SubnetConfig, got {type(config).__name__}: {config!r}")
        if config.model_name != self.model_name:
            raise ValueError(
                f"model_name={config.model_name!r} does not match this {self.model_name} supernet."
            )
        if len(config.stage_width_mults) != self.num_stages:
            raise ValueError(
                f"stage_width_mults has {len(config.stage_width_mults)} values; "
                f"{self.model_name} needs {self.num_stages}."
            )
        w_min, w_max = self.width_range
        for i, m in enumerate(config.stage_width_mults):
            if not w_min - 1e-9 <= m <= w_max + 1e-9:
                raise ValueError(
                    f"stage_width_mults[{i}]={m:g} is outside the width range "
                    f"[{w_min:g}, {w_max:g}] of this supernet."
                )
        r_min, r_max = self.resolution_range
        if not r_min <= config.resolution <= r_max or (
            (config.resolution - r_min) % self.resolution_step
        ):
            raise ValueError(
                f"resolution={config.resolution} is not on this supernet's grid "
                f"{r_min}..{r_max} step {self.resolution_step}."
            )
        return config

    def stage_channels(self, config: SubnetConfig) -> tuple[int, ...]:
        """Channel count of every stage of ``config`` (no validation)."""
        return stage_channels(config, self.width_scale)

    def encode(self, config: SubnetConfig) -> np.ndarray:
        """The int32 code the supernet runs: ``[resolution, *stage_channels]``.

        Validates the config first (ValueError on a config of another space).
        """
        self.validate(config)
        return np.asarray((config.resolution,) + self.stage_channels(config), dtype=np.int32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        data = dict(data)
        for key in ("resolution_range", "width_range"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def configs_to_arrays(configs: Iterable[SubnetConfig]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks configs (of one model) into (resolutions [n], mults [n, S])."""
    configs = list(configs)
    resolutions = np.asarray([c.resolution for c in configs], dtype=np.int64)
    mults = np.asarray([c.stage_width_mults for c in configs], dtype=np.float64)
    return resolutions, mults


def arrays_to_configs(model_name: str, resolutions: Sequence[int], mults: np.ndarray) -> list:
    """The inverse of `configs_to_arrays`."""
    return [
        SubnetConfig(model_name, int(r), tuple(float(m) for m in row))
        for r, row in zip(resolutions, np.asarray(mults))
    ]


def parse_subnet(text: str, space: SearchSpace, seed: int | None = None) -> SubnetConfig:
    """A subnet of ``space`` from a user's string.

    Accepts ``max`` / ``largest``, ``min`` / ``smallest``, ``random``, a JSON
    object (``{"resolution": 192, "stage_width_mults": [...]}``; the model
    name defaults to the space's), or ``RES:m1,m2,...`` (e.g.
    ``192:0.75,1,...``; one multiplier is used for every stage, e.g.
    ``160:0.8``). The result is validated against the space.

    Raises:
        ValueError: naming what is wrong and the accepted forms.
    """
    text = text.strip()
    key = text.lower()
    if key in ("max", "largest"):
        return space.largest()
    if key in ("min", "smallest"):
        return space.smallest()
    if key == "random":
        return space.random(random.Random(seed))
    forms = "use max, min, random, RES:m1,...,mN or a JSON object"
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Subnet {text!r} is not valid JSON ({e}); {forms}.") from None
        data.setdefault("model_name", space.model_name)
        config = SubnetConfig.from_dict(data)
    elif ":" in text:
        res, _, mults = text.partition(":")
        try:
            values = tuple(float(m) for m in mults.split(","))
            if len(values) == 1:
                values = values * space.num_stages
            config = SubnetConfig(space.model_name, int(res), values)
        except ValueError as e:
            raise ValueError(f"Subnet {text!r} could not be read: {e} ({forms}).") from None
    else:
        raise ValueError(f"Subnet {text!r} is not understood; {forms}.")
    return space.validate(config)
