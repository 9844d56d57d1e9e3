"""PSS training: the sandwich step with in-place distillation, driven by the
prioritized sampler, plus the end-of-training selection of subnets.

Per step (`PSSTrainer.train_step`, one traced graph for every subnet):
1. the largest subnet: cross-entropy with the labels;
2. the prioritized candidate: KL divergence to the largest subnet's detached
   softmax; its cross-entropy on the batch (no gradient) is its score;
3. the smallest subnet: the same KL loss;
4. one SGD step on the summed gradients, with L2 weight decay (added to the
   gradients, as PyTorch's SGD does) on conv and dense kernels only.

The candidate is chosen on the host by `PSSCallback` before each step and
written into a variable; its score (the cross-replica mean) is reported back
into its pool after the step. Because the choice is made once on the host and
mirrored, every replica of a `tf.distribute` strategy trains the same subnet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time

import keras
import numpy as np
import tensorflow as tf

from pss_keras import data as data_lib
from pss_keras import flops, layers, sampling, specs
from pss_keras.checkpoints import Checkpointer, atomic_write_json
from pss_keras.evaluation import SubnetEvaluator
from pss_keras.pools import TargetGrid
from pss_keras.supernet import Supernet

RETAINED = "retained_subnets.json"
RUN_CONFIG = "run_config.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a PSS run needs; defaults are the paper's MobileNetV1 run.

    The data fields are in ``data`` (a `pss_keras.data.DataConfig`).
    """

    job_dir: str
    data: data_lib.DataConfig = dataclasses.field(default_factory=data_lib.DataConfig)
    model_name: str = "mobilenet_v1"
    width_scale: float = 1.0
    resolution_range: tuple[int, int] = (128, 224)
    resolution_step: int = 8
    width_range: tuple[float, float] = (0.75, 1.0)
    flops_targets: tuple[float, float, float] = (110.0, 570.0, 10.0)
    num_map_samples: int = 100_000
    pool_size: int = 50
    pool_ema: float = 0.9
    p_space: tuple[float, float] = (1.0, 0.01)
    temperature: tuple[float, float] = (1.0, 0.01)
    epochs: int = 250
    lr: float = 0.3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    calib_batches: int = 8
    topk: int = 5
    seed: int = 0
    keep_checkpoints: int = 2
    tensorboard_update_freq: int = 50
    verbose: int = 1

    def validate(self) -> None:
        """Raises ValueError with one clear message for a bad setting."""
        if self.model_name not in specs.MODEL_NAMES:
            raise ValueError(
                f"model {self.model_name!r} is unknown; use one of {specs.MODEL_NAMES}."
            )
        start, stop, step = self.flops_targets
        if step <= 0 or stop < start:
            raise ValueError(
                f"FLOPs target range {start:g}..{stop:g} step {step:g} is empty; "
                "give start <= stop and a positive step."
            )
        checks = [
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
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs must be in [0, epochs)."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.data.image_size != self.resolution_range[1]:
            raise ValueError(
                f"image_size={self.data.image_size} must equal the largest resolution "
                f"{self.resolution_range[1]} (the supernet receives max-resolution crops)."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data_config = dict(data.pop("data", {}))
        data_config["crop_scale"] = tuple(data_config.get("crop_scale", (0.25, 1.0)))
        for key in ("resolution_range", "width_range", "flops_targets", "p_space", "temperature"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(data=data_lib.DataConfig(**data_config), **data)


def _kl(teacher_probs, student_logits):
    """Mean over the batch of KL(teacher || student)."""
    log_student = tf.nn.log_softmax(student_logits)
    log_teacher = tf.math.log(tf.clip_by_value(teacher_probs, 1e-12, 1.0))
    return tf.reduce_mean(tf.reduce_sum(teacher_probs * (log_teacher - log_student), axis=-1))


def _ce(labels, logits):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


class PSSTrainer(keras.Model):
    """Wraps a `Supernet` with the PSS sandwich ``train_step``.

    Args:
        supernet: the supernet to train.
        weight_decay: L2 coefficient on conv and dense kernels.
    """

    def __init__(self, supernet: Supernet, weight_decay: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.supernet = supernet
        self.weight_decay = float(weight_decay)
        space = supernet.space
        self.largest_code = space.encode(space.largest())
        self.smallest_code = space.encode(space.smallest())
        self.candidate_code = self.add_weight(
            name="candidate_subnet",
            shape=self.largest_code.shape,
            dtype="int32",
            initializer=keras.initializers.Constant(self.largest_code),
            trainable=False,
        )
        self._decayed = {
            id(layer.kernel)
            for layer in supernet.switchable_layers
            if isinstance(layer, (layers.SwitchableConv2D, layers.SwitchableDense))
        }
        self.built = True

    def call(self, inputs, training=False):
        return self.supernet(inputs, training=training)

    def decayed(self, variable) -> bool:
        """Whether ``variable`` gets weight decay (conv and dense kernels only)."""
        return id(variable) in self._decayed

    def train_step(self, data):
        images, labels = data[0], tf.cast(data[1], tf.int32)
        variables = self.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits_max = self.supernet(images, training=True, subnet=self.largest_code)
            loss_max = _ce(labels, logits_max)
            teacher = tf.stop_gradient(tf.nn.softmax(logits_max))
            logits_cand = self.supernet(images, training=True, subnet=self.candidate_code)
            loss_cand = _kl(teacher, logits_cand)
            logits_min = self.supernet(images, training=True, subnet=self.smallest_code)
            loss_min = _kl(teacher, logits_min)
            loss = (loss_max + loss_cand + loss_min) / replicas
        grads = tape.gradient(loss, variables)
        if self.weight_decay:
            grads = [
                g + (self.weight_decay / replicas) * v if self.decayed(v) else g
                for g, v in zip(grads, variables)
            ]
        self.optimizer.apply(grads, variables)
        # The candidate's score: negative CE of the same forward pass (BN in
        # training mode, weights before the update), i.e. the no-gradient
        # scoring pass of the method, without computing it twice.
        score = -_ce(labels, tf.stop_gradient(logits_cand))
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            score = context.all_reduce(tf.distribute.ReduceOp.MEAN, score)
        return {
            "loss_max": loss_max,
            "loss_candidate": loss_cand,
            "loss_min": loss_min,
            "candidate_score": score,
            "lr": tf.convert_to_tensor(self.optimizer.learning_rate),
        }


class PSSCallback(keras.callbacks.Callback):
    """Chooses each step's candidate, reports its score, checkpoints.

    Adds to the step logs (progress bar, TensorBoard): ``p_space``,
    ``temperature``, ``cand_target`` (the candidate's target) and
    ``cand_from_pool`` (1 when drawn from the pool, 0 from the space).
    """

    def __init__(self, trainer, sampler, checkpointer=None, log_dir=None):
        super().__init__()
        self.trainer = trainer
        self.sampler = sampler
        self.checkpointer = checkpointer
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.candidate = None
        self.counts = {"space": 0, "pool": 0}

    def on_epoch_begin(self, epoch, logs=None):
        self.sampler.set_epoch(epoch)
        self.counts = {"space": 0, "pool": 0}

    def on_train_batch_begin(self, batch, logs=None):
        self.candidate = self.sampler.choose()
        self.trainer.candidate_code.assign(
            self.trainer.supernet.space.encode(self.candidate.config)
        )

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        score = float(logs["candidate_score"])
        self.sampler.report(self.candidate, score)
        self.counts["pool" if self.candidate.from_pool else "space"] += 1
        logs.update(
            p_space=self.sampler.p_space,
            temperature=self.sampler.temperature,
            cand_target=self.candidate.target,
            cand_from_pool=float(self.candidate.from_pool),
        )

    def on_epoch_end(self, epoch, logs=None):
        summary = self.sampler.pool_summary()
        if self.writer is not None:
            with self.writer.as_default(step=epoch + 1):
                for row in summary:
                    tf.summary.scalar(f"pool_fill/{row['name']}", row["fill"])
                    if row["best_score"] is not None:
                        tf.summary.scalar(f"pool_best_score/{row['name']}", row["best_score"])
                tf.summary.scalar("pss/p_space", self.sampler.p_space)
                tf.summary.scalar("pss/temperature", self.sampler.temperature)
                tf.summary.scalar("pss/candidates_from_pool", self.counts["pool"])
            self.writer.flush()
        full = sum(row["fill"] >= self.sampler.pool_size for row in summary)
        logging.info(
            "epoch %d: %d/%d pools full, candidates from pool %d / space %d",
            epoch + 1,
            full,
            len(summary),
            self.counts["pool"],
            self.counts["space"],
        )
        if self.checkpointer is not None:
            self.checkpointer.save(epoch + 1)


class EpochProgbar(keras.callbacks.ProgbarLogger):
    """The standard progress bar, showing the run's total epochs when `fit`
    is called once per epoch."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = int(total_epochs)

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum and per-step cosine decay (optional warm-up).

    Weight decay is not the optimizer's (Keras's is decoupled); the trainer
    adds the reference's L2 term to the gradients.
    """
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, total - warmup),
            warmup_target=config.lr,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total))
    return keras.optimizers.SGD(
        learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov
    )


def build_samplers(config: TrainConfig, space: specs.SearchSpace) -> sampling.PrioritizedSampler:
    """The run's prioritized sampler: the FLOPs map (seeded, so a resumed
    run rebuilds the same one) and empty pools."""
    grid = TargetGrid("flops", *config.flops_targets)
    conditional = sampling.ConditionalSampler.build(
        space, grid, num_samples=config.num_map_samples, seed=config.seed
    )
    sampling.log_map(conditional)
    return sampling.PrioritizedSampler(
        [conditional],
        pool_size=config.pool_size,
        pool_ema=config.pool_ema,
        p_space=config.p_space,
        temperature=config.temperature,
        epochs=config.epochs,
        seed=config.seed,
    )


def build_supernet(config: TrainConfig, num_classes: int) -> Supernet:
    """The run's supernet (freshly initialized)."""
    return Supernet(
        config.model_name,
        num_classes=num_classes,
        width_scale=config.width_scale,
        resolution_range=config.resolution_range,
        resolution_step=config.resolution_step,
        width_range=config.width_range,
    )


def retain_subnets(
    supernet: Supernet,
    sampler: sampling.PrioritizedSampler,
    pipelines: data_lib.Pipelines,
    job_dir: str,
    topk: int = 5,
    calib_batches: int = 8,
    progress: bool = True,
) -> list[dict]:
    """Calibrates and scores the top-k of every pool, keeps the best per target.

    The best subnet of a pool is chosen on minival (held-out training data);
    its reported ``top1`` / ``top5`` are then measured on the validation
    split, so no reported figure is selected on itself. Calibrated statistics
    go to ``<job_dir>/bn_stats/<tier>.npz``; the list to
    ``<job_dir>/retained_subnets.json``.
    """
    evaluator = SubnetEvaluator(supernet)
    stats_dir = os.path.join(job_dir, "bn_stats")
    os.makedirs(stats_dir, exist_ok=True)
    space = supernet.space
    pools = [(key, pool) for key, pool in sorted(sampler.pools.items()) if len(pool)]
    bar = keras.utils.Progbar(len(pools), unit_name="pool") if progress else None
    retained = []
    for (metric_type, k), pool in pools:
        grid = sampler.samplers[metric_type].grid
        best = None
        for config, score in pool.top(topk):
            stats = evaluator.calibrate(config, pipelines.train_epoch(0), calib_batches)
            minival = evaluator.evaluate(config, stats, pipelines.minival())
            if best is None or minival["top1"] > best[2]["top1"]:
                best = (config, stats, minival, score)
        config, stats, minival, score = best
        validation = evaluator.evaluate(config, stats, pipelines.validation())
        name = grid.name(k)
        stats_file = os.path.join("bn_stats", f"{name}.npz")
        arrays = {
            f"{layer}/{part}": v
            for layer, mv in stats.items()
            for part, v in zip(("mean", "variance"), mv)
        }
        tmp = os.path.join(stats_dir, f".{name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(job_dir, stats_file))
        retained.append(
            {
                "name": name,
                "config": config.to_dict(),
                "metric_type": metric_type,
                "target": grid.value(k),
                "mflops": flops.count_mflops(config, space.num_classes, space.width_scale),
                "params": flops.count_params(config, space.num_classes, space.width_scale),
                "top1": validation["top1"],
                "top5": validation["top5"],
                "minival_top1": minival["top1"],
                "pool_score": score,
                "bn_stats": stats_file,
            }
        )
        if bar is not None:
            bar.add(1, [("val_top1", validation["top1"])])
    atomic_write_json(os.path.join(job_dir, RETAINED), retained)
    return retained


def load_bn_stats(job_dir: str, entry: dict) -> dict:
    """The calibrated statistics of a retained subnet (as `retain_subnets` wrote them)."""
    path = os.path.join(job_dir, entry["bn_stats"])
    with np.load(path) as saved:
        layers_ = {key.rsplit("/", 1)[0] for key in saved.files}
        return {name: (saved[f"{name}/mean"], saved[f"{name}/variance"]) for name in layers_}


def evaluate_job(
    job_dir: str,
    checkpoint: str | None = None,
    topk: int | None = None,
    calib_batches: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Re-runs the end-of-training selection from a checkpoint of ``job_dir``.

    Uses the run's own settings (``run_config.json``) and, by default, its
    latest checkpoint; rewrites ``retained_subnets.json``.

    Raises:
        ValueError: if the job directory or checkpoint is missing.
    """
    path = os.path.join(job_dir, RUN_CONFIG)
    if not os.path.exists(path):
        raise ValueError(
            f"{job_dir} is not a PSS job directory ({RUN_CONFIG} is missing); pass the "
            "--job_dir of a training run."
        )
    with open(path) as f:
        config = TrainConfig.from_dict(json.load(f))
    if data_dir:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, data_dir=data_dir)
        )
    _seed_run(config.seed)
    pipelines = data_lib.Pipelines(config.data)
    supernet = build_supernet(config, pipelines.num_classes)
    sampler = build_samplers(config, supernet.space)
    checkpointer = Checkpointer(os.path.join(job_dir, "checkpoints"), supernet, None, sampler)
    checkpoint = checkpoint or checkpointer.latest()
    if not checkpoint or not os.path.isdir(checkpoint):
        raise ValueError(f"No checkpoint found in {job_dir}/checkpoints (or at {checkpoint}).")
    checkpointer.restore(checkpoint)
    return retain_subnets(
        supernet,
        sampler,
        pipelines,
        job_dir,
        topk or config.topk,
        calib_batches or config.calib_batches,
        progress=progress,
    )


def _seed_run(seed: int) -> None:
    """Makes a run's randomness a function of its seed alone.

    Keras's initializers draw from Python's `random`; the data pipeline's
    shuffle seeds combine with TensorFlow's global seed, which is cleared so
    that training, a resume and `evaluate_job` see the same batches whatever
    the calling program set with `tf.random.set_seed`.
    """
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(None)


def _check_run_config(job_dir: str, config: TrainConfig) -> None:
    path = os.path.join(job_dir, RUN_CONFIG)
    current = json.loads(json.dumps(config.to_dict()))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        # "data" is compared field by field below, where its locations may move.
        ignore = {
            "epochs",
            "verbose",
            "tensorboard_update_freq",
            "keep_checkpoints",
            "job_dir",
            "data",
        }
        changed = sorted(k for k in current if k not in ignore and saved.get(k) != current.get(k))
        data_changed = sorted(
            k
            for k in current["data"]
            if k not in ("data_dir", "manual_dir")
            and saved.get("data", {}).get(k) != current["data"][k]
        )
        if changed or data_changed:
            raise ValueError(
                f"{job_dir} holds a run with other settings ({', '.join(changed + data_changed)}); "
                "resume with the same flags or use a new --job_dir."
            )
    atomic_write_json(path, current)


def train(config: TrainConfig) -> dict:
    """Runs (or resumes) PSS training and the final subnet selection.

    Returns:
        A summary: epochs run, wall time, map-building time, the retained
        subnets and the job directory.
    """
    config.validate()
    start = time.perf_counter()
    pipelines = data_lib.Pipelines(config.data)  # fails before anything is written
    os.makedirs(config.job_dir, exist_ok=True)
    _check_run_config(config.job_dir, config)
    _seed_run(config.seed)
    supernet = build_supernet(config, pipelines.num_classes)
    map_start = time.perf_counter()
    sampler = build_samplers(config, supernet.space)
    map_seconds = time.perf_counter() - map_start
    trainer = PSSTrainer(supernet, weight_decay=config.weight_decay)
    optimizer = build_optimizer(config, pipelines.steps_per_epoch)
    trainer.compile(optimizer=optimizer, jit_compile=False)
    # Built before the first step, so the step traces once (a trace that
    # creates variables is traced again).
    optimizer.build(trainer.trainable_variables)
    checkpointer = Checkpointer(
        os.path.join(config.job_dir, "checkpoints"),
        supernet,
        optimizer,
        sampler,
        keep=config.keep_checkpoints,
    )
    initial_epoch = 0
    latest = checkpointer.latest()
    if latest:
        initial_epoch = checkpointer.restore(latest)["epoch"]
        logging.info("Resuming from %s (epoch %d of %d).", latest, initial_epoch, config.epochs)
    atomic_write_json(os.path.join(config.job_dir, "classes.json"), pipelines.source.class_names)
    log_dir = os.path.join(config.job_dir, "logs")
    callbacks = [
        PSSCallback(trainer, sampler, checkpointer, os.path.join(log_dir, "pss")),
        keras.callbacks.TensorBoard(log_dir, update_freq=config.tensorboard_update_freq),
        EpochProgbar(config.epochs),
    ]
    # One fit() per epoch: each epoch's data is seeded by its number, and the
    # traced train step is reused across calls.
    for epoch in range(initial_epoch, config.epochs):
        trainer.fit(
            pipelines.train_epoch(epoch),
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=pipelines.steps_per_epoch,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the data pipeline shuffles, seeded per epoch
        )
    tmp = os.path.join(config.job_dir, ".supernet-tmp.weights.h5")
    supernet.save_weights(tmp)  # then renamed: never a half-written file in place
    os.replace(tmp, os.path.join(config.job_dir, "supernet.weights.h5"))
    retained = retain_subnets(
        supernet,
        sampler,
        pipelines,
        config.job_dir,
        config.topk,
        config.calib_batches,
        progress=bool(config.verbose),
    )
    return {
        "job_dir": config.job_dir,
        "epochs": config.epochs,
        "resumed_from_epoch": initial_epoch,
        "map_seconds": map_seconds,
        "wall_seconds": time.perf_counter() - start,
        "retained": retained,
    }
