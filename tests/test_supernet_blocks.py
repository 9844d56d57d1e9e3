import keras
import numpy as np
import pytest

from pss_keras.cost import flops
from pss_keras.supernet import blocks, keras_applications, specs
from pss_keras.supernet.blocks import make_divisible

APPS = {
    "mobilenet_v1": keras.applications.MobileNet,
    "mobilenet_v2": keras.applications.MobileNetV2,
}
WEIGHT_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


@pytest.fixture(scope="module", params=sorted(APPS))
def app(request):
    model = APPS[request.param](alpha=1.0, weights=None, input_shape=(224, 224, 3))
    return request.param, model


def _largest(model_name):
    return specs.SearchSpace(model_name, resolution_range=(224, 224)).largest()


def test_plan_matches_keras_applications_layers(app):
    model_name, model = app
    names = keras_applications.keras_applications_name_map(model_name)
    theirs = {layer.name: layer for layer in model.layers}
    config = _largest(model_name)
    channels = blocks.stage_channels(config)
    ours = []
    for spec, _, out_size, c_in, c_out in blocks.walk(model_name, 224, channels, 1000):
        if spec.kind == "pool":
            continue
        layer = theirs[names[spec.name]]
        ours.append(layer.name)
        kernel_shape = tuple(layer.kernel.shape)
        if spec.kind == "dense":
            # MobileNet's classifier is a 1x1 conv, MobileNetV2's a Dense.
            assert kernel_shape[-2:] == (c_in, c_out), spec.name
            continue
        assert layer.kernel_size == (spec.kernel, spec.kernel), spec.name
        assert layer.strides == (spec.stride, spec.stride), spec.name
        assert layer.output.shape[1:] == (out_size, out_size, c_out), spec.name
        if spec.kind == "depthwise":
            assert kernel_shape == (spec.kernel, spec.kernel, c_in, 1), spec.name
            assert c_out == c_in, spec.name
        else:
            assert isinstance(layer, keras.layers.Conv2D), spec.name
            assert kernel_shape == (spec.kernel, spec.kernel, c_in, c_out), spec.name
    # Every weight layer of the application, in the same order.
    assert ours == [layer.name for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]


def test_residuals_match_keras_applications_adds(app):
    model_name, model = app
    adds = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)}
    # keras.applications numbers MobileNetV2's blocks from 0 (ours from 1).
    residual = {
        f"block_{int(block.name.split('_')[1]) - 1}_add"
        for block in blocks.plan(model_name)
        if block.residual
    }
    assert residual == adds
    assert len(adds) == {"mobilenet_v1": 0, "mobilenet_v2": 10}[model_name]


def test_parameter_count_matches_keras_applications(app):
    model_name, model = app
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert flops.count_params(_largest(model_name)) == trainable


@pytest.mark.parametrize("model_name", specs.MODEL_NAMES)
def test_plan_structure(model_name):
    plan = blocks.plan(model_name)
    assert plan is blocks.plan(model_name)  # cached, one object
    assert [b.name for b in (plan[0], plan[-1])] == ["stem", "top"]
    layer_names = [layer.name for layer in blocks.layer_plan(model_name)]
    assert len(set(layer_names)) == len(layer_names)
    for block in plan[1:-1]:
        assert block.in_stage is not None
        if block.residual:
            assert block.stride == 1 and block.in_stage == block.out_stage
        # A block's first layer reads its input stage, its last writes its output stage.
        assert block.layers[0].c_in == blocks.Channels(block.in_stage)
        assert block.layers[-1].c_out == blocks.Channels(block.out_stage)
        expands = any(layer.name.endswith("_expand") for layer in block.layers)
        assert expands == (block.expand != 1)


def test_walk_on_arrays_equals_walk_on_ints():
    space = specs.SearchSpace("mobilenet_v2")
    res, mults = space.random_arrays(5, np.random.default_rng(0))
    channels = blocks.stage_channels_np("mobilenet_v2", mults).T
    rows = list(blocks.walk("mobilenet_v2", res, channels, 10))
    for j, config in enumerate(specs.arrays_to_configs("mobilenet_v2", res, mults)):
        single = blocks.walk("mobilenet_v2", config.resolution, blocks.stage_channels(config), 10)
        for (spec, *values), (spec_j, *values_j) in zip(rows, single, strict=True):
            assert spec is spec_j
            assert [np.broadcast_to(v, res.shape)[j] for v in values] == values_j


@pytest.mark.parametrize(
    "value, expected",
    [
        (24.0, 24),
        (26.0, 24),
        (27.9, 32),
        (28.0, 32),
        (3.0, 8),
        (12.0, 16),
        (960.0, 960),
        (17.0, 16),
        (9.0, 16),
    ],
)
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected
    assert blocks.make_divisible_np(np.array([value]))[0] == expected


def test_make_divisible_never_drops_below_90_percent():
    values = np.linspace(1, 2000, 20001)
    fast = blocks.make_divisible_np(values)
    assert list(fast[:500]) == [make_divisible(v) for v in values[:500]]
    assert np.all(fast >= 0.9 * values) and np.all(fast % 8 == 0) and fast.min() == 8
