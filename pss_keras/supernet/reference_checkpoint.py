"""The official PSS-Net supernets (PyTorch checkpoints) as our `Supernet`.

The official code (github chenbong/PSS-Net) saves a supernet with
``torch.save``: a dict whose ``'model'`` is the (DataParallel) state dict
and whose ``'arch_pools'`` holds the subnet pools found in training, keyed
by the string of the reference's own config dicts. This module maps such a
file onto a `Supernet` built as the reference computes (``padding=
"symmetric"``, ``bn_epsilon=1e-5``, its search space) so that every subnet
gives the reference's logits:

* `reference_subnet`: one of the reference's config dicts (or its string, a
  pool key) as a `SubnetConfig`. The reference's ``stage_cout_mults`` are our
  ``stage_width_mults`` one for one: both give stage ``i`` the width
  ``make_divisible(base[i] * mult[i], 8)`` with the same base channels
  (MobileNetV2's expand conv ``6 x`` its input width, its 1280-wide head conv
  unswitched, so the 9th multiplier has no effect in either).
* `reference_weights`: the state dict mapped onto the layers of the plan,
  each layer's keys found by walking `blocks.plan` against the reference's
  module structure (``features.<block>.[body.]<3 j>`` for the j-th conv of a
  block, ``<3 j + 1>`` for its batch norm, ``classifier.<k>``), every key
  used exactly once (``num_batches_tracked`` excepted); a missing, extra or
  misshapen key, or the other architecture's file, fails in one line.
* `load_reference_checkpoint`: a file to a `ReferenceCheckpoint` (the loaded
  supernet, the parsed pools, the rest of the file).

Batch norm: the reference keeps the affine weight and bias on its
``USBatchNorm2d`` (``...N.weight`` / ``.bias``) and the one set of running
statistics on an inner ``.bn`` (``...N.bn.running_mean`` / ``running_var``),
both sliced to the running width; they go into ``gamma`` / ``beta`` and the
full-width moving statistics, which our batch norm slices the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import os

import numpy as np

from pss_keras.supernet import blocks, specs
from pss_keras.supernet.torch_files import CheckpointError, read_checkpoint

# The official runs' search space (the paper's; `SearchSpace` arguments).
REFERENCE_SPACE = dict(
    resolution_range=(128, 224), resolution_step=8, width_range=(0.75, 1.0), width_scale=1.0
)
REFERENCE_PADDING = "symmetric"
REFERENCE_BN_EPSILON = 1e-5

# The reference's batch-norm keys -> our `SwitchableBatchNormalization` weights.
_BN_KEYS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("bn.running_mean", "moving_mean"),
    ("bn.running_var", "moving_variance"),
)
_SKIPPED = "bn.num_batches_tracked"  # a counter; nothing of ours holds it
_DP_PREFIX = "module."  # torch.nn.DataParallel's


class ReferenceCheckpointError(CheckpointError):
    """A state dict that does not fit the supernet it is loaded into."""


@dataclasses.dataclass
class ReferenceCheckpoint:
    """A loaded official checkpoint.

    Attributes:
        supernet: our `Supernet` with the file's weights and running
            statistics (padding "symmetric", BN epsilon 1e-5).
        tiers: the file's subnet pools, ``{metric type: {target: configs}}``
            (e.g. ``tiers["flops"][300]``), each pool's configs best score
            first; empty when the file has none.
        checkpoint: everything else the file holds (optimizer, scheduler,
            ``arch_pools``, random states), as read.
    """

    supernet: object
    tiers: dict
    checkpoint: dict


# --------------------------------------------------------------------------
# Subnet configs.


def _config_dict(config) -> dict:
    if isinstance(config, str):
        try:
            config = ast.literal_eval(config.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise ValueError(
                f"Reference subnet {config[:80]!r} is not a dict literal ({type(e).__name__})."
            ) from None
    if not isinstance(config, dict):
        raise ValueError(f"A reference subnet is a config dict, got {type(config).__name__}.")
    missing = [k for k in ("model_name", "resolution", "stage_cout_mults") if k not in config]
    if missing:
        raise ValueError(f"Reference subnet config has no {missing}: {str(config)[:120]}")
    return config


def reference_subnet(config, model_name: str | None = None) -> specs.SubnetConfig:
    """One of the reference's subnet configs as our `SubnetConfig`.

    Args:
        config: the reference's dict (``model_name``, ``resolution``,
            ``stage_cout_mults``, the metric fields, which are ignored), or
            its ``str`` (an ``arch_pools`` key), read with `ast.literal_eval`.
        model_name: the architecture it must be for (default: any).

    Raises:
        ValueError: one line: not a dict, a field missing, another model,
            the wrong number of multipliers, per-block widths
            (``block_cmid_mults``, which our space cannot express).
    """
    config = _config_dict(config)
    name = config["model_name"]
    if name not in specs.MODEL_NAMES:
        raise ValueError(f"Reference subnet is for {name!r}; known: {specs.MODEL_NAMES}.")
    if model_name is not None and name != model_name:
        raise ValueError(f"Reference subnet is a {name} config, not {model_name}.")
    if "block_cmid_mults" in config:
        raise ValueError("Reference subnet sets block_cmid_mults; only stage multipliers map.")
    mults = tuple(config["stage_cout_mults"])
    stages = blocks.ARCH_SPECS[name].num_stages
    if len(mults) != stages:
        raise ValueError(
            f"Reference subnet has {len(mults)} stage_cout_mults; {name} has {stages} stages."
        )
    return specs.SubnetConfig(name, int(config["resolution"]), mults)


def reference_pools(arch_pools, space: specs.SearchSpace) -> dict:
    """``{metric type: {target: [(config, score, reference dict)] best first}}``
    of an ``arch_pools`` (empty pools kept as empty lists).

    Raises:
        ValueError: a pool key that is not a config of ``space`` (one line).
    """
    out = {}
    for metric, targets in ((arch_pools or {}).get("pools") or {}).items():
        out[metric] = {}
        for target, pool in targets.items():
            ranked = sorted(pool.items(), key=lambda item: -float(item[1]))
            entries = []
            for key, score in ranked:
                config = _config_dict(key)
                subnet = space.validate(reference_subnet(config, space.model_name))
                entries.append((subnet, float(score), config))
            out[metric][target] = entries
    return out


def reference_tiers(arch_pools, space: specs.SearchSpace) -> dict:
    """``{metric type: {target: configs best first}}`` of an ``arch_pools``.

    Every config is validated against ``space`` (ValueError otherwise).
    """
    return {
        metric: {target: tuple(e[0] for e in pool) for target, pool in targets.items()}
        for metric, targets in reference_pools(arch_pools, space).items()
    }


# --------------------------------------------------------------------------
# State dict -> layers of the plan.


def _layer_modules(model_name: str) -> list:
    """``[(LayerSpec, module prefix, bn prefix or None)]`` in plan order.

    The reference builds the stem, every table block and the head as an
    ``nn.Sequential`` of (conv, batch norm, ReLU6) triples in
    ``features``, an inverted-residual block's inside its ``.body``; the
    dense layers are ``classifier.<k>``.
    """
    arch = blocks.ARCH_SPECS[model_name]
    body = "body." if isinstance(arch.blocks[0], blocks.InvertedResidualSpec) else ""
    out, feature, dense = [], 0, 0
    for block in blocks.plan(model_name):
        if block.name == "top":
            for spec in block.layers:
                if spec.kind == "dense":
                    out.append((spec, f"classifier.{dense}.", None))
                    dense += 1
            continue
        base = f"features.{feature}." + (body if block.name.startswith("block_") else "")
        for j, spec in enumerate(block.layers):
            out.append((spec, f"{base}{3 * j}.", f"{base}{3 * j + 1}."))
        feature += 1
    return out


def _expected_keys(model_name: str) -> dict:
    """``{state-dict key: (our layer name, our weight)}`` of ``model_name``."""
    keys = {}
    for spec, module, bn in _layer_modules(model_name):
        keys[f"{module}weight"] = (spec.name, "kernel")
        if bn is None:
            keys[f"{module}bias"] = (spec.name, "bias")
            continue
        for theirs, ours in _BN_KEYS:
            keys[f"{bn}{theirs}"] = (f"{spec.name}_bn", ours)
    return keys


def _strip_prefix(state) -> tuple[dict, str]:
    keys = list(state)
    prefix = _DP_PREFIX if keys and all(k.startswith(_DP_PREFIX) for k in keys) else ""
    return {k[len(prefix) :]: v for k, v in state.items()}, prefix


def _check_keys(state: dict, model_name: str, prefix: str, source: str) -> dict:
    expected = _expected_keys(model_name)
    given = {k for k in state if not k.endswith(_SKIPPED)}
    if given == set(expected):
        return expected
    for other in specs.MODEL_NAMES:
        if other != model_name and given == set(_expected_keys(other)):
            raise ReferenceCheckpointError(f"{source} is a {other} supernet, not {model_name}.")
    missing = [k for k in expected if k not in given]
    if missing:
        name, weight = expected[missing[0]]
        raise ReferenceCheckpointError(
            f"{source} has no key {prefix + missing[0]!r} ({name}.{weight} of {model_name}; "
            f"{len(missing)} missing in all)."
        )
    extra = sorted(given - set(expected))
    raise ReferenceCheckpointError(
        f"{source} has a key {prefix + extra[0]!r} that no layer of {model_name} uses "
        f"({len(extra)} such keys)."
    )


def _check_skipped(state: dict, model_name: str, prefix: str, source: str) -> None:
    allowed = {f"{bn}{_SKIPPED}" for _, _, bn in _layer_modules(model_name) if bn}
    extra = sorted(k for k in state if k.endswith(_SKIPPED) and k not in allowed)
    if extra:
        raise ReferenceCheckpointError(
            f"{source} has a key {prefix + extra[0]!r} that no layer of {model_name} uses."
        )


def _torch_shapes(model_name: str, num_classes: int) -> dict:
    """``{(our layer, weight): shape in torch's layout}`` at full width."""
    largest = specs.SearchSpace(model_name, **REFERENCE_SPACE).largest()
    channels = blocks.stage_channels(largest)
    shapes = {}
    for spec, _, _, c_in, c_out in blocks.walk(model_name, 224, channels, num_classes):
        k = spec.kernel
        if spec.kind == "dense":
            shapes[(spec.name, "kernel")] = (c_out, c_in)
            shapes[(spec.name, "bias")] = (c_out,)
        elif spec.kind in ("conv", "depthwise"):
            kernel = (c_out, 1, k, k) if spec.kind == "depthwise" else (c_out, c_in, k, k)
            shapes[(spec.name, "kernel")] = kernel
            for _, ours in _BN_KEYS:
                shapes[(f"{spec.name}_bn", ours)] = (c_out,)
    return shapes


def _to_ours(kind: str, weight: str, value: np.ndarray) -> np.ndarray:
    """A torch-layout tensor in our layout (float32)."""
    value = np.asarray(value, dtype=np.float32)
    if weight != "kernel":
        return value
    if kind == "dense":  # [O, I] -> [I, O]
        return np.ascontiguousarray(value.T)
    if kind == "depthwise":  # [C, 1, kh, kw] -> [kh, kw, C, 1]
        return np.ascontiguousarray(value.transpose(2, 3, 0, 1))
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]


