"""keras.applications' MobileNets as a source of supernet weights.

The supernet uses the same layer structure and (by default) 'same' padding
and BN epsilon as keras.applications, so with the copied weights its
largest subnet reproduces ``keras.applications.MobileNet(alpha=a)`` (or
``MobileNetV2``) exactly at ``width_scale=a``. This module knows keras.applications' side: which
alphas and resolutions have ImageNet weights, its files' names, URLs and
cache folder, its layer names (`keras_applications_name_map`), how to read
a legacy ``.h5`` file's alpha, and the copy itself
(`load_keras_applications_weights`). Starting a run from such weights:
`pss_keras.supernet.pretrained.initialize_supernet`.

Which widths have keras.applications weights: MobileNet (V1) at every alpha
keras.applications has (0.25, 0.5, 0.75, 1.0), MobileNetV2 at alpha 1.0, 1.3
and 1.4. keras.applications' MobileNetV2 keeps its head conv at 1280 channels
for alpha < 1 (0.35, 0.5, 0.75), where the supernet scales it with
``width_scale`` (`blocks.stage_channels`): those alphas are refused
(`keras_alpha`) rather than imported partly.
"""

from __future__ import annotations

import os
import tempfile

import h5py
import keras
import numpy as np

from pss_keras.supernet import blocks
from pss_keras.supernet.model import Supernet

# The alphas keras.applications builds ImageNet weights for.
KERAS_ALPHAS = {
    "mobilenet_v1": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
}


# The input sizes keras.applications has ImageNet weights for.
IMAGENET_RESOLUTIONS = {
    "mobilenet_v1": (128, 160, 192, 224),
    "mobilenet_v2": (96, 128, 160, 192, 224),
}


# keras/src/applications/mobilenet.py and mobilenet_v2.py: BASE_WEIGHT_PATH.
WEIGHTS_URLS = {
    "mobilenet_v1": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/",
    "mobilenet_v2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
}


APP_NAMES = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2"}


# A layer that only this architecture's keras.applications files have.
SIGNATURE_LAYERS = {"mobilenet_v1": "conv_dw_1", "mobilenet_v2": "expanded_conv_depthwise"}


# The last table stage's pointwise conv (its width tells a file's alpha).
LAST_STAGE_LAYERS = {"mobilenet_v1": ("conv_pw_13", 13), "mobilenet_v2": ("block_16_project", 7)}


CLASSIFIER_LAYERS = {"mobilenet_v1": "conv_preds", "mobilenet_v2": "predictions"}


def _app(model_name: str):
    return getattr(keras.applications, APP_NAMES[model_name])


def format_alpha(value: float) -> str:
    return str(float(value))


def _mbv1_names(plan_names) -> dict[str, str]:
    names = {"stem_conv": "conv1", "classifier": "conv_preds"}
    for name in plan_names:
        if name.startswith("block_"):
            _, i, kind = name.split("_", 2)
            names[name] = f"conv_{'dw' if kind == 'depthwise' else 'pw'}_{i}"
    out = dict(names)
    for ours, theirs in names.items():
        if ours != "classifier":
            out[f"{ours}_bn"] = f"{theirs}_bn"
    return out


def _mbv2_names(plan_names) -> dict[str, str]:
    names = {
        "stem_conv": "Conv1",
        "stem_conv_bn": "bn_Conv1",
        "head_conv": "Conv_1",
        "head_conv_bn": "Conv_1_bn",
        "classifier": "predictions",
    }
    for name in plan_names:
        if name.startswith("block_"):
            _, i, kind = name.split("_", 2)
            prefix = "expanded_conv" if i == "1" else f"block_{int(i) - 1}"
            names[name] = f"{prefix}_{kind}"
            names[f"{name}_bn"] = f"{prefix}_{kind}_BN"
    return names


def keras_applications_name_map(model_name: str) -> dict[str, str]:
    """Supernet layer name -> keras.applications layer name."""
    plan_names = [layer.name for layer in blocks.layer_plan(model_name)]
    if model_name == "mobilenet_v1":
        return _mbv1_names(plan_names)
    return _mbv2_names(plan_names)


