import random

import numpy as np
import pytest

from pss_keras.cost import flops
from pss_keras.supernet import specs
from pss_keras.supernet.blocks import make_divisible
from pss_keras.supernet.specs import SearchSpace, SubnetConfig


def _conv(size, c_in, c_out, k, stride, groups=1):
    # The reference's count: padding k//2, torch's output-size formula.
    out = int((size + 2 * (k // 2) - k) / stride) + 1
    return out * out * (c_out / groups) * k * k * c_in, out


def reference_mflops(config, num_classes=1000):
    """An independent, unrolled restatement of the reference counting."""
    m = config.stage_width_mults
    size = config.resolution
    if config.model_name == "mobilenet_v1":
        base = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
        strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
        c = [make_divisible(b * w) for b, w in zip(base, m)]
        total, size = _conv(size, 3, c[0], 3, 2)
        for i, s in enumerate(strides):
            f, size = _conv(size, c[i], c[i], 3, s, groups=c[i])
            total += f
            f, size = _conv(size, c[i], c[i + 1], 1, 1)
            total += f
        last = c[13]
    else:
        c = [make_divisible(b * w) for b, w in zip([32, 16, 24, 32, 64, 96, 160, 320], m[:8])]
        setting = [(1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1)]
        total, size = _conv(size, 3, c[0], 3, 2)
        c_in = c[0]
        for stage, (t, n, s) in enumerate(setting, start=1):
            for j in range(n):
                hidden = c_in * t
                if t != 1:
                    total += _conv(size, c_in, hidden, 1, 1)[0]
                f, size = _conv(size, hidden, hidden, 3, s if j == 0 else 1, groups=hidden)
                total += f
                total += _conv(size, hidden, c[stage], 1, 1)[0]
                c_in = c[stage]
        total += _conv(size, c_in, 1280, 1, 1)[0]
        last = 1280
    total += size * size * last + last * num_classes
    return total / 1e6


@pytest.mark.parametrize(
    "model, which, expected",
    [
        ("mobilenet_v1", "largest", 568.79),
        ("mobilenet_v1", "smallest", 106.78),
        ("mobilenet_v2", "largest", 300.84),
        ("mobilenet_v2", "smallest", 69.15),
    ],
)
def test_reference_values(model, which, expected):
    config = getattr(SearchSpace(model), which)()
    assert flops.count_mflops(config) == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize("model", specs.MODEL_NAMES)
def test_agrees_with_reference_counting_on_random_configs(model):
    space = SearchSpace(model)
    rng = random.Random(7)
    configs = [space.random(rng) for _ in range(200)]
    # Also off-grid resolutions (odd feature-map sizes) and other class counts.
    configs += [
        SubnetConfig(model, r, c.stage_width_mults) for r, c in zip((97, 131, 250), configs)
    ]
    for config in configs:
        assert flops.count_mflops(config) == pytest.approx(reference_mflops(config), rel=1e-12)
        assert flops.count_mflops(config, num_classes=10) == pytest.approx(
            reference_mflops(config, 10), rel=1e-12
        )


@pytest.mark.parametrize("model", specs.MODEL_NAMES)
def test_vectorized_equals_scalar(model):
    space = SearchSpace(model)
    res, mults = space.random_arrays(500, np.random.default_rng(0))
    configs = specs.arrays_to_configs(model, res, mults)
    for scale, classes in ((1.0, 1000), (0.35, 10)):
        fast = flops.count_mflops_np(model, res, mults, classes, scale)
        slow = [flops.count_mflops(c, classes, scale) for c in configs]
        np.testing.assert_allclose(fast, slow, rtol=1e-12)


@pytest.mark.parametrize("model", specs.MODEL_NAMES)
def test_flops_grow_with_every_dimension(model):
    space = SearchSpace(model)
    base = space.smallest()
    f0 = flops.count_mflops(base)
    bigger_res = SubnetConfig(model, 136, base.stage_width_mults)
    assert flops.count_mflops(bigger_res) > f0
    assert flops.count_mflops(base, num_classes=1001) > f0
    for stage in range(space.num_stages):
        mults = list(base.stage_width_mults)
        mults[stage] = 1.0
        wider_config = SubnetConfig(model, 128, tuple(mults))
        wider = flops.count_mflops(wider_config)
        if space.stage_channels(wider_config) == space.stage_channels(base):
            # e.g. MobileNetV2's head stays at full width (as in the reference)
            # and 16 * 0.75 rounds up to 16 channels: same subnet, same FLOPs.
            assert wider == f0
        else:
            assert wider > f0, f"stage {stage}"
    assert flops.count_mflops(space.largest()) > f0


def test_profile_rows_sum_to_totals():
    config = SearchSpace("mobilenet_v2").random(random.Random(1))
    rows = flops.profile(config)
    assert sum(r.mflops for r in rows) == pytest.approx(flops.count_mflops(config))
    assert sum(r.params for r in rows) == flops.count_params(config)
    assert [r.name for r in rows][:4] == [
        "stem_conv",
        "block_1_depthwise",
        "block_1_project",
        "block_2_expand",
    ]
    assert rows[-1].name == "classifier" and rows[-1].c_in == 1280
    text = flops.format_profile(config)
    assert f"MFLOPs: {flops.count_mflops(config):.2f}" in text


def test_params_of_largest_match_keras_applications_counts():
    # keras.applications reports 4,231,976 / 3,504,872 trainable parameters.
    assert flops.count_params(SearchSpace("mobilenet_v1").largest()) == 4_231_976
    assert flops.count_params(SearchSpace("mobilenet_v2").largest()) == 3_504_872
