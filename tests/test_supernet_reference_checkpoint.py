"""The official PSS-Net checkpoints as our supernet (pss_keras.supernet.reference_checkpoint).

Reads the two reference fixtures (random weights written by the official
PyTorch code, with its eval-mode logits in expected.json): every subnet of
ours gives the reference's logits, and so do the deployment paths of one
subnet per model (standalone Keras subnet, the export's tier graph, float32
TFLite); bad state dicts are built by editing the read dict in memory.
"""

import json
import os

import numpy as np
import pytest
from conftest import shared_data_folder

from pss_keras.supernet import specs
from pss_keras.supernet.reference_checkpoint import (
    REFERENCE_SPACE,
    ReferenceCheckpointError,
    load_reference_checkpoint,
    reference_subnet,
    reference_tiers,
    reference_weights,
)
from pss_keras.supernet.torch_files import CheckpointError, read_checkpoint

# $PSS_KERAS_REFERENCE_CHECKPOINTS, or a shared/data/reference_checkpoints folder
# beside the repository's folder (as tests/test_supernet_torch_files.py).
REFERENCE_CHECKPOINTS = shared_data_folder(
    "PSS_KERAS_REFERENCE_CHECKPOINTS", "reference_checkpoints"
)
MODELS = {"mbv1": "mobilenet_v1", "mbv2": "mobilenet_v2"}
FILES = ("mbv1_random.pt", "mbv2_random.pt", "expected.json")


def _path(name):
    return os.path.join(REFERENCE_CHECKPOINTS, name)


