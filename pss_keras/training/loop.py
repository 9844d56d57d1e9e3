"""The training loop for strategies Keras 3's ``fit`` cannot drive.

Under `tf.distribute.MultiWorkerMirroredStrategy`, Keras 3's ``fit`` fails
(``ValueError: Attempt to convert a value (PerReplica:...)``;
keras-team/keras#20585, tensorflow#72388). `fit_distributed` runs the
model's own ``train_step`` through ``strategy.run`` on a distributed dataset
and calls the same callbacks, in the same order, as ``fit`` does: the
progress bar, `keras.callbacks.History`, TensorBoard and the PSS callback
see what they see under ``fit``. Single-host runs keep ``fit``.
"""

from __future__ import annotations

import hashlib

import keras
import tensorflow as tf


def fit_distributed(
    trainer: keras.Model,
    strategy: tf.distribute.Strategy,
    dataset: tf.data.Dataset,
    *,
    epochs: int,
    initial_epoch: int,
    steps_per_epoch: int,
    callbacks: list,
    verbose: int = 1,
) -> keras.callbacks.History:
    """Trains ``trainer`` like ``fit(dataset, epochs, initial_epoch,
    steps_per_epoch, callbacks, verbose)``.

    ``dataset`` yields global batches. Each worker keeps its share of every
    batch (auto-shard policy DATA: every worker reads the same seeded
    sequence and keeps its slice, so the global batch of a step is what one
    device would see, and a resume is exact whatever the number of files).
    Step logs are the replicas' mean.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))

    @tf.function
    def step(iterator):
        outputs = strategy.run(trainer.train_step, args=(next(iterator),))
        return {
            k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, None) for k, v in outputs.items()
        }

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=trainer,
    )
    trainer.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        trainer.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for batch in range(steps_per_epoch):
            callback_list.on_train_batch_begin(batch)
            logs = {k: float(v) for k, v in step(iterator).items()}
            callback_list.on_train_batch_end(batch, logs)
            if trainer.stop_training:
                break
        callback_list.on_epoch_end(epoch, dict(logs))
        if trainer.stop_training:
            break
    callback_list.on_train_end(logs)
    return trainer.history


def check_workers_agree(strategy: tf.distribute.Strategy, what: str, value: str) -> None:
    """Raises ValueError unless every replica of ``strategy`` holds the same
    ``value`` (e.g. the epoch and sampler state a worker resumed from).

    Workers restore from the job directory independently; one that cannot
    see the chief's checkpoints (no shared filesystem) would otherwise train
    other weights with the same all-reduced gradients, silently.
    """
    digest = int(hashlib.sha256(value.encode()).hexdigest()[:12], 16)
    local = strategy.run(lambda: tf.constant([digest], tf.int64))
    gathered = strategy.gather(local, axis=0).numpy()
    if (gathered != digest).any():
        raise ValueError(
            f"The workers disagree on {what}: every worker must read the same --job_dir "
            "(a filesystem that all hosts share), so that all resume from the same checkpoint."
        )
