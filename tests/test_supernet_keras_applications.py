"""pss_keras.supernet.keras_applications: keras.applications' widths, layer
names and files, and the copy of its weights into a supernet."""

import os

import keras
import numpy as np
import pytest
from supernet_helpers import _one_line, _randomize_bn

from pss_keras.supernet import blocks, keras_applications
from pss_keras.supernet.model import Supernet

APPS = {
    "mobilenet_v1": keras.applications.MobileNet,
    "mobilenet_v2": keras.applications.MobileNetV2,
}
# The MobileNetV2 alphas whose head conv keras.applications keeps at 1280.
REFUSED = {("mobilenet_v2", 0.35), ("mobilenet_v2", 0.5), ("mobilenet_v2", 0.75)}
ALL_ALPHAS = [(m, a) for m, alphas in keras_applications.KERAS_ALPHAS.items() for a in alphas]


@pytest.mark.parametrize("model", sorted(APPS))
def test_largest_subnet_reproduces_keras_applications(model, rng):
    keras.utils.set_random_seed(0)
    source = APPS[model](alpha=1.0, weights=None, classifier_activation=None)
    _randomize_bn(source, rng)
    net = Supernet(model)
    x = rng.uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    assert not np.allclose(net(x), source(x, training=False), atol=1e-3)
    keras_applications.load_keras_applications_weights(net, source)
    expected = source(x, training=False).numpy()
    np.testing.assert_allclose(net(x).numpy(), expected, atol=1e-4, rtol=0)
    # Smaller subnets run on the imported weights too.
    assert net(x, subnet=net.space.smallest()).shape == (2, 1000)


def test_mismatched_source_is_rejected():
    net = Supernet("mobilenet_v2", num_classes=10, width_scale=0.5)
    source = keras.applications.MobileNetV2(alpha=1.0, weights=None, classifier_activation=None)
    with pytest.raises(ValueError, match=r"alpha = the supernet's width_scale \(0.5\)"):
        keras_applications.load_keras_applications_weights(net, source)
    # All or nothing: the stem fits, the classifier (10 classes) does not.
    net = Supernet("mobilenet_v1", num_classes=1000, width_scale=0.25)
    source = keras.applications.MobileNet(
        alpha=0.25, weights=None, input_shape=(32, 32, 3), classes=10
    )
    before = [w.numpy().copy() for w in net.weights]
    with pytest.raises(ValueError, match=r"'conv_preds' \[\(256, 10\), \(10,\)\]"):
        keras_applications.load_keras_applications_weights(net, source)
    for b, w in zip(before, net.weights):
        np.testing.assert_array_equal(b, w.numpy())
    headless = keras.applications.MobileNet(alpha=1.0, weights=None, include_top=False)
    with pytest.raises(ValueError, match="has no layer 'conv_preds'"):
        keras_applications.load_keras_applications_weights(Supernet("mobilenet_v1"), headless)


def test_name_maps_cover_every_weight_layer():
    for model in APPS:
        net = Supernet(model, num_classes=10, width_scale=0.25)
        names = keras_applications.keras_applications_name_map(model)
        assert sorted(names) == sorted(layer.name for layer in net.switchable_layers)
    assert names["block_2_expand_bn"] == "block_1_expand_BN"
    assert names["block_1_project"] == "expanded_conv_project"


@pytest.mark.parametrize("model,alpha", ALL_ALPHAS)
def test_channel_counts_match_keras_applications_per_alpha(model, alpha):
    """The supernet at width_scale=alpha has keras.applications' weight
    shapes layer by layer, except MobileNetV2 below alpha 1 (head conv),
    which `keras_alpha` refuses in one line."""
    source = APPS[model](alpha=alpha, weights=None, input_shape=(32, 32, 3), classes=10)
    theirs = {layer.name: layer for layer in source.layers}
    # keras.applications' width rules as pretrained writes them, layer by layer.
    channels = keras_applications.keras_applications_stage_channels(model, alpha)
    name_map = keras_applications.keras_applications_name_map(model)
    for spec, _, _, _, c_out in blocks.walk(model, 32, channels, 10):
        if spec.kind in ("conv", "depthwise"):
            kernel = theirs[name_map[spec.name]].weights[0]
            assert kernel.shape[2 if spec.kind == "depthwise" else 3] == c_out, spec.name

    net = Supernet(model, num_classes=10, width_scale=alpha)
    differ = []
    for ours, their_name in name_map.items():
        want = [tuple(w.shape) for w in theirs[their_name].weights]
        if ours == "classifier" and len(want[0]) == 4:
            want[0] = want[0][-2:]
        if [tuple(w.shape) for w in net.get_layer_by_name(ours).weights] != want:
            differ.append(ours)
    if (model, alpha) in REFUSED:
        assert differ == ["head_conv", "head_conv_bn", "classifier"]
        with pytest.raises(ValueError) as e:
            keras_applications.keras_alpha(net)
        message = _one_line(e)
        assert f"MobileNetV2 alpha {alpha} does not fit" in message
        assert "stage 8 (head conv) has 1280 channels there" in message
        assert "fit width_scale 1.0, 1.3, 1.4" in message
    else:
        assert differ == []
        assert keras_applications.keras_alpha(net) == alpha
        keras_applications.load_keras_applications_weights(net, source)  # every shape fits


def test_widths_without_keras_applications_weights_are_refused():
    with pytest.raises(ValueError) as e:
        keras_applications.keras_alpha(Supernet("mobilenet_v1", num_classes=10, width_scale=0.3))
    assert "keras.applications has no MobileNet alpha 0.3 (it has 0.25, 0.5, 0.75, 1.0)" in (
        _one_line(e)
    )
    wide = Supernet("mobilenet_v1", num_classes=10, width_scale=0.5, width_range=(0.5, 1.25))
    with pytest.raises(ValueError) as e:
        keras_applications.keras_alpha(wide)
    assert "stage 0 (stem conv) has 16 channels there, 24 in the supernet" in _one_line(e)


def test_keras_cache_dir_is_keras_home_models():
    assert keras_applications.keras_cache_dir() in (
        os.path.join(os.path.expanduser(keras_applications.keras_home()), "models"),
        "/tmp/.keras/models",  # where get_file goes when keras_home is read-only
    )


def test_keras_home_is_what_keras_uses(tmp_path):
    """The one private Keras API of the package (keras.src's keras_home):
    KERAS_HOME set before Keras loads is what it returns. A Keras that moves
    or changes it fails here, naming it."""
    import subprocess
    import sys

    code = "from pss_keras.supernet import keras_applications as k; print(k.keras_home())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, KERAS_HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path)