@pytest.fixture(scope="module")
def expected():
    if not all(os.path.isfile(_path(f)) for f in FILES):
        pytest.skip(
            f"no reference checkpoints ({', '.join(FILES)}) in {REFERENCE_CHECKPOINTS}; "
            "set PSS_KERAS_REFERENCE_CHECKPOINTS to the folder that holds them"
        )
    with open(_path("expected.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def states(expected):
    """{'mbv1': state dict, 'mbv2': state dict} as read (with ``module.``)."""
    return {m: read_checkpoint(_path(f"{m}_random.pt"))["model"] for m in MODELS}


@pytest.fixture(scope="module")
def loaded(expected):
    return {
        m: load_reference_checkpoint(_path(f"{m}_random.pt"), name) for m, name in MODELS.items()
    }


def _inputs(seed, resolution):
    images = np.random.default_rng(seed * 1000 + resolution).standard_normal(
        (2, 3, resolution, resolution)
    )
    return images.astype(np.float32).transpose(0, 2, 3, 1)  # NCHW -> NHWC


# -- logits ----------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_subnet_gives_the_reference_logits(expected, loaded, model):
    supernet = loaded[model].supernet
    assert (supernet.padding, supernet.bn_epsilon) == ("symmetric", 1e-5)
    assert supernet.num_classes == 10
    errors = []
    for subnet in expected["models"][model]["subnets"]:
        config = supernet.space.validate(reference_subnet(subnet["config"], MODELS[model]))
        images = _inputs(expected["seed"], config.resolution)
        ours = np.asarray(supernet(images, subnet=config, training=False))
        reference = np.asarray(subnet["logits"], dtype=np.float64)
        assert ours.shape == reference.shape
        error = np.max(np.abs(ours - reference)) / np.max(np.abs(reference))
        errors.append(error)
        assert error <= 1e-4, f"{config}: max relative error {error:.2e}"
    print(f"{model}: max relative error {max(errors):.2e} over {len(errors)} subnets")


# -- the deployment paths: the standalone subnet, the export's tier graph and
# the float32 TFLite model give the reference's logits too, from the file's
# running statistics (the supernet's eval mode). One subnet per model: the
# sampled config (mixed widths) of the smallest resolution.
def _deployment_case(expected, loaded, model):
    """``(supernet, config, images, reference logits, file statistics)``."""
    supernet = loaded[model].supernet
    sampled = expected["models"][model]["subnets"][2:]  # [0], [1]: smallest, largest
    subnet = min(sampled, key=lambda s: s["config"]["resolution"])
    config = supernet.space.validate(reference_subnet(subnet["config"], MODELS[model]))
    images = _inputs(expected["seed"], config.resolution)
    reference = np.asarray(subnet["logits"], dtype=np.float64)
    return supernet, config, images, reference, supernet.get_bn_stats(config)


def _relative_error(ours, reference):
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == reference.shape
    return np.max(np.abs(ours - reference)) / np.max(np.abs(reference))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_extracted_subnet_gives_the_reference_logits(expected, loaded, model):
    from pss_keras.supernet.extraction import extract_subnet

    supernet, config, images, reference, stats = _deployment_case(expected, loaded, model)
    # bn_stats=None: extraction's default, the same stored statistics.
    for bn_stats, fold_bn in ((stats, False), (stats, True), (None, False)):
        sub = extract_subnet(supernet, config, bn_stats, fold_bn=fold_bn)
        error = _relative_error(sub(images, training=False), reference)
        case = f"fold_bn={fold_bn}, bn_stats={'file' if bn_stats else None}"
        print(f"{model} {config} extracted ({case}): max relative error {error:.2e}")
        # tests/test_supernet_extraction.py's tolerance, 1e-5 (an atol there),
        # here of max |reference logit| (0.4-0.7, so no looser).
        assert error <= 1e-5, f"{config}, {case}: {error:.2e} > 1e-5 (extraction's)"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_tier_graph_gives_the_reference_logits(expected, loaded, model):
    import tensorflow as tf

    from pss_keras.export.tier_graph import TierGraph

    supernet, config, images, reference, stats = _deployment_case(expected, loaded, model)
    for materialize in (True, False):
        # Normalized images, as the export's signatures feed it after
        # preprocess(); at the tier's resolution its resize is the identity.
        graph = TierGraph(supernet, config, stats, materialize, f"{model}_tier")
        error = _relative_error(tf.function(graph)(tf.constant(images)), reference)
        print(f"{model} {config} tier graph (materialize={materialize}): {error:.2e}")
        # tests/test_export_tier_graph.py's tolerance: 1e-5 of the logits' scale.
        assert error <= 1e-5, f"{config}, materialize={materialize}: {error:.2e} > 1e-5"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_float32_tflite_subnet_gives_the_reference_logits(expected, loaded, model):
    from pss_keras.data.preprocessing import to_pixels
    from pss_keras.supernet.extraction import extract_subnet
    from pss_keras.tflite.model_conversion import convert_model
    from pss_keras.tflite.runner import TFLiteRunner

    supernet, config, images, reference, stats = _deployment_case(expected, loaded, model)
    # The model pss_keras.tflite.converter converts: BN folded, pixel input
    # (its first layer normalizes). Its input is float32, so the reference's
    # normalized images go in as to_pixels(images) (some outside [0, 255]),
    # which that layer maps back to them up to float32 rounding.
    sub = extract_subnet(supernet, config, stats, fold_bn=True, pixel_input=True)
    runner = TFLiteRunner(model_content=convert_model(sub, config.resolution))
    assert runner.input["dtype"] == np.float32
    error = _relative_error(runner(np.asarray(to_pixels(images))), reference)
    print(f"{model} {config} float32 TFLite: max relative error {error:.2e}")
    # The float32 target of pss_keras.tflite.verification (and the TFLite tests).
    assert error <= 1e-4, f"{config}: {error:.2e} > 1e-4 (float32 TFLite's target)"


def test_the_file_s_pools_and_the_rest(expected, loaded):
    for m, name in MODELS.items():
        result = loaded[m]
        pools = result.checkpoint["arch_pools"]["pools"]["flops"]
        assert sorted(result.tiers["flops"]) == sorted(pools)
        filled = {t: pool for t, pool in pools.items() if pool}
        assert filled, "the fixtures hold a few scored subnets"
        sampled = [reference_subnet(s["config"]) for s in expected["models"][m]["subnets"]]
        for target, pool in pools.items():
            tier = result.tiers["flops"][target]
            assert len(tier) == len(pool) and set(tier) <= set(sampled)
            if pool:
                best = max(pool, key=pool.get)
                assert tier[0] == reference_subnet(best, name)
        assert "model" not in result.checkpoint and result.checkpoint["last_epoch"] == 249
        assert result.supernet.space == specs.SearchSpace(name, num_classes=10, **REFERENCE_SPACE)


# -- configs ---------------------------------------------------------------------
def test_reference_subnet_smallest_largest_and_pool_keys(expected):
    for m, name in MODELS.items():
        space = specs.SearchSpace(name, **REFERENCE_SPACE)
        subnets = [s["config"] for s in expected["models"][m]["subnets"]]
        assert reference_subnet(subnets[0], name) == space.smallest()
        assert reference_subnet(subnets[1], name) == space.largest()
        for config in subnets:  # a pool key is str() of the dict
            ours = reference_subnet(str(config))
            assert ours == reference_subnet(config, name)
            assert ours.stage_width_mults == tuple(config["stage_cout_mults"])
            assert ours.resolution == config["resolution"]


def test_reference_subnet_refuses_in_one_line(expected):
    mbv2 = dict(expected["models"]["mbv2"]["subnets"][2]["config"])
    cases = [
        (mbv2, "mobilenet_v1", "is a mobilenet_v2 config, not mobilenet_v1"),
        ({**mbv2, "stage_cout_mults": [1.0] * 14}, None, "has 14 stage_cout_mults; mobilenet_v2"),
        ({**mbv2, "model_name": "resnet50"}, None, "is for 'resnet50'"),
        ({**mbv2, "block_cmid_mults": [1.0] * 16}, None, "block_cmid_mults"),
        ({"model_name": "mobilenet_v2"}, None, r"has no \['resolution', 'stage_cout_mults'\]"),
        ("__import__('os').system('true')", None, "is not a dict literal"),
        ("[1, 2]", None, "is a config dict, got list"),
    ]
    for config, model_name, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            reference_subnet(config, model_name)
        assert "\n" not in str(info.value)


def test_reference_tiers_rank_each_pool_best_first(expected):
    space = specs.SearchSpace("mobilenet_v1", **REFERENCE_SPACE)
    a, b, c = (s["config"] for s in expected["models"]["mbv1"]["subnets"][2:5])
    pools = {"pools": {"flops": {300: {str(a): 0.2, str(b): 0.7}, 200: {str(c): 0.1}}}}
    tiers = reference_tiers(pools, space)
    assert tiers == {
        "flops": {
            300: (reference_subnet(b), reference_subnet(a)),
            200: (reference_subnet(c),),
        }
    }
    with pytest.raises(ValueError, match="not mobilenet_v1"):
        reference_tiers({"pools": {"flops": {70: {str(expected["models"]["mbv2"]["subnets"][0]["config"]): 1.0}}}}, space)  # fmt: skip


# -- the mapping -----------------------------------------------------------------
def test_mapping_uses_every_key_with_or_without_the_prefix(states):
    state = states["mbv1"]
    weights = reference_weights(state, "mobilenet_v1")
    bare = reference_weights(
        {k.removeprefix("module."): v for k, v in state.items()}, "mobilenet_v1"
    )
    assert weights.keys() == bare.keys()
    used = sum(len(w) for w in weights.values())
    assert used == sum(not k.endswith("num_batches_tracked") for k in state)
    conv = state["module.features.2.3.weight"]  # block_2_pointwise [O, I, 1, 1]
    np.testing.assert_array_equal(
        weights["block_2_pointwise"]["kernel"], conv.transpose(2, 3, 1, 0)
    )
    dw = state["module.features.2.0.weight"]  # [C, 1, 3, 3]
    np.testing.assert_array_equal(weights["block_2_depthwise"]["kernel"], dw.transpose(2, 3, 0, 1))
    bn = weights["block_2_depthwise_bn"]
    np.testing.assert_array_equal(
        bn["moving_variance"], state["module.features.2.1.bn.running_var"]
    )
    np.testing.assert_array_equal(bn["gamma"], state["module.features.2.1.weight"])
    np.testing.assert_array_equal(
        weights["classifier"]["kernel"], state["module.classifier.0.weight"].T
    )
    v2 = reference_weights(states["mbv2"], "mobilenet_v2")
    assert v2["head_conv"]["kernel"].shape == (1, 1, 320, 1280)
    assert v2["block_2_expand"]["kernel"].shape == (1, 1, 16, 96)


def _refused(state, model_name, message):
    with pytest.raises(ReferenceCheckpointError, match=message) as info:
        reference_weights(state, model_name, source="f.pt")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, (CheckpointError, ValueError))


def test_a_missing_an_extra_key_and_a_wrong_shape_are_refused(states):
    state = dict(states["mbv1"])
    missing = {k: v for k, v in state.items() if k != "module.features.3.1.bn.running_var"}
    _refused(missing, "mobilenet_v1", r"f.pt has no key 'module.features.3.1.bn.running_var' \(block_3_depthwise_bn.moving_variance")  # fmt: skip
    extra = {**state, "module.features.3.1.extra": np.zeros(3, np.float32)}
    _refused(extra, "mobilenet_v1", "f.pt has a key 'module.features.3.1.extra' that no layer of mobilenet_v1 uses")  # fmt: skip
    stray = {**state, "module.classifier.0.bn.num_batches_tracked": np.int64(0)}
    _refused(stray, "mobilenet_v1", "'module.classifier.0.bn.num_batches_tracked' that no layer")
    shape = {**state, "module.features.2.3.weight": np.zeros((128, 32, 1, 1), np.float32)}
    _refused(shape, "mobilenet_v1", r"'module.features.2.3.weight' has shape \[128, 32, 1, 1\]; block_2_pointwise.kernel of mobilenet_v1 needs \[128, 64, 1, 1\]")  # fmt: skip
    bn = {**states["mbv2"], "module.features.18.1.bias": np.zeros(1000, np.float32)}
    _refused(bn, "mobilenet_v2", r"head_conv_bn.beta of mobilenet_v2 needs \[1280\]")


def test_the_other_architecture_is_refused(states):
    _refused(states["mbv2"], "mobilenet_v1", "f.pt is a mobilenet_v2 supernet, not mobilenet_v1")
    _refused(states["mbv1"], "mobilenet_v2", "f.pt is a mobilenet_v1 supernet, not mobilenet_v2")
    with pytest.raises(ReferenceCheckpointError, match=r"mbv2_random.pt is a mobilenet_v2 supernet, not mobilenet_v1\.$"):  # fmt: skip
        load_reference_checkpoint(_path("mbv2_random.pt"), "mobilenet_v1")


# -- an independent NumPy forward pass (the fixtures' logits do not depend on
# the image: their random BN statistics wash it out, so these check the
# convolutions, padding and residuals) ---------------------------------------
MBV2_STAGE_OF_BLOCK = (1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7)


def _make_divisible(v, divisor=8):  # the reference's utils/comm.py
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return int(new_v + divisor if new_v < 0.9 * v else new_v)


def _signal_state(state, seed=0):
    """``state`` with weights and BN statistics that carry the image through."""
    rng, out = np.random.default_rng(seed), {}
    for key, value in state.items():
        shape = np.shape(value)
        if key.endswith("num_batches_tracked"):
            out[key] = value
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith(".weight") and len(shape) == 1:
            out[key] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:
            out[key] = rng.normal(0, 0.1 if len(shape) == 1 else 0.05, shape).astype(np.float32)
    return out


def _np_conv_bn(x, state, conv, bn, cout, stride, relu):
    """The reference's USConv2d (pad (k-1)//2) + USBatchNorm2d (eps 1e-5), NCHW."""
    w = state[conv + "weight"]
    depthwise = w.shape[1] == 1 and w.shape[0] > 1
    w = w[: x.shape[1]] if depthwise else w[:cout, : x.shape[1]]
    k = w.shape[-1]
    x = np.pad(x, ((0, 0), (0, 0), ((k - 1) // 2,) * 2, ((k - 1) // 2,) * 2))
    size = (x.shape[2] - k) // stride + 1
    y = 0.0
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i : i + stride * (size - 1) + 1 : stride, j : j + stride * (size - 1) + 1 : stride]  # fmt: skip
            if depthwise:
                y = y + patch * w[None, :, 0, i, j, None, None]
            else:
                y = y + np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    c = y.shape[1]
    mean, var = state[bn + "bn.running_mean"][:c], state[bn + "bn.running_var"][:c]
    y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    y = y * state[bn + "weight"][:c, None, None] + state[bn + "bias"][:c, None, None]
    return np.clip(y, 0, 6) if relu else y


def _np_reference(state, model, mults, x):
    """The reference's forward pass (models/mobilenet_v1.py, _v2.py) in NumPy."""
    state = {k.removeprefix("module."): np.asarray(v, np.float64) for k, v in state.items()}
    x = _np_conv_bn(x, state, "features.0.0.", "features.0.1.", _make_divisible(32 * mults[0]), 2, True)  # fmt: skip
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})[1:]
    for b in blocks:
        if model == "mbv2" and b == blocks[-1]:  # the 1280 head: full width, no layer_id
            x = _np_conv_bn(x, state, f"features.{b}.0.", f"features.{b}.1.", 1280, 1, True)
            continue
        body = f"features.{b}.body." if model == "mbv2" else f"features.{b}."
        convs = sorted({int(k[len(body) :].split(".")[0]) for k in state if k.startswith(body)})
        convs = [i for i in convs if state[f"{body}{i}.weight"].ndim == 4]
        stage = b if model == "mbv1" else MBV2_STAGE_OF_BLOCK[b - 1]
        shortcut, full = x, state[f"{body}{convs[-1]}.weight"].shape
        for n, i in enumerate(convs):
            w = state[f"{body}{i}.weight"]
            last = n == len(convs) - 1
            cout = _make_divisible(w.shape[0] * mults[stage]) if last else _make_divisible(x.shape[1] * w.shape[0] / w.shape[1])  # fmt: skip
            stride = 2 if w.shape[-1] == 3 and _STRIDES[model][b - 1] == 2 else 1
            relu = not (last and model == "mbv2")
            x = _np_conv_bn(x, state, f"{body}{i}.", f"{body}{i + 1}.", cout, stride, relu)
        in_full = state[f"{body}{convs[0]}.weight"].shape[1 if model == "mbv2" else 0]
        if model == "mbv2" and _STRIDES[model][b - 1] == 1 and in_full == full[0]:
            x = x + shortcut
    x = x.mean(axis=(2, 3))
    w = state["classifier.0.weight"]
    return x @ w[:, : x.shape[1]].T + state["classifier.0.bias"]


_STRIDES = {
    "mbv1": (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1),
    "mbv2": (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1),
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_an_image_dependent_supernet_matches_a_numpy_reference(expected, states, model):
    from pss_keras.supernet.reference_checkpoint import reference_supernet

    state = _signal_state(states[model])
    supernet = reference_supernet(reference_weights(state, MODELS[model]), MODELS[model])
    config = reference_subnet(expected["models"][model]["subnets"][2]["config"])
    config = specs.SubnetConfig(config.model_name, 136, config.stage_width_mults)
    images = _inputs(1, 136)
    reference = _np_reference(state, model, config.stage_width_mults, images.transpose(0, 3, 1, 2))
    ours = np.asarray(supernet(images, subnet=config, training=False))
    scale = np.max(np.abs(reference))
    assert (
        np.max(np.abs(reference[0] - reference[1])) > 0.01 * scale
    )  # the image matters (100x the tolerance)
    assert np.max(np.abs(ours - reference)) <= 1e-4 * scale
