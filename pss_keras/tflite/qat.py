"""Quantization-aware fine-tuning of one subnet (tensorflow-model-optimization).

tfmot's quantization-aware training works on tf_keras (Keras 2) functional
models only, and importing it sets ``TF_USE_LEGACY_KERAS=1`` (after which
``tf.keras`` is tf_keras). This module is the only place that imports tfmot
or tf_keras, lazily, inside `quantization_aware_subnet`: the rest of the
project stays on Keras 3 and never touches ``tf.keras``.

The subnet is rebuilt as a tf_keras model by the same `extract_subnet` code
(BN folded, pixel input), so it starts from exactly the float model's
weights; tfmot wraps every layer with fake quantization (8-bit, per-channel
weights). tfmot starts every activation range at [-6, 6] and moves it by an
EMA with decay 0.999, far too slowly for a few epochs (pixel inputs would be
clipped at 6), so the ranges are first set to the float subnet's observed
activation ranges on calibration images (as post-training quantization
does). Then the copy is fine-tuned to imitate the float subnet:
loss = KL(float subnet || quantized subnet), as the method's in-place
distillation trains subnets from a teacher's soft labels. SGD with Nesterov
momentum 0.9 and a cosine learning rate from ``lr`` to 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import tensorflow as tf

from pss_keras.supernet import extraction, specs
from pss_keras.supernet.model import BatchNormStats, Supernet
from pss_keras.utils import losses


def _import_tfmot():
    """Imports tf_keras and tfmot, restoring TF_USE_LEGACY_KERAS afterwards."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as e:  # pragma: no cover - both are in requirements.txt
        raise ImportError(
            "Quantization-aware training needs tensorflow-model-optimization and tf-keras "
            "(pip install -r requirements.txt)."
        ) from e
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tf_keras, tfmot


def quantization_aware_subnet(
    supernet: Supernet,
    config: specs.SubnetConfig,
    bn_stats: BatchNormStats,
    batches: Callable[[int], tf.data.Dataset],
    calibration: tf.data.Dataset,
    steps_per_epoch: int,
    epochs: int,
    lr: float = 0.001,
    progress: bool = True,
    name: str | None = None,
):
    """Fine-tunes a quantization-aware copy of one subnet.

    Args:
        supernet: the trained supernet.
        config: the subnet (a retained tier).
        bn_stats: its calibrated batch-norm statistics (folded into the convs).
        batches: ``epoch -> dataset`` of (pixels float32 [b, r, r, 3] in
            [0, 255] at the subnet's resolution, labels); labels are unused
            (the float subnet is the teacher).
        calibration: (pixels, labels) batches like ``batches``' that set the
            initial activation ranges (e.g. the int8 representative set).
        steps_per_epoch: batches taken from each epoch's dataset.
        epochs: number of epochs (>= 1).
        lr: peak learning rate of the cosine schedule.
        progress: show a progress bar per epoch.
        name: what the progress lines call the subnet (default: its config).

    Returns:
        ``(model, info)``: the tf_keras quantization-aware model (pixel input,
        logits output; convert it with ``tf.lite.Optimize.DEFAULT`` to get
        the int8 model) and ``{"epochs", "steps", "lr", "epoch_kl"}`` (the
        mean distillation loss of each epoch).

    Raises:
        ValueError: for ``epochs < 1``, ``steps_per_epoch < 1`` or ``lr <= 0``.
    """
    if epochs < 1:
        raise ValueError(f"QAT needs at least 1 epoch, got {epochs}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}.")
    if lr <= 0:
        raise ValueError(f"The QAT learning rate must be positive, got {lr}.")
    tf_keras, tfmot = _import_tfmot()
    teacher = extraction.extract_subnet(
        supernet, config, bn_stats, fold_bn=True, pixel_input=True, keras_module=tf_keras
    )
    student = tfmot.quantization.keras.quantize_model(teacher)
    _init_activation_ranges(teacher, student, calibration, tf_keras)
    # The input normalization is fixed preprocessing and is not trained: on
    # pixel values in [0, 255] its tiny weights get ~255x larger gradients
    # than the rest and the fine-tuning diverges within a few steps.
    frozen = {id(w) for w in student.get_layer("quant_normalize").weights}
    trainable = [v for v in student.trainable_variables if id(v) not in frozen]
    epoch_kl = _distill(
        teacher, student, trainable, batches, steps_per_epoch, epochs, lr, tf_keras,
        progress and f"QAT {name or config.name}",
    )  # fmt: skip
    info = {"epochs": epochs, "steps": epochs * steps_per_epoch, "lr": lr, "epoch_kl": epoch_kl}
    return student, info


