"""Trains the tiny test config with each strategy in one process, on 2
logical CPU devices, and prints what each run chose (for
test_training_distribution).

    python tests/distributed_run.py IMAGE_FOLDER OUT_DIR

Logical devices must be configured before TensorFlow runs anything, which a
pytest process has long done: hence a process of its own.
"""

import json
import os
import random
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest's helpers

from pss_keras.training import distribution  # noqa: E402

distribution.configure_cpu_replicas(2)

from conftest import tiny_train_config  # noqa: E402

from pss_keras.training import callbacks  # noqa: E402
from pss_keras.training import driver as training  # noqa: E402


def run(folder, job_dir, strategy):
    chosen = []
    original = callbacks.PSSCallback.on_train_batch_end

    def record(self, batch, logs=None):
        original(self, batch, logs)
        chosen.append(
            {
                "config": self.candidate.config.to_dict(),
                "score": float(logs["candidate_score"]),
                "loss_max": float(logs["loss_max"]),
            }
        )

    callbacks.PSSCallback.on_train_batch_end = record
    try:
        # Every candidate from the space and pools that never fill: which
        # subnet is trained, and which subnets the pools hold, then do not
        # depend on the scores (which differ slightly between 1 and 2
        # replicas), so both can be compared exactly.
        config = tiny_train_config(
            job_dir, folder, epochs=2, strategy=strategy, p_space=(1.0, 1.0), pool_size=50
        )
        summary = training.train(config)
    finally:
        callbacks.PSSCallback.on_train_batch_end = original
    with open(os.path.join(job_dir, "checkpoints", "epoch-0002", "pss_state.json")) as f:
        state = json.load(f)
    return {"steps": chosen, "pools": state["sampler"]["pools"], "retained": summary["retained"]}


def aggregation() -> dict:
    """One PSS step on 1 replica (batch 8) and on 2 replicas whose halves are
    that same batch (global 16): every replica computes the one-replica
    gradient, so a correct cross-replica sum of loss / replicas gives the
    same update, to float rounding. Candidate != largest, momentum and
    weight decay on."""
    import keras
    import tensorflow as tf

    from pss_keras.supernet.model import Supernet
    from pss_keras.training.trainer import PSSTrainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    data = {
        "default": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        "mirrored": tf.data.Dataset.from_tensor_slices(
            (np.concatenate([x, x]), np.concatenate([y, y]))
        ).batch(16),
    }
    updates, losses, init = {}, {}, None
    for name, dataset in data.items():
        with distribution.make_strategy(name).scope():
            keras.utils.set_random_seed(0)
            net = Supernet(
                "mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(16, 32)
            )
            trainer = PSSTrainer(net, weight_decay=1e-3)
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
            trainer.compile(optimizer=optimizer, jit_compile=False)
            optimizer.build(trainer.trainable_variables)
        trainer.candidate_code.assign(net.space.encode(net.space.random(random.Random(3))))
        if init is None:
            init = [w.numpy() for w in net.trainable_weights]
        for w, value in zip(net.trainable_weights, init):
            w.assign(value)
        history = trainer.fit(dataset, epochs=1, verbose=0, shuffle=False).history
        after = [w.numpy() for w in net.trainable_weights]
        updates[name] = np.concatenate([(a - b).ravel() for a, b in zip(after, init)])
        losses[name] = history["loss_candidate"][0]
    u1, u2 = updates["default"], updates["mirrored"]
    return {
        "relative_update_difference": float(np.linalg.norm(u1 - u2) / np.linalg.norm(u1)),
        "loss_candidate": losses,
    }


if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    results = {s: run(folder, os.path.join(out, s), s) for s in ("default", "mirrored")}
    results["aggregation"] = aggregation()
    print(json.dumps(results))
