"""Helpers shared by the tests of pss_keras.training (tests/test_training_*.py)
and pss_keras.jobs.config (tests/test_jobs_config.py); their shared
fixtures (trained_job, job_copy) are in conftest.py."""

import dataclasses
import logging
import math
import os

import keras
import tensorflow as tf
from conftest import tiny_train_config
from tensorflow.core.util import event_pb2

from pss_keras.data import pipelines as data
from pss_keras.training import driver as training
from pss_keras.training.preflight import build_samplers
from pss_keras.training.trainer import PSSTrainer, build_optimizer

CLASSES = 10
LIMIT = 10 * math.log(CLASSES)  # the guard's limit for 10 classes (23.03)


def _config(tmp_path, batch_size=16, **overrides):
    config = tiny_train_config(tmp_path / "job", "synthetic_shapes", **overrides)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=batch_size))


def _setup(config, seed=0):
    pipelines = data.Pipelines(config.data)
    keras.utils.set_random_seed(seed)
    supernet = training.build_supernet(config, pipelines.num_classes)
    sampler = build_samplers(config, supernet.space)
    trainer = PSSTrainer(supernet, weight_decay=config.weight_decay)
    optimizer = build_optimizer(config, pipelines.steps_per_epoch)
    trainer.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(trainer.trainable_variables)
    return pipelines, supernet, sampler, trainer


def tensorboard_values(log_dir: str, tag: str) -> list[float]:
    """The values of scalar ``tag`` under ``log_dir``, in step order."""
    points = []
    for root, _, files in os.walk(log_dir):
        for name in files:
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = event_pb2.Event.FromString(record.numpy())
                points += [
                    (event.step, float(tf.make_ndarray(v.tensor)))
                    for v in event.summary.value
                    if v.tag == tag
                ]
    return [value for _, value in sorted(points)]


def tensorboard_steps(log_dir: str) -> dict:
    """``{tag: sorted steps}`` of every scalar under ``log_dir``."""
    steps = {}
    for root, _, files in os.walk(log_dir):
        for name in files:
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    steps.setdefault(value.tag, []).append(int(event.step))
    return {tag: sorted(s) for tag, s in steps.items()}


def _feed(guard, losses, lr=0.05):
    for i, loss in enumerate(losses):
        guard.on_train_batch_end(i, {"largest_score": -loss, "lr": lr})


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
