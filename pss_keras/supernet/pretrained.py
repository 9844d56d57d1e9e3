"""Start a supernet from pretrained weights: keras.applications or another run.

The supernet uses the same layer structure and 'same' padding as
keras.applications, so with the copied weights its largest subnet reproduces
``keras.applications.MobileNet(alpha=a)`` (or ``MobileNetV2``) exactly at
``width_scale=a``. `initialize_supernet` (``--init_from``) copies weights
into a freshly built supernet from one of three sources:

* ``imagenet``: keras.applications' ImageNet weights for the supernet's
  width, fetched by Keras's own ``keras.utils.get_file`` (the file name, URL
  and cache folder keras.applications uses; a cached file needs no network).
* a keras.applications weights file (the legacy Keras ``.h5`` that
  keras.applications downloads, e.g. ``mobilenet_2_5_224_tf.h5``), loaded
  by keras.applications' ``weights=path``.
* a job directory: another run's ``supernet.weights.h5``.

A different number of classes re-initializes the classifier only; the
resolution range may differ (no weight depends on it); a different
architecture or width is refused.

Which widths have keras.applications weights: MobileNet (V1) at every alpha
keras.applications has (0.25, 0.5, 0.75, 1.0), MobileNetV2 at alpha 1.0, 1.3
and 1.4. keras.applications' MobileNetV2 keeps its head conv at 1280 channels
for alpha < 1 (0.35, 0.5, 0.75), where the supernet scales it with
``width_scale`` (`blocks.stage_channels`): those alphas are refused
(`keras_alpha`) rather than imported partly.
"""

from __future__ import annotations

import json
import os
import tempfile

import h5py
import keras
import numpy as np

from pss_keras.jobs import directory as jobs
from pss_keras.supernet import blocks, specs
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
_SIGNATURE_LAYERS = {"mobilenet_v1": "conv_dw_1", "mobilenet_v2": "expanded_conv_depthwise"}
# The last table stage's pointwise conv (its width tells a file's alpha).
_LAST_STAGE_LAYERS = {"mobilenet_v1": ("conv_pw_13", 13), "mobilenet_v2": ("block_16_project", 7)}
_CLASSIFIERS = {"mobilenet_v1": "conv_preds", "mobilenet_v2": "predictions"}


def _app(model_name: str):
    return getattr(keras.applications, APP_NAMES[model_name])


def _fmt(value: float) -> str:
    return str(float(value))


# --------------------------------------------------------------------------
# Layer names and widths.


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
        fits_text = f"{app} weights fit width_scale {', '.join(_fmt(a) for a in fits)}"
        if width_max != 1.0:
            fits_text += f" at width_range max {_fmt(width_max)}"
    else:
        fits_text = f"no {app} weights fit width_range max {_fmt(width_max)} (use max 1.0)"
    alpha = next((a for a in KERAS_ALPHAS[model_name] if abs(a - width) < 1e-9), None)
    if alpha is None:
        raise ValueError(
            f"keras.applications has no {app} alpha {_fmt(width)} (it has "
            f"{', '.join(_fmt(a) for a in KERAS_ALPHAS[model_name])}) for this {model_name} "
            f"supernet's width_scale {_fmt(width)}; {fits_text}."
        )
    ours = blocks.stage_channels(supernet.space.largest(), width)
    theirs = keras_applications_stage_channels(model_name, alpha)
    for stage, (o, t) in enumerate(zip(ours, theirs)):
        if o != t:
            raise ValueError(
                f"keras.applications {app} alpha {_fmt(alpha)} does not fit this {model_name} "
                f"supernet (width_scale {_fmt(width)}, width_range max {_fmt(width_max)}): "
                f"{_stage_name(model_name, stage)} has {t} channels there, {o} in the "
                f"supernet; {fits_text}."
            )
    return alpha


# --------------------------------------------------------------------------
# Copying weights.


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
                f"keras.applications.{app}(alpha={_fmt(supernet.width_scale)}, include_top=True) "
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
                f"alpha = the supernet's width_scale ({_fmt(supernet.width_scale)}) and the same "
                f"num_classes ({supernet.num_classes})."
            )
        copies.append((target, values))
    for target, values in copies:  # all or nothing: every shape was checked first
        target.set_weights(values)


def reinitialize_classifier(supernet: Supernet) -> None:
    """Draws the classifier afresh with its initializers (the rest is kept)."""
    layer = supernet.get_layer_by_name("classifier")
    for variable, initializer in (
        (layer.kernel, layer.kernel_initializer),
        (layer.bias, layer.bias_initializer),
    ):
        variable.assign(initializer(tuple(variable.shape), dtype=variable.dtype))


