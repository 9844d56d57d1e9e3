"""Start a supernet from pretrained weights: keras.applications or another run.

The supernet uses the same layer structure, 'same' padding and BN epsilon
as keras.applications (its defaults), so with the copied weights its largest
subnet reproduces ``keras.applications.MobileNet(alpha=a)`` (or
``MobileNetV2``) exactly at ``width_scale=a``. `initialize_supernet` (``--init_from``) copies weights
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
architecture or width is refused. A source of other numerics (padding,
BN epsilon: keras.applications' into a "symmetric" supernet, or another
job's) is copied as it is, and the description says so.

keras.applications' side (alphas, files, layer names, the copy):
`pss_keras.supernet.keras_applications`.
"""

from __future__ import annotations

import json
import os

import keras

from pss_keras.jobs import directory as jobs
from pss_keras.supernet import blocks, specs
from pss_keras.supernet.keras_applications import (
    APP_NAMES,
    CLASSIFIER_LAYERS,
    IMAGENET_RESOLUTIONS,
    LAST_STAGE_LAYERS,
    SIGNATURE_LAYERS,
    WEIGHTS_URLS,
    alpha_of_file,
    format_alpha,
    imagenet_file_name,
    keras_alpha,
    keras_cache_dir,
    load_application,
    load_keras_applications_weights,
    read_legacy_h5,
)
from pss_keras.supernet.model import Supernet


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


def _numerics_note(supernet: Supernet, padding: str, bn_epsilon: float, where: str) -> str:
    """``""``, or a note that the source's padding and BN epsilon (its
    outputs' numerics) differ from the supernet's, which apply from now on."""
    if (padding, float(bn_epsilon)) == (supernet.padding, supernet.bn_epsilon):
        return ""
    return (
        f"; {where} has {padding} padding and BN epsilon {bn_epsilon:g}, this run "
        f"{supernet.padding} and {supernet.bn_epsilon:g} (weights copied as they are)"
    )


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
    what = (
        f"keras.applications {APP_NAMES[model_name]} alpha {format_alpha(alpha)} ImageNet weights"
    )
    hint = "delete it from Keras's cache to download it again"
    source = load_application(
        model_name, alpha, path, 1000, (resolution, resolution, 3), what, hint
    )
    load_keras_applications_weights(supernet, source, classifier=supernet.num_classes == 1000)
    note = _numerics_note(supernet, "same", 1e-3, "keras.applications")
    return f"{what} ({path}); {_classifier_note(supernet, 1000, 'file')}{note}"


def _from_file(supernet: Supernet, path: str) -> str:
    model_name = supernet.model_name
    shapes = read_legacy_h5(path)
    file_model = next((m for m, layer in SIGNATURE_LAYERS.items() if layer in shapes), None)
    if file_model is None:
        raise ValueError(
            f"--init_from={path} holds neither keras.applications MobileNet nor MobileNetV2 "
            f"weights (it has no {SIGNATURE_LAYERS[model_name]!r} layer)."
        )
    if file_model != model_name:
        raise ValueError(
            f"--init_from={path} holds keras.applications {APP_NAMES[file_model]} weights "
            f"({file_model}); this run's supernet is {model_name}."
        )
    file_alpha, file_width = alpha_of_file(model_name, shapes)
    app = APP_NAMES[model_name]
    layer, stage = LAST_STAGE_LAYERS[model_name]
    ours = blocks.stage_channels(supernet.space.largest(), supernet.width_scale)[stage]
    if file_width != ours:
        alpha_text = (
            "an unknown alpha" if file_alpha is None else f"alpha {format_alpha(file_alpha)}"
        )
        raise ValueError(
            f"--init_from={path} holds {app} {alpha_text} weights ({layer}: {file_width} "
            f"channels) but this run's {model_name} supernet has width_scale "
            f"{format_alpha(supernet.width_scale)} ({ours} channels there): use weights for alpha "
            f"{format_alpha(supernet.width_scale)}, or the file's width (--width_scale)."
        )
    alpha = keras_alpha(supernet)
    classifier = shapes.get(CLASSIFIER_LAYERS[model_name]) or []
    classes = classifier[-1][0] if classifier else None
    what = f"keras.applications {app} alpha {format_alpha(alpha)} weights"
    hint = f"give a keras.applications {app} weights file"
    source = load_application(model_name, alpha, path, classes, None, what, hint)
    load_keras_applications_weights(supernet, source, classifier=classes == supernet.num_classes)
    note = _numerics_note(supernet, "same", 1e-3, "keras.applications")
    return f"{what} from {path}; {_classifier_note(supernet, classes, 'file')}{note}"


def _describe_width(model_name: str, width_scale: float, width_range) -> str:
    return f"{model_name} at width_scale {format_alpha(width_scale)}, width_range max {format_alpha(width_range[1])}"


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
    note = _numerics_note(supernet, config.padding, config.bn_epsilon, "the job")
    return f"{what}; {_classifier_note(supernet, num_classes, 'job')}{note}"


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
