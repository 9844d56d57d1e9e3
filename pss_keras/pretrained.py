"""Weights from `keras.applications` MobileNet / MobileNetV2 into a supernet.

The supernet uses the same layer structure and 'same' padding as
keras.applications, so with the copied weights its largest subnet reproduces
``keras.applications.MobileNet(alpha=1.0)`` (or ``MobileNetV2``) exactly at
224x224. This proves the architecture and lets users start PSS training from
ImageNet-pretrained weights where they have them (``weights="imagenet"``
needs a download, or a local weights file passed as ``weights=path``).
"""

from __future__ import annotations

import keras
import numpy as np

from pss_keras import blocks
from pss_keras.supernet import Supernet


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


def load_keras_applications_weights(supernet: Supernet, source: keras.Model) -> None:
    """Copies the weights of a keras.applications model into ``supernet``.

    Args:
        supernet: a full-width supernet (``width_scale=1.0``) of the same
            architecture and number of classes.
        source: ``keras.applications.MobileNet(alpha=1.0)`` for a
            MobileNetV1 supernet, ``keras.applications.MobileNetV2(alpha=1.0)``
            for a MobileNetV2 one, built with ``include_top=True``.

    Raises:
        ValueError: if a layer is missing or a weight shape does not match
            (wrong architecture, alpha, class count or ``include_top=False``).
    """
    name_map = keras_applications_name_map(supernet.model_name)
    source_layers = {layer.name: layer for layer in source.layers}
    for ours, theirs in name_map.items():
        if theirs not in source_layers:
            raise ValueError(
                f"{source.name} has no layer {theirs!r} (for supernet layer {ours!r}); pass "
                f"keras.applications.{'MobileNet' if supernet.model_name == 'mobilenet_v1' else 'MobileNetV2'}"
                "(alpha=1.0, include_top=True) matching the supernet's architecture."
            )
        values = [np.asarray(w) for w in source_layers[theirs].get_weights()]
        target = supernet.get_layer_by_name(ours)
        if ours == "classifier" and values and values[0].ndim == 4:
            values[0] = values[0].reshape(values[0].shape[-2:])  # 1x1 conv -> dense
        expected = [tuple(w.shape) for w in target.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"Weight shapes of {theirs!r} {[v.shape for v in values]} do not match supernet "
                f"layer {ours!r} {expected}: the source must have alpha=1.0, the supernet "
                f"width_scale=1.0 and the same num_classes ({supernet.num_classes})."
            )
        target.set_weights(values)
