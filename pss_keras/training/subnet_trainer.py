"""One subnet trained alone: the step of a run with ``TrainConfig.subnet``.

What a user would train instead of a supernet (one ordinary model per cost
level), and how a tier is fine-tuned alone before deployment. The subnet
runs inside the supernet (its weights are the supernet's first channels, as
every tier's are), so the job it writes exports and converts like a PSS
job's. Per step (`SubnetTrainer.train_step`):

1. the subnet: plain cross-entropy with the labels, batch norm in training
   mode (batch statistics; no other subnet trains); or, given a teacher
   (``--distill_from_largest``), the KL divergence from the teacher's
   largest subnet's softmax, as the PSS step's in-place distillation but
   from a frozen copy of the ``--init_from`` job (one more forward pass of
   the largest subnet a step, batch statistics, no gradient);
2. one SGD step with the same L2 weight decay on conv and dense kernels as
   the PSS step (`pss_keras.training.trainer.with_weight_decay`) and the
   same loss scaling under mixed_float16.

The supernet's batch norms keep no moving statistics in training (they
normalize with batch moments), so the tier's statistics come from the
post-training calibration of every tier (`pss_keras.training.evaluation`).
Channels beyond the subnet's get no gradient; weight decay still shrinks
their kernels, which no exported tier of the job uses.

`FixedSubnet` is such a run's host-side state in its checkpoints (where a
PSS run saves its pools and sampler).
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from pss_keras.jobs import directory as jobs
from pss_keras.supernet import specs
from pss_keras.supernet.model import Supernet
from pss_keras.supernet.pretrained import initialize_supernet
from pss_keras.training.trainer import decayed_kernels, with_weight_decay
from pss_keras.utils import losses

# The step log the divergence guard watches (its negative is the step's loss).
SCORE = "score"


class SubnetTrainer(keras.Model):
    """Wraps a `Supernet` with a plain cross-entropy step of one subnet.

    Its interface is `pss_keras.training.trainer.PSSTrainer`'s (compile with
    `pss_keras.training.trainer.build_optimizer`, ``supernet``, ``decayed``),
    so the run's fit, callbacks and checkpoints are a PSS run's. The step
    logs ``loss`` (the running mean of the epoch, for the progress bar and
    TensorBoard), ``score`` (this step's negative loss: cross-entropy, or
    KL divergence with a teacher; the cross-replica mean, what the
    divergence guard watches) and ``lr``.

    Args:
        supernet: the supernet whose subnet is trained.
        subnet: the subnet, a `SubnetConfig` of the supernet's space.
        weight_decay: L2 coefficient on conv and dense kernels.
        teacher: None (cross-entropy with the labels), or a supernet whose
            largest subnet teaches (made non-trainable here; it is not
            checkpointed: a resume rebuilds it from its source).

    Raises:
        ValueError: a subnet outside the supernet's space, or a teacher
            with another class count.
    """

    def __init__(
        self,
        supernet: Supernet,
        subnet: specs.SubnetConfig,
        weight_decay: float = 1e-4,
        teacher: Supernet | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supernet = supernet
        self.subnet = supernet.space.validate(subnet)
        self.subnet_code = supernet.space.encode(subnet)
        self.weight_decay = float(weight_decay)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._decayed = decayed_kernels(supernet)
        self.teacher = teacher
        if teacher is not None:
            if teacher.space.num_classes != supernet.space.num_classes:
                raise ValueError(
                    f"The teacher has {teacher.space.num_classes} classes and the subnet "
                    f"{supernet.space.num_classes}: distill from a job trained on these classes."
                )
            teacher.trainable = False
            self.teacher_code = teacher.space.encode(teacher.space.largest())
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs, training=False):
        return self.supernet(inputs, training=training, subnet=self.subnet_code)

    def decayed(self, variable) -> bool:
        """Whether ``variable`` gets weight decay (conv and dense kernels only)."""
        return id(variable) in self._decayed

    def train_step(self, data):
        images, labels = data[0], tf.cast(data[1], tf.int32)
        variables = self.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        soft = None
        if self.teacher is not None:  # batch statistics, as the PSS step's largest subnet
            soft = self.teacher(images, training=True, subnet=self.teacher_code)
            soft = tf.stop_gradient(tf.nn.softmax(soft))
        with tf.GradientTape() as tape:
            logits = self.supernet(images, training=True, subnet=self.subnet_code)
            if soft is None:
                loss = losses.cross_entropy(labels, logits)
            else:
                loss = losses.kl_divergence(soft, logits)
            # Under mixed_float16 the optimizer is a LossScaleOptimizer (its
            # apply() unscales); otherwise the scale is 1.
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        grads = with_weight_decay(
            self.optimizer, grads, variables, self._decayed, self.weight_decay, replicas
        )
        lr = tf.convert_to_tensor(self.optimizer.learning_rate)  # before apply() steps it
        self.optimizer.apply(grads, variables)
        score = -tf.stop_gradient(loss)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            score = context.all_reduce(tf.distribute.ReduceOp.MEAN, score)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), SCORE: score, "lr": lr}


class FixedSubnet:
    """The host-side state of a run that trains one subnet: the subnet
    itself (no pools, no random state), saved in every checkpoint where a
    PSS run saves its sampler's, so that a checkpoint of another subnet (or
    of a PSS run) is refused on resume.

    Args:
        config: the subnet.
    """

    def __init__(self, config: specs.SubnetConfig):
        self.config = config

    def set_epoch(self, epoch: int) -> None:
        """Nothing follows the epoch (a PSS sampler's schedules do)."""
        del epoch

    def state_dict(self) -> dict:
        return {"subnet": self.config.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Checks that a checkpoint's state is this subnet's.

        Raises:
            ValueError: one line, for another subnet's or a PSS run's state.
        """
        saved = state.get("subnet") if isinstance(state, dict) else None
        if saved is None:
            raise ValueError(
                f"The checkpoint is of a PSS run (pools, no subnet), not of {self.config.name} "
                "trained alone; use a new --job_dir."
            )
        saved = specs.SubnetConfig.from_dict(saved)
        if saved != self.config:
            raise ValueError(
                f"The checkpoint trained {saved.name}, not {self.config.name}; resume with the "
                "same --subnet or use a new --job_dir."
            )


def build_teacher(supernet_kwargs: dict, job_dir: str) -> Supernet:
    """The supernet whose largest subnet teaches a ``distill_from_largest``
    run: ``job_dir``'s weights in a supernet built with ``supernet_kwargs``
    (the run's own).

    Raises:
        ValueError: one line: ``job_dir`` is no finished job, or one
            trained on another class count.
    """
    path = os.path.expanduser(job_dir)
    classes = os.path.join(path, jobs.CLASSES)
    if not (os.path.isfile(os.path.join(path, jobs.WEIGHTS)) and os.path.isfile(classes)):
        raise ValueError(
            f"--distill_from_largest distils from a job's largest subnet: --init_from={job_dir} "
            f"is no finished job (it needs {jobs.WEIGHTS} and {jobs.CLASSES})."
        )
    with open(classes) as f:
        num_classes = len(json.load(f))
    if num_classes != supernet_kwargs["num_classes"]:
        raise ValueError(
            f"--distill_from_largest: {job_dir} classifies {num_classes} classes and this run's "
            f"data {supernet_kwargs['num_classes']}; distil from a job trained on these classes."
        )
    teacher = Supernet(**supernet_kwargs)
    logging.info("Teacher: the largest subnet of %s", initialize_supernet(teacher, job_dir))
    return teacher
