"""PSS training: the sandwich step with in-place distillation, driven by the
prioritized sampler.

Per step (`PSSTrainer.train_step`, one traced graph for every subnet):
1. the largest subnet: cross-entropy with the labels;
2. the prioritized candidate: KL divergence to the largest subnet's detached
   softmax; its cross-entropy on the batch (no gradient) is its score;
3. the smallest subnet: the same KL loss;
4. one SGD step on the summed gradients, with L2 weight decay (added to the
   gradients, as PyTorch's SGD does) on conv and dense kernels only.

The candidate is chosen on the host by `pss_keras.training.callbacks.PSSCallback`
before each step and written into a variable; its score (the cross-replica mean) is reported back
into its pool after the step. Because the choice is made once on the host and
mirrored, every replica of a `tf.distribute` strategy trains the same subnet.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pss_keras.jobs.config import TrainConfig
from pss_keras.supernet import layers
from pss_keras.supernet.model import Supernet
from pss_keras.utils import losses


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
        # Epoch means for the progress bar and the epoch logs (fit resets
        # them each epoch); the step logs carry the running mean.
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss_max", "loss_candidate", "loss_min")
        }
        self._decayed = decayed_kernels(supernet)
        self.built = True

    def compile(self, *args, steps_per_execution=1, **kwargs):
        # The candidate is chosen on the host before each step
        # (PSSCallback.on_train_batch_begin): with several steps per call,
        # all but the first would train a stale candidate.
        if steps_per_execution != 1:
            raise ValueError(
                f"steps_per_execution={steps_per_execution} is not supported: PSS chooses "
                "each step's candidate on the host between steps; use 1."
            )
        super().compile(*args, **kwargs)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

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
            loss_max = losses.cross_entropy(labels, logits_max)
            teacher = tf.stop_gradient(tf.nn.softmax(logits_max))
            logits_cand = self.supernet(images, training=True, subnet=self.candidate_code)
            loss_cand = losses.kl_divergence(teacher, logits_cand)
            logits_min = self.supernet(images, training=True, subnet=self.smallest_code)
            loss_min = losses.kl_divergence(teacher, logits_min)
            loss = (loss_max + loss_cand + loss_min) / replicas
            # Under mixed_float16 the optimizer is a LossScaleOptimizer:
            # gradients of the scaled loss, unscaled (and skipped when not
            # finite) by its apply(). Otherwise the scale is 1.
            loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        grads = with_weight_decay(
            self.optimizer, grads, variables, self._decayed, self.weight_decay, replicas
        )
        # The rate this step's update uses (read before apply() advances the
        # step counter the schedule is evaluated at).
        lr = tf.convert_to_tensor(self.optimizer.learning_rate)
        self.optimizer.apply(grads, variables)
        # The candidate's score: negative CE of the same forward pass (BN in
        # training mode, weights before the update), i.e. the no-gradient
        # scoring pass of the method, without computing it twice.
        # The same score of the largest and smallest subnets feeds the pools
        # of targets that only they reach (PrioritizedSampler.report_extremes).
        # (The largest's is its training loss, already computed.)
        scores = tf.stack(
            [
                -losses.cross_entropy(labels, tf.stop_gradient(logits_cand)),
                -tf.stop_gradient(loss_max),
                -losses.cross_entropy(labels, tf.stop_gradient(logits_min)),
            ]
        )
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            scores = context.all_reduce(tf.distribute.ReduceOp.MEAN, scores)
        for name, value in (("loss_max", loss_max), ("loss_candidate", loss_cand)):
            self.loss_trackers[name].update_state(value)
        self.loss_trackers["loss_min"].update_state(loss_min)
        # The scores are this step's values (they go into the pools), not
        # running means.
        return {
            **{name: tracker.result() for name, tracker in self.loss_trackers.items()},
            "candidate_score": scores[0],
            "largest_score": scores[1],
            "smallest_score": scores[2],
            "lr": lr,
        }


def decayed_kernels(supernet: Supernet) -> set[int]:
    """The ``id`` of every variable that gets weight decay: the kernels of
    the conv and dense layers (not depthwise kernels, biases or BN)."""
    return {
        id(layer.kernel)
        for layer in supernet.switchable_layers
        if isinstance(layer, (layers.SwitchableConv2D, layers.SwitchableDense))
    }


def with_weight_decay(optimizer, grads, variables, decayed: set, weight_decay: float, replicas):
    """``grads`` plus the L2 term ``weight_decay * v`` of every variable in
    ``decayed`` (`decayed_kernels`), as PyTorch's SGD adds it, divided by
    the replicas (their gradients are summed) and, under a loss-scaling
    optimizer (mixed_float16), scaled like the loss's gradients."""
    if not weight_decay:
        return grads
    decay = weight_decay / replicas
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is not None:  # the decay term is scaled like the loss's gradients
        decay = decay * tf.cast(scale, tf.float32)
    return [g + decay * v if id(v) in decayed else g for g, v in zip(grads, variables)]


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum and per-step cosine decay (optional warm-up)
    from the run's peak rate (`TrainConfig.lr_in_use`: ``lr`` scaled to the
    global batch when ``lr_batch_size`` is set).

    Weight decay is not the optimizer's (Keras's is decoupled); the trainer
    adds the reference's L2 term to the gradients.
    """
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_in_use * steps_per_epoch))
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, total - warmup),
            warmup_target=config.lr_in_use,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            config.lr_in_use, decay_steps=max(1, total)
        )
    return keras.optimizers.SGD(
        learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov
    )