def _distill(teacher, student, trainable, batches, steps_per_epoch, epochs, lr, tf_keras, title):
    """SGD (Nesterov, cosine from ``lr``) on KL(teacher || student); returns
    the mean loss of each epoch. ``title``: progress line prefix, or falsy."""
    optimizer = tf_keras.optimizers.SGD(
        tf_keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch),
        momentum=0.9,
        nesterov=True,
    )

    @tf.function(jit_compile=False)
    def train_step(images):
        soft = tf.nn.softmax(teacher(images, training=False))
        with tf.GradientTape() as tape:
            loss = losses.kl_divergence(soft, student(images, training=True))
        grads = tape.gradient(loss, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        return loss

    epoch_kl = []
    for epoch in range(epochs):
        bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if title else 0)
        if title:
            print(f"{title}: epoch {epoch + 1}/{epochs}")
        step_kl = []
        for step, (images, _) in enumerate(batches(epoch).take(steps_per_epoch)):
            step_kl.append(float(train_step(images)))
            bar.update(step + 1, [("kl", step_kl[-1])])
        epoch_kl.append(sum(step_kl) / max(1, len(step_kl)))
    return epoch_kl


_ACTIVATION_RANGES = ("post_activation", "output")


def _init_activation_ranges(teacher, student, calibration, tf_keras) -> None:
    """Sets every activation quantizer's [min, max] to the float model's
    observed range (0 included) of the same tensor on ``calibration``."""
    targets = {}  # teacher layer name ("__input__": the model input) -> [(min, max)]
    for layer in student.layers:
        source = getattr(layer, "layer", None)  # None: InputLayer or QuantizeLayer
        variables = {w.name.split(":")[0].rsplit("/", 1)[-1]: w for w in layer.weights}
        for base, min_var in variables.items():
            if not base.endswith("_min"):
                continue
            prefix = base[: -len("_min")]
            if source is None:
                key = "__input__"  # QuantizeLayer: quantize_layer[_N]_min
            elif prefix in _ACTIVATION_RANGES:
                key = source.name
            else:
                continue  # weight quantizers follow the weights at every step
            targets.setdefault(key, []).append((min_var, variables[f"{prefix}_max"]))
    names = [n for n in targets if n != "__input__"]
    probe = tf_keras.Model(teacher.inputs, [teacher.get_layer(n).output for n in names])
    low = {n: 0.0 for n in ["__input__", *names]}
    high = {n: 0.0 for n in ["__input__", *names]}
    seen = 0
    for images, _ in calibration:
        outputs = probe(images, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, value in zip(["__input__", *names], [images, *outputs]):
            low[name] = min(low[name], float(tf.reduce_min(value)))
            high[name] = max(high[name], float(tf.reduce_max(value)))
        seen += 1
    if not seen:
        raise ValueError("QAT needs calibration images to initialize activation ranges.")
    for name, pairs in targets.items():
        for min_var, max_var in pairs:
            min_var.assign(low[name])
            max_var.assign(high[name])


def write_saved_model(endpoints: dict, path: str) -> None:
    """A SavedModel of tf_keras models for the TFLite converter.

    Keras 3's ExportArchive does not take tf_keras models, so the QAT model
    is saved as a `tf.Module`: one signature per entry of ``endpoints``
    (``{signature name: (model, resolution)}``), each
    ``images [None, r, r, 3] float32 -> {"logits"}``.
    """
    signatures = {}
    for name, (model, r) in endpoints.items():
        spec = tf.TensorSpec([None, r, r, 3], tf.float32, name="images")
        fn = tf.function(lambda images, model=model: {"logits": model(images, training=False)})
        signatures[name] = fn.get_concrete_function(spec)
    root = tf.Module()
    root.models = [model for model, _ in endpoints.values()]
    tf.saved_model.save(root, path, signatures=signatures)
