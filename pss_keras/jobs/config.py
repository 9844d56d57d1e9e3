"""The settings of a PSS run, as frozen dataclasses (no TensorFlow).

`TrainConfig` (with its `DataConfig`) is what `pss_keras.training.driver.train`
runs and what a job directory records in ``run_config.json``; deployment
code reads it back through `pss_keras.jobs.directory` without importing training.
"""

from __future__ import annotations

import dataclasses
import json

from pss_keras.supernet import blocks, specs

SYNTHETIC = "synthetic_shapes"
# tf.distribute strategies a run can use (pss_keras.training.distribution).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# Mixed-precision settings (`keras.mixed_precision` policies "mixed_<name>").
PRECISIONS = ("none", "float16", "bfloat16")
# How the end-of-run selection picks each pool's best subnet (pss_keras.training.selection).
SELECTIONS = ("minival", "val_best_of_topk")
# Metric types with pools: FLOPs (counted) and latencies (look-up tables).
METRIC_TYPES = ("flops", "latency_cpu", "latency_gpu")
# What to do with images that fail to decode (pss_keras.data.pipelines).
BAD_IMAGES = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to load and how.

    Attributes:
        dataset: TFDS name, path of an image folder, or ``synthetic_shapes``.
        data_dir: TFDS data directory (default: TFDS's), and where
            ``synthetic_shapes`` is generated (default ``~/.cache/pss_keras``).
        manual_dir: TFDS manual download directory (imagenet2012's tars).
        image_size: the supernet's maximum resolution (crops are this size).
        batch_size: global batch size.
        eval_batch_size: batch size of evaluation.
        minival_examples: training examples held out for choosing subnets.
        crop_scale: random-resized-crop area range.
        color_jitter: brightness/contrast/saturation strength.
        lighting: PCA lighting noise standard deviation.
        cache: cache decoded examples in memory: ``auto`` (when the split
            has at most ``cache_max_examples`` examples), ``true`` or ``false``.
        seed: data seed (shuffle and augmentation).
        bad_images: images that cannot be decoded (garbage, truncated or
            unreadable files; TFDS records whose image fails to decode):
            ``fail`` stops with one line naming them, ``skip`` drops them
            (the same ones every epoch) and logs their names and count.
        val_fraction: of an image folder with ``train/`` alone, the share of
            every class held out as its validation split (drawn with
            ``seed``; the job saves the split).
    """

    dataset: str = SYNTHETIC
    data_dir: str | None = None
    manual_dir: str | None = None
    image_size: int = 224
    batch_size: int = 256
    eval_batch_size: int = 256
    minival_examples: int = 10000
    crop_scale: tuple[float, float] = (0.25, 1.0)
    color_jitter: float = 0.4
    lighting: float = 0.1
    cache: str = "auto"
    cache_max_examples: int = 50_000
    shuffle_buffer: int = 10_000
    seed: int = 0
    bad_images: str = "fail"
    val_fraction: float = 0.1


# What `TrainConfig.to_dict` records besides the settings.
DERIVED = ("lr_in_use", "warmup_epochs_in_use")
# The linear rule's warm-up when it scales the rate up (Goyal et al.: 5 epochs).
AUTO_WARMUP_EPOCHS = 5.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a PSS run needs; defaults are the paper's MobileNetV1 run.

    The data fields are in ``data`` (a `DataConfig`). ``metric_types``
    are the pools' metrics (the reference's ``infer_metric_types``):
    ``flops`` uses ``flops_targets`` (MFLOPs); each latency type, in order,
    one ``latency_targets`` range (start, stop, step in microseconds) and
    one ``lut_paths`` table (`pss_keras.cost.latency`).

    The learning rate follows the global batch (Goyal et al.'s linear rule):
    ``lr`` is the peak rate for a global batch of ``lr_batch_size``, and the
    rate in use is ``lr * batch_size / lr_batch_size`` (`lr_in_use`);
    ``lr_batch_size=0`` takes ``lr`` as given. ``warmup_epochs=None`` is
    the rule's default warm-up: `AUTO_WARMUP_EPOCHS` (at most half the run)
    when the rule scales the rate up, else none.

    ``padding`` and ``bn_epsilon`` are the architecture's numerics, which
    every stage that builds the job's supernet or a model of it follows
    (`supernet_kwargs`): ``"same"`` and 1e-3 are keras.applications' and
    this project's own runs'; ``"symmetric"`` and 1e-5 the official
    PSS-Net's PyTorch supernets' (set by their importer, never a flag). A
    run_config.json written before they were recorded reads as "same", 1e-3.

    ``init_from`` (``imagenet``, a keras.applications ``.h5`` file or
    another run's job directory; "" for random weights) is applied to a new
    run only (`pss_keras.supernet.pretrained.initialize_supernet`);
    ``checkpoint_every_steps`` adds checkpoints inside epochs (0: at epoch
    ends and on SIGTERM / SIGINT only).

    ``subnet`` trains that one subnet alone (plain cross-entropy, or with
    ``distill_from_largest`` the KL divergence from the ``init_from`` job's
    largest subnet, frozen; the pool, target and selection settings are
    unused) and retains it as one tier named ``subnet_name`` ("": by its
    MFLOPs); None (also an older run_config.json) is a PSS run.
    """

    job_dir: str
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model_name: str = "mobilenet_v1"
    width_scale: float = 1.0
    resolution_range: tuple[int, int] = (128, 224)
    resolution_step: int = 8
    width_range: tuple[float, float] = (0.75, 1.0)
    padding: str = "same"
    bn_epsilon: float = 1e-3
    flops_targets: tuple[float, float, float] = (110.0, 570.0, 10.0)
    metric_types: tuple[str, ...] = ("flops",)
    latency_targets: tuple[tuple[float, float, float], ...] = ()
    lut_paths: tuple[str, ...] = ()
    num_map_samples: int = 100_000
    pool_size: int = 50
    pool_ema: float = 0.9
    p_space: tuple[float, float] = (1.0, 0.01)
    temperature: tuple[float, float] = (1.0, 0.01)
    epochs: int = 250
    lr: float = 0.3
    lr_batch_size: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_epochs: float | None = 0.0
    calib_batches: int = 8
    topk: int = 5
    seed: int = 0
    keep_checkpoints: int = 2
    tensorboard_update_freq: int = 50
    verbose: int = 1
    strategy: str = "auto"
    mixed_precision: str = "none"
    selection: str = "minival"
    # Also retain the space's smallest and largest subnets (selection.retain_subnets).
    retain_bounds: bool = False
    validate_every: int = 0
    init_from: str = ""
    checkpoint_every_steps: int = 0
    subnet: specs.SubnetConfig | None = None
    subnet_name: str = ""
    distill_from_largest: bool = False

    @property
    def lr_in_use(self) -> float:
        """The peak learning rate of the run (`lr` scaled to the global batch)."""
        if not self.lr_batch_size:
            return float(self.lr)
        return float(self.lr) * self.data.batch_size / self.lr_batch_size

    @property
    def warmup_in_use(self) -> float:
        """Linear warm-up epochs of the run (`warmup_epochs`, or the rule's default)."""
        if self.warmup_epochs is not None:
            return float(self.warmup_epochs)
        if self.lr_in_use > self.lr:
            return min(AUTO_WARMUP_EPOCHS, 0.5 * self.epochs)
        return 0.0

    def describe_lr(self) -> str:
        """``0.3 for a batch of 1024 -> 0.009375 at the global batch 32 (linear rule)``."""
        if not self.lr_batch_size:
            return f"{self.lr:g} as given (--lr_batch_size=0: not scaled to the batch)"
        return (
            f"{self.lr:g} for a batch of {self.lr_batch_size:,} -> {self.lr_in_use:.6g} at the "
            f"global batch {self.data.batch_size:,} (linear rule)"
        )

    def validate(self) -> None:
        """Raises ValueError with one clear message for a bad setting."""
        if self.model_name not in specs.MODEL_NAMES:
            raise ValueError(
                f"model {self.model_name!r} is unknown; use one of {specs.MODEL_NAMES}."
            )
        if self.padding not in blocks.PADDINGS:
            raise ValueError(f"padding={self.padding!r} is unknown; use one of {blocks.PADDINGS}.")
        if not (0 < self.bn_epsilon < 1):
            raise ValueError(f"bn_epsilon={self.bn_epsilon} must be in (0, 1).")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is unknown; use one of {STRATEGIES}.")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r} is unknown; use one of {SELECTIONS}.")
        if self.validate_every < 0:
            raise ValueError(f"validate_every={self.validate_every} must be 0 (never) or more.")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r} is unknown; use one of {PRECISIONS}."
            )
        for metric_type, (start, stop, step), _ in self.target_ranges():
            if step <= 0 or stop < start:
                label = "FLOPs" if metric_type == "flops" else metric_type
                raise ValueError(
                    f"{label} target range {start:g}..{stop:g} step {step:g} is empty; "
                    "give start <= stop and a positive step."
                )
        for ok, message in self._range_checks():
            if not ok:
                raise ValueError(message)
        space = specs.SearchSpace(**self.space_kwargs(1))  # the ranges, before any data is read
        if self.subnet is not None:
            try:
                space.validate(self.subnet)
            except ValueError as e:
                what = self.subnet_name or self.subnet.name
                raise ValueError(f"The subnet {what} is not in this run's space: {e}") from None
        if self.distill_from_largest and (self.subnet is None or not self.init_from):
            raise ValueError(
                "distill_from_largest distils one subnet (--subnet) from the largest subnet of "
                "the --init_from job: give both."
            )
        if self.data.image_size != self.resolution_range[1]:
            raise ValueError(
                f"image_size={self.data.image_size} must equal the largest resolution "
                f"{self.resolution_range[1]} (the supernet receives max-resolution crops)."
            )

    def _range_checks(self) -> list[tuple[bool, str]]:
        """``(holds, message)`` for every numeric setting's range."""
        return [
            (self.pool_size >= 1, f"pool_size={self.pool_size} must be at least 1."),
            (0 <= self.pool_ema < 1, f"pool_ema={self.pool_ema} must be in [0, 1)."),
            (self.epochs >= 1, f"epochs={self.epochs} must be at least 1."),
            (self.lr > 0, f"lr={self.lr} must be positive."),
            (
                self.num_map_samples >= 1,
                f"num_map_samples={self.num_map_samples} must be positive.",
            ),
            (self.calib_batches >= 1, f"calib_batches={self.calib_batches} must be at least 1."),
            (self.topk >= 1, f"topk={self.topk} must be at least 1."),
            (self.data.batch_size >= 1, f"batch_size={self.data.batch_size} must be positive."),
            (
                all(v > 0 for v in self.p_space + self.temperature),
                "p_space and temperature schedule ends must be positive.",
            ),
            (self.lr_batch_size >= 0, f"lr_batch_size={self.lr_batch_size} must be 0 or more."),
            (
                0 <= self.data.val_fraction < 1,
                f"val_fraction={self.data.val_fraction} must be in [0, 1).",
            ),
            (
                self.checkpoint_every_steps >= 0,
                f"checkpoint_every_steps={self.checkpoint_every_steps} must be 0 (never) or more.",
            ),
            (
                0 <= self.warmup_in_use < self.epochs,
                f"warmup_epochs={self.warmup_in_use:g} must be in [0, epochs={self.epochs}).",
            ),
        ]

    def target_ranges(self) -> list[tuple[str, tuple[float, float, float], str | None]]:
        """``(metric_type, (start, stop, step), table path or None)`` per metric type.

        Raises:
            ValueError: for unknown or repeated metric types, or latency
                types without exactly one target range and table each.
        """
        types = tuple(self.metric_types)
        unknown = [m for m in types if m not in METRIC_TYPES]
        if not types or unknown or len(set(types)) != len(types):
            raise ValueError(
                f"metric types {list(types)}: give each of {METRIC_TYPES} at most once "
                "(at least one)."
            )
        latency = [m for m in types if m != "flops"]
        if len(self.latency_targets) != len(latency) or len(self.lut_paths) != len(latency):
            raise ValueError(
                f"The latency metric types {latency} need one target range and one look-up "
                f"table each; got {len(self.latency_targets)} range(s) and "
                f"{len(self.lut_paths)} table(s) (--lut_dirs: None for flops, a table file for "
                "each latency type)."
            )
        ranges = dict(zip(latency, zip(self.latency_targets, self.lut_paths)))
        out = []
        for m in types:
            if m == "flops":
                out.append((m, tuple(float(v) for v in self.flops_targets), None))
            else:
                targets, path = ranges[m]
                out.append((m, tuple(float(v) for v in targets), str(path)))
        return out

    def to_dict(self) -> dict:
        """The settings, and the rates they resolve to (``lr_in_use``,
        ``warmup_epochs_in_use``: a record for the reader; `from_dict`
        recomputes them)."""
        return {
            **dataclasses.asdict(self),
            "lr_in_use": self.lr_in_use,
            "warmup_epochs_in_use": self.warmup_in_use,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = {k: v for k, v in data.items() if k not in DERIVED}
        data_config = dict(data.pop("data", {}))
        data_config["crop_scale"] = tuple(data_config.get("crop_scale", (0.25, 1.0)))
        for key in (
            "resolution_range", "width_range", "flops_targets", "p_space", "temperature",
            "metric_types", "lut_paths",
        ):  # fmt: skip
            if key in data:
                data[key] = tuple(data[key])
        if "latency_targets" in data:
            data["latency_targets"] = tuple(tuple(t) for t in data["latency_targets"])
        if data.get("subnet") is not None:
            data["subnet"] = specs.SubnetConfig.from_dict(data["subnet"])
        return cls(data=DataConfig(**data_config), **data)

    def space_kwargs(self, num_classes: int) -> dict:
        """Arguments of `pss_keras.supernet.specs.SearchSpace` for this run."""
        return dict(
            model_name=self.model_name,
            num_classes=num_classes,
            width_scale=self.width_scale,
            resolution_range=self.resolution_range,
            resolution_step=self.resolution_step,
            width_range=self.width_range,
        )

    def supernet_kwargs(self, num_classes: int) -> dict:
        """Arguments of `pss_keras.supernet.model.Supernet` for this run:
        its search space and its architecture's padding and BN epsilon."""
        return dict(
            **self.space_kwargs(num_classes), padding=self.padding, bn_epsilon=self.bn_epsilon
        )

    def resume_conflicts(self, saved: dict) -> list[str]:
        """Settings that differ from a saved run's ``to_dict()``, as a
        resume sees them (`pss_keras.jobs.resume.conflicts`)."""
        from pss_keras.jobs import resume

        return resume.conflicts(self, saved)


def json_round_trip(value):
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))