def reference_weights(state_dict, model_name: str, source: str = "the state dict") -> dict:
    """The reference's state dict as ``{our layer name: {weight: array}}``.

    Args:
        state_dict: the reference supernet's state dict (key -> array in
            torch's layout), with or without DataParallel's ``module.``.
        model_name: the architecture to map it onto.
        source: how messages name it (e.g. the file).

    Returns:
        Every layer of ``blocks.plan(model_name)``: convs' and the dense
        layer's ``kernel`` (our layout) and the dense ``bias``, batch norms'
        ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; the number
        of classes is the classifier's.

    Raises:
        ReferenceCheckpointError: one line naming the first missing key, an
            extra key, a tensor of the wrong shape, or the other architecture.
    """
    if model_name not in specs.MODEL_NAMES:
        raise ValueError(f"model_name={model_name!r} is not one of {specs.MODEL_NAMES}.")
    state, prefix = _strip_prefix(state_dict)
    expected = _check_keys(state, model_name, prefix, source)
    _check_skipped(state, model_name, prefix, source)
    kinds = {spec.name: spec.kind for spec in blocks.layer_plan(model_name)}
    dense = next(k for k, (name, w) in expected.items() if kinds.get(name) == "dense")
    shapes = _torch_shapes(model_name, int(np.shape(state[dense])[0]))
    out = {}
    for key, (name, weight) in expected.items():
        shape = tuple(np.shape(state[key]))
        if shape != shapes[(name, weight)]:
            raise ReferenceCheckpointError(
                f"{source}: {prefix + key!r} has shape {list(shape)}; {name}.{weight} of "
                f"{model_name} needs {list(shapes[(name, weight)])}."
            )
        kind = kinds.get(name, "bn")
        out.setdefault(name, {})[weight] = _to_ours(kind, weight, state[key])
    return out