def _classifier_note(supernet: Supernet, source_classes: int | None, where: str) -> str:
    if source_classes == supernet.num_classes:
        return f"classifier copied ({source_classes} classes)"
    reinitialize_classifier(supernet)
    has = "no classifier" if source_classes is None else f"{source_classes}"
    return f"classifier re-initialized ({supernet.num_classes} classes, {where} has {has})"


# --------------------------------------------------------------------------
# The sources.


def imagenet_file_name(model_name: str, alpha: float, resolution: int) -> str:
    """The file keras.applications downloads for ``weights="imagenet"``
    (``include_top=True``) at ``alpha`` and ``resolution``."""
    if model_name == "mobilenet_v1":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        return f"mobilenet_{alpha_text}_{resolution}_tf.h5"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{resolution}.h5"


def keras_cache_dir(cache_dir: str | None = None) -> str:
    """The folder where ``keras.utils.get_file(..., cache_subdir="models")``
    keeps (and looks for) a file: ``$KERAS_HOME/models`` or
    ``~/.keras/models``, or ``/tmp/.keras/models`` when that is not writable
    (as get_file decides)."""
    if cache_dir is None:
        try:
            from keras.src.backend.config import keras_home

            cache_dir = keras_home()
        except ImportError:  # pragma: no cover - another Keras layout
            cache_dir = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    base = os.path.expanduser(cache_dir)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(base, "models")


def _imagenet_resolution(supernet: Supernet) -> int:
    """The supernet's largest resolution if keras.applications has weights
    trained at it, else 224 (keras.applications' default)."""
    top = supernet.resolution_range[1]
    return top if top in IMAGENET_RESOLUTIONS[supernet.model_name] else 224


def _from_imagenet(supernet: Supernet, cache_dir: str | None) -> str:
    model_name = supernet.model_name
    alpha = keras_alpha(supernet)
    resolution = _imagenet_resolution(supernet)
    fname = imagenet_file_name(model_name, alpha, resolution)
    url = WEIGHTS_URLS[model_name] + fname
    folder = keras_cache_dir(cache_dir)
    try:
        path = keras.utils.get_file(fname, url, cache_subdir="models", cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - get_file raises bare Exception offline
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"--init_from=imagenet needs {fname}, which is not in Keras's cache and could not "
            f"be downloaded ({reason}): put that file (from {url}) in {folder}/ and run again."
        ) from None
    what = f"keras.applications {APP_NAMES[model_name]} alpha {_fmt(alpha)} ImageNet weights"
    hint = "delete it from Keras's cache to download it again"
    source = _load_app(model_name, alpha, path, 1000, (resolution, resolution, 3), what, hint)
    load_keras_applications_weights(supernet, source, classifier=supernet.num_classes == 1000)
    return f"{what} ({path}); {_classifier_note(supernet, 1000, 'file')}"


def _load_app(model_name, alpha, path, classes, input_shape, what, hint):
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


def _read_legacy_h5(path: str) -> dict[str, list[tuple[int, ...]]]:
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


def _file_alpha(model_name: str, shapes) -> tuple[float | None, int]:
    """The alpha a keras.applications file was built with (None if no known
    one) and the width of its last table stage, which tells it."""
    layer, stage = _LAST_STAGE_LAYERS[model_name]
    width = shapes[layer][0][-1] if shapes.get(layer) else -1
    for alpha in KERAS_ALPHAS[model_name]:
        if keras_applications_stage_channels(model_name, alpha)[stage] == width:
            return alpha, width
    return None, width


def _from_file(supernet: Supernet, path: str) -> str:
    model_name = supernet.model_name
    shapes = _read_legacy_h5(path)
    file_model = next((m for m, layer in _SIGNATURE_LAYERS.items() if layer in shapes), None)
    if file_model is None:
        raise ValueError(
            f"--init_from={path} holds neither keras.applications MobileNet nor MobileNetV2 "
            f"weights (it has no {_SIGNATURE_LAYERS[model_name]!r} layer)."
        )
    if file_model != model_name:
        raise ValueError(
            f"--init_from={path} holds keras.applications {APP_NAMES[file_model]} weights "
            f"({file_model}); this run's supernet is {model_name}."
        )
    file_alpha, file_width = _file_alpha(model_name, shapes)
    app = APP_NAMES[model_name]
    layer, stage = _LAST_STAGE_LAYERS[model_name]
    ours = blocks.stage_channels(supernet.space.largest(), supernet.width_scale)[stage]
    if file_width != ours:
        alpha_text = "an unknown alpha" if file_alpha is None else f"alpha {_fmt(file_alpha)}"
        raise ValueError(
            f"--init_from={path} holds {app} {alpha_text} weights ({layer}: {file_width} "
            f"channels) but this run's {model_name} supernet has width_scale "
            f"{_fmt(supernet.width_scale)} ({ours} channels there): use weights for alpha "
            f"{_fmt(supernet.width_scale)}, or the file's width (--width_scale)."
        )
    alpha = keras_alpha(supernet)
    classifier = shapes.get(_CLASSIFIERS[model_name]) or []
    classes = classifier[-1][0] if classifier else None
    what = f"keras.applications {app} alpha {_fmt(alpha)} weights"
    hint = f"give a keras.applications {app} weights file"
    source = _load_app(model_name, alpha, path, classes, None, what, hint)
    load_keras_applications_weights(supernet, source, classifier=classes == supernet.num_classes)
    return f"{what} from {path}; {_classifier_note(supernet, classes, 'file')}"