def keras_applications_stage_channels(model_name: str, alpha: float) -> tuple[int, ...]:
    """The width of every stage of keras.applications' model at ``alpha``
    (the stages of `blocks.stage_channels`), by keras.applications' rules.

    MobileNet: ``int(base * alpha)`` (no rounding). MobileNetV2: the stem
    ``make_divisible(32 * alpha)``, a block ``make_divisible(int(base *
    alpha))``, the head conv 1280 for ``alpha <= 1`` and
    ``make_divisible(1280 * alpha)`` above.
    """
    base = blocks.ARCH_SPECS[model_name].base_channels
    if model_name == "mobilenet_v1":
        return tuple(int(b * alpha) for b in base)
    head = blocks.make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    stem = blocks.make_divisible(32 * alpha)
    return (stem, *(blocks.make_divisible(int(b * alpha)) for b in base[1:-1]), head)


def _stage_name(model_name: str, stage: int) -> str:
    if stage == 0:
        return "stage 0 (stem conv)"
    if stage == blocks.ARCH_SPECS[model_name].head_stage:
        return f"stage {stage} (head conv)"
    return f"stage {stage}"


def _matching_alphas(model_name: str, width_range_max: float) -> list[float]:
    """The keras.applications alphas whose channels equal a supernet's at
    ``width_scale=alpha`` with this largest stage multiplier."""
    mults = [width_range_max] * blocks.ARCH_SPECS[model_name].num_stages
    return [
        a
        for a in KERAS_ALPHAS[model_name]
        if tuple(int(c) for c in blocks.stage_channels_np(model_name, mults, a)[0])
        == keras_applications_stage_channels(model_name, a)
    ]


def keras_alpha(supernet: Supernet) -> float:
    """The keras.applications alpha whose weights fit ``supernet``.

    Its largest subnet's channels (`blocks.stage_channels`) must equal
    keras.applications' at ``alpha = width_scale``, stage by stage.

    Raises:
        ValueError: one line, if keras.applications has no such alpha or its
            channels differ from the supernet's (naming the first stage that
            differs and the widths that fit).
    """
    model_name, width = supernet.model_name, supernet.width_scale
    app = APP_NAMES[model_name]
    width_max = supernet.width_range[1]
    fits = _matching_alphas(model_name, width_max)
    if fits:
        fits_text = f"{app} weights fit width_scale {', '.join(format_alpha(a) for a in fits)}"
        if width_max != 1.0:
            fits_text += f" at width_range max {format_alpha(width_max)}"
    else:
        fits_text = f"no {app} weights fit width_range max {format_alpha(width_max)} (use max 1.0)"
    alpha = next((a for a in KERAS_ALPHAS[model_name] if abs(a - width) < 1e-9), None)
    if alpha is None:
        raise ValueError(
            f"keras.applications has no {app} alpha {format_alpha(width)} (it has "
            f"{', '.join(format_alpha(a) for a in KERAS_ALPHAS[model_name])}) for this {model_name} "
            f"supernet's width_scale {format_alpha(width)}; {fits_text}."
        )
    ours = blocks.stage_channels(supernet.space.largest(), width)
    theirs = keras_applications_stage_channels(model_name, alpha)
    for stage, (o, t) in enumerate(zip(ours, theirs)):
        if o != t:
            raise ValueError(
                f"keras.applications {app} alpha {format_alpha(alpha)} does not fit this {model_name} "
                f"supernet (width_scale {format_alpha(width)}, width_range max {format_alpha(width_max)}): "
                f"{_stage_name(model_name, stage)} has {t} channels there, {o} in the "
                f"supernet; {fits_text}."
            )
    return alpha


def load_keras_applications_weights(
    supernet: Supernet, source: keras.Model, classifier: bool = True
) -> None:
    """Copies the weights of a keras.applications model into ``supernet``.

    Args:
        supernet: a supernet of the same architecture whose width_scale is
            the source's alpha (see `keras_alpha`).
        source: ``keras.applications.MobileNet(alpha=width_scale)`` for a
            MobileNetV1 supernet, ``MobileNetV2`` for a MobileNetV2 one.
        classifier: also copy the classifier (the source then needs
            ``include_top=True`` and the supernet's number of classes);
            false leaves the supernet's classifier as it is.

    Raises:
        ValueError: if a layer is missing or a weight shape does not match
            (wrong architecture, alpha, class count or ``include_top=False``);
            nothing is copied then.
    """
    name_map = keras_applications_name_map(supernet.model_name)
    source_layers = {layer.name: layer for layer in source.layers}
    app = APP_NAMES[supernet.model_name]
    copies = []
    for ours, theirs in name_map.items():
        if ours == "classifier" and not classifier:
            continue
        if theirs not in source_layers:
            raise ValueError(
                f"{source.name} has no layer {theirs!r} (for supernet layer {ours!r}); pass "
                f"keras.applications.{app}(alpha={format_alpha(supernet.width_scale)}, include_top=True) "
                "matching the supernet's architecture."
            )
        values = [np.asarray(w) for w in source_layers[theirs].get_weights()]
        target = supernet.get_layer_by_name(ours)
        if ours == "classifier" and values and values[0].ndim == 4:
            values[0] = values[0].reshape(values[0].shape[-2:])  # 1x1 conv -> dense
        expected = [tuple(w.shape) for w in target.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"Weight shapes of {theirs!r} {[v.shape for v in values]} do not match supernet "
                f"layer {ours!r} {expected}: the source must be keras.applications.{app} with "
                f"alpha = the supernet's width_scale ({format_alpha(supernet.width_scale)}) and the same "
                f"num_classes ({supernet.num_classes})."
            )
        copies.append((target, values))
    for target, values in copies:  # all or nothing: every shape was checked first
        target.set_weights(values)


