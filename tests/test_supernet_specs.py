import json
import random

import numpy as np
import pytest

from pss_keras.supernet import blocks, specs
from pss_keras.supernet.specs import SearchSpace, SubnetConfig

V1 = SearchSpace("mobilenet_v1")
V2 = SearchSpace("mobilenet_v2")


def test_config_is_immutable_hashable_and_normalized():
    a = SubnetConfig("mobilenet_v2", 192, [1, 0.75, 1, 1, 1, 1, 1, 1, 1])
    b = SubnetConfig("mobilenet_v2", np.int64(192), (1.0, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(a.stage_width_mults, tuple) and type(a.resolution) is int
    with pytest.raises(AttributeError):
        a.resolution = 224


def test_config_json_and_name_round_trip():
    config = V1.random(random.Random(3))
    text = config.to_json()
    assert SubnetConfig.from_json(text) == config
    assert json.loads(text)["model_name"] == "mobilenet_v1"
    assert text == SubnetConfig.from_json(text).to_json()  # canonical
    assert V1.largest().name == "mobilenet_v1-r224-w" + ",".join(["1"] * 14)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(model_name="resnet50", resolution=224, stage_width_mults=(1.0,) * 14), "model_name"),
        (
            dict(model_name="mobilenet_v1", resolution=0, stage_width_mults=(1.0,) * 14),
            "resolution",
        ),
        (
            dict(model_name="mobilenet_v1", resolution=224.0, stage_width_mults=(1.0,) * 14),
            "resolution",
        ),
        (
            dict(model_name="mobilenet_v1", resolution=224, stage_width_mults=(1.0,) * 9),
            "stage_width_mults",
        ),
        (
            dict(model_name="mobilenet_v2", resolution=224, stage_width_mults=(1.0,) * 8 + (-1.0,)),
            r"stage_width_mults\[8\]",
        ),
    ],
)
def test_config_rejects_malformed_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SubnetConfig(**kwargs)


def test_config_from_json_errors():
    with pytest.raises(ValueError, match="not valid JSON"):
        SubnetConfig.from_json("{resolution: 1")
    with pytest.raises(ValueError, match="missing field"):
        SubnetConfig.from_json('{"resolution": 224}')


def test_config_outside_a_space_is_still_a_config():
    # FLOPs are defined for any positive config; only the space rejects it.
    config = SubnetConfig("mobilenet_v1", 300, (1.4,) * 14)
    with pytest.raises(ValueError, match=r"stage_width_mults\[0\]=1.4 is outside"):
        V1.validate(config)


@pytest.mark.parametrize(
    "config, field",
    [
        (SubnetConfig("mobilenet_v1", 228, (1.0,) * 14), "resolution=228"),
        (SubnetConfig("mobilenet_v1", 120, (1.0,) * 14), "resolution=120"),
        (SubnetConfig("mobilenet_v1", 224, (1.0,) * 13 + (0.7,)), r"stage_width_mults\[13\]"),
        (SubnetConfig("mobilenet_v2", 224, (1.0,) * 9), "model_name"),
    ],
)
def test_space_validate_names_the_offending_field(config, field):
    with pytest.raises(ValueError, match=field):
        V1.validate(config)


def test_space_extremes_and_random_draws():
    assert V1.largest() == SubnetConfig("mobilenet_v1", 224, (1.0,) * 14)
    assert V2.smallest() == SubnetConfig("mobilenet_v2", 128, (0.75,) * 9)
    assert V1.resolutions == tuple(range(128, 225, 8)) and len(V1.resolutions) == 13
    rng = random.Random(0)
    draws = [V1.random(rng) for _ in range(300)]
    for c in draws:
        V1.validate(c)
        assert all(round(m, 3) == m for m in c.stage_width_mults)
    assert len({c.resolution for c in draws}) == 13  # every grid point reached
    res, mults = V2.random_arrays(1000, np.random.default_rng(0))
    assert res.shape == (1000,) and mults.shape == (1000, 9)
    assert set(res) <= set(V2.resolutions) and mults.min() >= 0.75 and mults.max() <= 1.0


def test_stage_channels():
    assert V1.stage_channels(V1.largest()) == (
        32,
        64,
        128,
        128,
        256,
        256,
        512,
        512,
        512,
        512,
        512,
        512,
        1024,
        1024,
    )
    assert V1.stage_channels(V1.smallest()) == (
        24,
        48,
        96,
        96,
        192,
        192,
        384,
        384,
        384,
        384,
        384,
        384,
        768,
        768,
    )
    # MobileNetV2's head conv (1280) never switches.
    assert V2.stage_channels(V2.smallest())[-1] == 1280
    assert SearchSpace("mobilenet_v2", width_scale=0.25).stage_channels(V2.largest())[-1] == 320
    res, mults = V2.random_arrays(50, np.random.default_rng(1))
    configs = specs.arrays_to_configs("mobilenet_v2", res, mults)
    np.testing.assert_array_equal(
        blocks.stage_channels_np("mobilenet_v2", mults), [V2.stage_channels(c) for c in configs]
    )


def test_encode():
    code = V2.encode(V2.smallest())
    assert code.dtype == np.int32 and list(code) == [128, 24, 16, 24, 24, 48, 72, 120, 240, 1280]
    with pytest.raises(ValueError, match="resolution"):
        V2.encode(SubnetConfig("mobilenet_v2", 100, (1.0,) * 9))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution_range=(224, 128)), "resolution_range"),
        (dict(resolution_step=7), "resolution_step"),
        (dict(width_range=(0.9, 0.5)), "width_range"),
        (dict(width_scale=0), "width_scale"),
        (dict(model_name="vgg"), "model_name"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_space_rejects_bad_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


def test_space_dict_round_trip():
    space = SearchSpace("mobilenet_v2", (32, 64), 8, (0.5, 1.0), 0.25, 10)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_parse_subnet_forms():
    assert specs.parse_subnet("max", V1) == V1.largest()
    assert specs.parse_subnet(" MIN ", V1) == V1.smallest()
    assert specs.parse_subnet("random", V1, seed=1) == specs.parse_subnet("random", V1, seed=1)
    assert specs.parse_subnet("160:0.8", V2) == SubnetConfig("mobilenet_v2", 160, (0.8,) * 9)
    text = json.dumps({"resolution": 192, "stage_width_mults": [0.75] * 9})
    assert specs.parse_subnet(text, V2) == SubnetConfig("mobilenet_v2", 192, (0.75,) * 9)


@pytest.mark.parametrize(
    "text, message",
    [
        ("biggest", "not understood"),
        ("160:0.8,0.9", "9 stages"),
        ("abc:0.8", "could not be read"),
        ("{bad json", "not valid JSON"),
        ("232:1", "resolution=232"),
        ("160:0.5", "outside the width range"),
    ],
)
def test_parse_subnet_errors(text, message):
    with pytest.raises(ValueError, match=message):
        specs.parse_subnet(text, V2)