def _describe_width(model_name: str, width_scale: float, width_range) -> str:
    return (
        f"{model_name} at width_scale {_fmt(width_scale)}, width_range max {_fmt(width_range[1])}"
    )


def _from_job(supernet: Supernet, job_dir: str) -> str:
    config = jobs.read_run_config(job_dir)
    path = os.path.join(job_dir, jobs.WEIGHTS)
    if not os.path.exists(path):
        raise ValueError(
            f"--init_from={job_dir} has no {jobs.WEIGHTS} (a finished training run writes it)."
        )
    classes_path = os.path.join(job_dir, jobs.CLASSES)
    try:
        with open(classes_path) as f:
            num_classes = len(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--init_from={job_dir}: {classes_path} is missing or damaged ({e}), so the "
            "number of classes of its supernet is unknown."
        ) from None
    job_largest = specs.SearchSpace(
        config.model_name,
        config.resolution_range,
        config.resolution_step,
        config.width_range,
        config.width_scale,
        num_classes,
    ).largest()
    theirs = (
        config.model_name,
        blocks.stage_channels(job_largest, config.width_scale),
    )
    ours = (
        supernet.model_name,
        blocks.stage_channels(supernet.space.largest(), supernet.width_scale),
    )
    if theirs != ours:
        raise ValueError(
            f"--init_from={job_dir} trained a "
            f"{_describe_width(config.model_name, config.width_scale, config.width_range)} "
            "supernet; this run's is "
            f"{_describe_width(supernet.model_name, supernet.width_scale, supernet.width_range)}: "
            "use the job's --model_name, --width_scale and --width_mult_range, or another job."
        )
    source = Supernet(**config.supernet_kwargs(num_classes))
    try:
        source.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py and Keras raise many kinds
        reason = " ".join(str(e).split())
        raise ValueError(f"--init_from={job_dir}: {path} could not be loaded ({reason}).") from None
    copy_classifier = num_classes == supernet.num_classes
    for layer in supernet.switchable_layers:
        if layer.name == "classifier" and not copy_classifier:
            continue
        values = source.get_layer_by_name(layer.name).get_weights()
        layer.set_weights(values)
    what = (
        f"the supernet of job {job_dir} ({jobs.WEIGHTS}; "
        f"{_describe_width(config.model_name, config.width_scale, config.width_range)})"
    )
    return f"{what}; {_classifier_note(supernet, num_classes, 'job')}"


def initialize_supernet(supernet: Supernet, init_from: str, cache_dir: str | None = None) -> str:
    """Copies pretrained weights into ``supernet`` (``--init_from``).

    Args:
        supernet: a freshly built supernet (its variables exist once built).
        init_from: ``"imagenet"`` (keras.applications' ImageNet weights for
            the supernet's architecture and width, downloaded and cached by
            Keras), the path of a keras.applications weights file (legacy
            Keras ``.h5``, ``include_top`` or not), or a job directory
            (another run's ``supernet.weights.h5``).
        cache_dir: Keras's cache folder for ``imagenet`` (``get_file``'s
            ``cache_dir``; default ``$KERAS_HOME`` or ``~/.keras``); the
            file lies in its ``models/``.

    Returns:
        One line saying where the weights came from and what happened to
        the classifier (copied, or re-initialized for another class count).

    Raises:
        ValueError: one line: an unknown source, a file that is missing,
            unreadable or of another format, a source of another
            architecture or width (naming both), a width keras.applications
            has no matching weights for, or ``imagenet`` offline without the
            file in Keras's cache (naming the file and the folder to put it in).
    """
    if init_from == "imagenet":
        return _from_imagenet(supernet, cache_dir)
    path = os.path.expanduser(init_from)
    if os.path.isdir(path):
        return _from_job(supernet, path)
    if os.path.isfile(path):
        return _from_file(supernet, path)
    raise ValueError(
        f"--init_from={init_from}: no such file or directory; give imagenet, a "
        "keras.applications .h5 weights file or a job directory."
    )