def imagenet_file_name(model_name: str, alpha: float, resolution: int) -> str:
    """The file keras.applications downloads for ``weights="imagenet"``
    (``include_top=True``) at ``alpha`` and ``resolution``."""
    if model_name == "mobilenet_v1":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        return f"mobilenet_{alpha_text}_{resolution}_tf.h5"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{resolution}.h5"


def keras_home() -> str:
    """Keras's home folder, where ``keras.utils.get_file`` caches by default.

    Keras 3 has no public accessor for it; this is the one place that reads
    the private ``keras.src.backend.config.keras_home`` (a test checks it
    against ``KERAS_HOME``, so a Keras that moves it fails loudly there).

    Raises:
        RuntimeError: naming the Keras version, if the private function is gone.
    """
    try:
        from keras.src.backend.config import keras_home as private_keras_home
    except ImportError as e:
        raise RuntimeError(
            f"keras {keras.__version__} has no keras.src.backend.config.keras_home (a private "
            "API pss_keras reads to find keras.utils.get_file's cache); pass cache_dir= or "
            "use the Keras version in requirements.txt."
        ) from e
    return private_keras_home()


def keras_cache_dir(cache_dir: str | None = None) -> str:
    """The folder where ``keras.utils.get_file(..., cache_subdir="models")``
    keeps (and looks for) a file: ``$KERAS_HOME/models`` or
    ``~/.keras/models``, or ``/tmp/.keras/models`` when that is not writable
    (as get_file decides)."""
    if cache_dir is None:
        cache_dir = keras_home()
    base = os.path.expanduser(cache_dir)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(base, "models")


def load_application(model_name, alpha, path, classes, input_shape, what, hint):
    """keras.applications' model at ``alpha`` with ``weights=path``."""
    try:
        return _app(model_name)(
            alpha=alpha,
            weights=path,
            include_top=classes is not None,
            classes=classes or 1000,
            input_shape=input_shape,
            classifier_activation=None,
        )
    except (ValueError, OSError, KeyError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"{path} could not be loaded as {what}: {reason}; {hint}.") from None


def read_legacy_h5(path: str) -> dict[str, list[tuple[int, ...]]]:
    """``{layer name: [weight shapes]}`` of a legacy Keras ``.h5`` weights
    file (the format keras.applications downloads).

    Raises:
        ValueError: one line, for a file that is unreadable or of another format.
    """
    try:
        with h5py.File(path, "r") as f:
            group = f
            if "layer_names" not in f.attrs and "model_weights" in f:
                group = f["model_weights"]
            if "layer_names" not in group.attrs:
                raise ValueError(
                    f"--init_from={path} is not a keras.applications weights file (a legacy "
                    "Keras .h5 with layer_names); for another run's supernet pass its job "
                    "directory."
                )
            shapes = {}
            for name in group.attrs["layer_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                layer = group[name]
                weight_names = layer.attrs.get("weight_names", [])
                shapes[name] = [
                    tuple(layer[w.decode() if isinstance(w, bytes) else str(w)].shape)
                    for w in weight_names
                ]
            return shapes
    except (OSError, KeyError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(
            f"--init_from={path} is not a readable HDF5 weights file ({reason})."
        ) from None


def alpha_of_file(model_name: str, shapes) -> tuple[float | None, int]:
    """The alpha a keras.applications file was built with (None if no known
    one) and the width of its last table stage, which tells it."""
    layer, stage = LAST_STAGE_LAYERS[model_name]
    width = shapes[layer][0][-1] if shapes.get(layer) else -1
    for alpha in KERAS_ALPHAS[model_name]:
        if keras_applications_stage_channels(model_name, alpha)[stage] == width:
            return alpha, width
    return None, width
