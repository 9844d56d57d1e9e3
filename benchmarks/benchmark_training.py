"""Measures PSS training costs: sampler map, input pipeline, train step.

    python benchmarks/benchmark_training.py --model_name=mobilenet_v1 --batch_size=16

1. Conditional-sampler map: seconds to draw and bucket --gen_map_num subnets.
2. Input pipeline alone: augmented training images/s (Imagenette from
   ../shared/data if present, else the generated synthetic_shapes set).
3. PSS train step (largest + candidate + smallest, one optimizer step) at
   --batch_size and the maximum resolution: median ms and images/s.
Prints a table and writes JSON. The pipeline is not the bottleneck when its
images/s exceeds the step's.
"""

import itertools
import os
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pss_keras.data import pipelines as data
from pss_keras.jobs.config import (
    PRECISIONS,  # noqa: E402
    TrainConfig,
)
from pss_keras.supernet import specs
from pss_keras.training import distribution, sampling
from pss_keras.training import driver as training
from pss_keras.training.pools import TargetGrid  # noqa: E402
from pss_keras.training.trainer import PSSTrainer, build_optimizer
from pss_keras.utils import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODEL = flags.DEFINE_enum("model_name", "mobilenet_v1", list(specs.MODEL_NAMES), "Architecture.")
flags.DEFINE_alias("model", "model_name")  # its name before it agreed with train.py
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size of the train step.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed train steps (median reported).")
_PIPE_BATCHES = flags.DEFINE_integer("pipeline_batches", 40, "Batches timed in the pipeline.")
_MAP = flags.DEFINE_integer("gen_map_num", 100_000, "Subnets drawn for the map.")
_TAR = flags.DEFINE_string(
    "imagenette_tar",
    os.path.join(ROOT, "..", "shared", "data", "imagenette2-224.tar"),
    "Imagenette tar for the pipeline benchmark (synthetic data if missing).",
)
_CACHE = flags.DEFINE_string("data_cache", "/tmp/pss_keras_bench", "Where data is unpacked.")
_OUTPUT = flags.DEFINE_string("output", "bench_results/training.json", "JSON output path.")
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored"], "Strategy (multi-worker: not benchmarked)."
)
_PRECISION = flags.DEFINE_enum("mixed_precision", "none", list(PRECISIONS), "Compute dtype.")
_REPLICAS = flags.DEFINE_integer("cpu_replicas", 1, "Logical CPU devices (mirrored on CPU).")

TARGETS = {"mobilenet_v1": (110, 570, 10), "mobilenet_v2": (60, 300, 10)}


def _dataset():
    if os.path.exists(_TAR.value):
        root = os.path.join(_CACHE.value, "imagenette2")
        if not os.path.isdir(os.path.join(root, "val")):
            with tarfile.open(_TAR.value) as tar:
                tar.extractall(_CACHE.value, filter="data")
        return root, "imagenette2-224 (JPEG, 224 px)"
    return "synthetic_shapes", "synthetic_shapes (PNG, 64 px; Imagenette not found)"


def _pipeline_images_per_s():
    """Augmented 224 px images per second of the input pipeline alone."""
    dataset, description = _dataset()
    config = data.DataConfig(
        dataset=dataset,
        data_dir=_CACHE.value,
        image_size=224,
        batch_size=_BATCH.value,
        minival_examples=100,
        cache="false",
    )
    pipelines = data.Pipelines(config)
    batches = pipelines.train_epoch(0).take(_PIPE_BATCHES.value + 2)
    iterator = iter(batches)
    next(iterator), next(iterator)  # warm-up
    start = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in iterator)
    pipeline_ips = n / (time.perf_counter() - start)

    return pipeline_ips, description, config


def _train_step_ms(model, space, conditional, config, strategy) -> float:
    """Median PSS train step (largest, candidate, smallest) on random images,
    driven by ``fit`` as training is (so a mirrored strategy splits the global
    batch across its replicas)."""
    train_config = TrainConfig(job_dir="unused", model_name=model, data=config)
    with strategy.scope(), training.precision_scope(_PRECISION.value):
        net = training.build_supernet(train_config, 1000)
        trainer = PSSTrainer(net)
        optimizer = build_optimizer(train_config, 1000)
        trainer.compile(optimizer=optimizer, jit_compile=False)
        trainer.optimizer.build(trainer.trainable_variables)
    rng = np.random.default_rng(0)
    images = tf.random.uniform((_BATCH.value, 224, 224, 3), -2, 2)
    labels = tf.constant(rng.integers(0, 1000, _BATCH.value), tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    # Candidates drawn beforehand; each step assigns the next one, as the
    # training callback does.
    codes = itertools.cycle(
        [
            space.encode(conditional.sample(k, rng))
            for k in (
                conditional.available[int(rng.integers(len(conditional.available)))]
                for _ in range(16)
            )
        ]
    )
    choose = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: trainer.candidate_code.assign(next(codes))
    )

    def steps(n):
        trainer.fit(dataset, epochs=1, steps_per_epoch=n, verbose=0, callbacks=[choose])

    steps(2)  # tracing
    per_call = timing.median_ms(lambda: steps(_STEPS.value), 3, warmup=0)
    return per_call / _STEPS.value


def main(argv):
    del argv
    distribution.configure_cpu_replicas(_REPLICAS.value)  # before TF runs anything
    strategy = distribution.make_strategy(_STRATEGY.value)
    model = _MODEL.value
    space = specs.SearchSpace(model)
    start = time.perf_counter()
    conditional = sampling.ConditionalSampler.build(
        space, TargetGrid("flops", *TARGETS[model]), _MAP.value, seed=0
    )
    map_seconds = time.perf_counter() - start

    pipeline_ips, description, config = _pipeline_images_per_s()
    step_ms = _train_step_ms(model, space, conditional, config, strategy)
    step_ips = _BATCH.value / (step_ms / 1000)

    print(
        f"{model}, batch {_BATCH.value}, 224x224, {strategy.num_replicas_in_sync} replica(s) "
        f"({_STRATEGY.value}), precision {_PRECISION.value}, TF {tf.__version__}"
    )
    print(f"{'measure':<44}{'value':>14}")
    print("-" * 58)
    print(f"{'sampler map, ' + format(_MAP.value, ',') + ' subnets (s)':<44}{map_seconds:>14.2f}")
    print(f"{'input pipeline alone (images/s)':<44}{pipeline_ips:>14.1f}")
    print(f"{'PSS train step, 3 subnets (ms, median)':<44}{step_ms:>14.1f}")
    print(f"{'PSS train step throughput (images/s)':<44}{step_ips:>14.1f}")
    print(f"pipeline data: {description}")
    result = {
        "model": model,
        "batch_size": _BATCH.value,
        "map_seconds": map_seconds,
        "map_subnets": _MAP.value,
        "pipeline_images_per_s": pipeline_ips,
        "pipeline_data": description,
        "train_step_ms": step_ms,
        "train_step_images_per_s": step_ips,
        "mixed_precision": _PRECISION.value,
        "strategy": _STRATEGY.value,
        "replicas": strategy.num_replicas_in_sync,
    }
    timing.write_benchmark(_OUTPUT.value, result)


if __name__ == "__main__":
    app.run(main)