# --------------------------------------------------------------------------
# Loading a file.


def _state_dict(checkpoint) -> dict:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    return checkpoint


def reference_supernet(weights: dict, model_name: str):
    """A `Supernet` as the reference computes, holding ``weights`` (from
    `reference_weights`)."""
    from pss_keras.supernet.model import Supernet  # TensorFlow: only when loading

    num_classes = next(
        w["kernel"].shape[1]
        for name, w in weights.items()
        if name in {s.name for s in blocks.layer_plan(model_name) if s.kind == "dense"}
    )
    supernet = Supernet(
        model_name,
        num_classes=num_classes,
        bn_epsilon=REFERENCE_BN_EPSILON,
        padding=REFERENCE_PADDING,
        **REFERENCE_SPACE,
    )
    for name, values in weights.items():
        layer = supernet.get_layer_by_name(name)
        for weight, value in values.items():
            variable = getattr(layer, weight)
            if tuple(variable.shape) != value.shape:  # by construction; never silently
                raise ReferenceCheckpointError(
                    f"{name}.{weight} is {tuple(variable.shape)}, the file's {value.shape}."
                )
            variable.assign(value)
    return supernet


def load_reference_checkpoint(path: str | os.PathLike, model_name: str) -> ReferenceCheckpoint:
    """An official PSS-Net checkpoint (``torch.save`` file) as our supernet.

    Args:
        path: the file (``checkpoint_NNN.pt`` of a released run).
        model_name: ``"mobilenet_v1"`` or ``"mobilenet_v2"``.

    Returns:
        A `ReferenceCheckpoint`; ``supernet(images, subnet=config,
        training=False)`` gives the reference's eval-mode logits of
        ``config`` (see `reference_subnet`) on NHWC images.

    Raises:
        torch_files.CheckpointError: the file cannot be read, or (its
            subclass `ReferenceCheckpointError`) does not fit ``model_name``.
    """
    checkpoint = read_checkpoint(path)
    source = os.fspath(path)
    state = _state_dict(checkpoint)
    if not isinstance(state, dict):
        raise ReferenceCheckpointError(f"{source} holds no state dict.")
    supernet = reference_supernet(reference_weights(state, model_name, source), model_name)
    rest = {k: v for k, v in checkpoint.items() if v is not state}
    try:
        tiers = reference_tiers(rest.get("arch_pools"), supernet.space)
    except ValueError as e:
        raise ReferenceCheckpointError(f"{source}: arch_pools: {e}") from None
    return ReferenceCheckpoint(supernet=supernet, tiers=tiers, checkpoint=rest)
