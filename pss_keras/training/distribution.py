"""Which tf.distribute strategy a run uses, and CPU replicas for testing it.

* ``default``: one device (TensorFlow's default strategy).
* ``mirrored``: `tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPU devices of `configure_cpu_replicas`); Keras ``fit`` drives it.
* ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy` over the
  hosts (or processes) that ``TF_CONFIG`` names, every local GPU of each.
  Keras 3's ``fit`` fails under it (keras-team/keras#20585), so
  `pss_keras.training.loop.fit_distributed` drives the same train step.
* ``auto``: multi_worker when ``TF_CONFIG`` names more than one task,
  mirrored when more than one GPU (or logical CPU device) is visible, else
  default.

``batch_size`` is always the global batch, split across all replicas.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from pss_keras.jobs.config import STRATEGIES


def configure_cpu_replicas(n: int) -> None:
    """Splits the CPU into ``n`` logical devices, so that ``mirrored`` runs
    on a machine without GPUs (tests, CPU-only hosts).

    Must run before TensorFlow initializes its devices (before the first op).

    Raises:
        ValueError: for ``n < 1`` or when the devices are already initialized.
    """
    if n < 1:
        raise ValueError(f"cpu_replicas must be at least 1, got {n}.")
    if n == 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as e:
        raise ValueError(
            f"cpu_replicas={n} must be set before TensorFlow runs anything ({e})."
        ) from None


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy named ``name`` (one of `STRATEGIES`).

    A multi-worker strategy must be made before TensorFlow runs anything
    else in the process (it configures the collective ops).

    Raises:
        ValueError: for an unknown name, ``mirrored`` on one device only,
            or ``multi_worker`` without a usable ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is unknown; use one of {STRATEGIES}.")
    tasks = cluster_size() if name in ("auto", "multi_worker") else 0
    if name == "multi_worker" or (name == "auto" and tasks > 1):
        if tasks < 1:
            raise ValueError(
                "strategy=multi_worker needs TF_CONFIG naming the cluster and this task, e.g. "
                '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                '"task": {"type": "worker", "index": 0}} (README: Multi-GPU and multi-host).'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = _replica_devices()
    if name == "auto":
        name = "mirrored" if len(devices) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if len(devices) < 2:
        raise ValueError(
            "strategy=mirrored needs at least 2 devices; this machine has "
            f"{devices or ['one CPU']}. Use --cpu_replicas=2 to split the CPU for a test."
        )
    return tf.distribute.MirroredStrategy(devices)


def planned_strategy(name: str = "auto") -> tuple[str, int]:
    """The strategy `make_strategy` would make and its replicas, without
    making it (a dry run must not start the collective ops).

    Returns:
        ``(strategy class name, replicas in sync)``; under multi-worker
        training the replicas are the tasks times this host's devices (the
        other hosts are assumed alike).

    Raises:
        ValueError: as `make_strategy`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is unknown; use one of {STRATEGIES}.")
    tasks = cluster_size() if name in ("auto", "multi_worker") else 0
    if name == "multi_worker" or (name == "auto" and tasks > 1):
        if tasks < 1:
            make_strategy("multi_worker")  # raises its message
        gpus = len(tf.config.list_logical_devices("GPU"))
        return "MultiWorkerMirroredStrategy", tasks * max(1, gpus)
    devices = _replica_devices()
    if name == "auto":
        name = "mirrored" if len(devices) > 1 else "default"
    if name == "default":
        return "default strategy", 1
    if len(devices) < 2:
        make_strategy("mirrored")  # raises its message
    return "MirroredStrategy", len(devices)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """``MirroredStrategy``, ``MultiWorkerMirroredStrategy`` or ``default strategy``."""
    if isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    ):
        return type(strategy).__name__
    return "default strategy"


def cluster_size() -> int:
    """Number of tasks (chief and workers) that ``TF_CONFIG`` names; 0 if unset.

    Raises:
        ValueError: if ``TF_CONFIG`` is set but is not such a JSON object.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return 0
    try:
        cluster = json.loads(raw)["cluster"]
        return len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"TF_CONFIG is not a JSON object with a 'cluster' of 'worker' (and 'chief') "
            f"addresses: {raw[:200]!r}."
        ) from None


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the job's files: the ``chief`` task, or
    worker 0 when the cluster has no chief (Keras's convention); always
    true outside multi-worker training."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _replica_devices() -> list[str]:
    """GPUs if there are several, else the logical CPU devices."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(gpus) > 1:
        return gpus
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return cpus if len(cpus) > 1 else gpus
