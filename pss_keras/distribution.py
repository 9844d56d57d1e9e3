"""Which tf.distribute strategy a run uses, and CPU replicas for testing it.

* ``default``: one device (TensorFlow's default strategy).
* ``mirrored``: `tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPU devices of `configure_cpu_replicas`); Keras ``fit`` drives it.
  ``batch_size`` stays the global batch, split across the replicas.
* ``auto``: mirrored when more than one GPU (or logical CPU device) is
  visible, else default.

Multi-worker training (``MultiWorkerMirroredStrategy``) is not offered yet:
Keras 3's ``fit`` fails under it (keras-team/keras#20585), and the custom
loop around the same train step that it needs is not written yet.
"""

from __future__ import annotations

import tensorflow as tf

from pss_keras.run_config import STRATEGIES


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

    Raises:
        ValueError: for an unknown name, or ``mirrored`` on one device only.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is unknown; use one of {STRATEGIES}.")
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


def _replica_devices() -> list[str]:
    """GPUs if there are several, else the logical CPU devices."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(gpus) > 1:
        return gpus
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return cpus if len(cpus) > 1 else gpus
