import keras
import numpy as np
import pytest

from pss_keras import pretrained
from pss_keras.supernet import Supernet

APPS = {
    "mobilenet_v1": keras.applications.MobileNet,
    "mobilenet_v2": keras.applications.MobileNetV2,
}


def _randomize_bn(model, rng):
    # Fresh keras models have mean 0 / variance 1: make the statistics count.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(0, 0.1, b.shape),
                    rng.normal(0, 0.1, m.shape),
                    rng.uniform(0.5, 1.5, v.shape),
                ]
            )


@pytest.mark.parametrize("model", sorted(APPS))
def test_largest_subnet_reproduces_keras_applications(model, rng):
    keras.utils.set_random_seed(0)
    source = APPS[model](alpha=1.0, weights=None, classifier_activation=None)
    _randomize_bn(source, rng)
    net = Supernet(model)
    x = rng.uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    assert not np.allclose(net(x), source(x, training=False), atol=1e-3)
    pretrained.load_keras_applications_weights(net, source)
    expected = source(x, training=False).numpy()
    np.testing.assert_allclose(net(x).numpy(), expected, atol=1e-4, rtol=0)
    # Smaller subnets run on the imported weights too.
    assert net(x, subnet=net.space.smallest()).shape == (2, 1000)


def test_mismatched_source_is_rejected():
    net = Supernet("mobilenet_v2", num_classes=10, width_scale=0.5)
    source = keras.applications.MobileNetV2(alpha=1.0, weights=None, classifier_activation=None)
    with pytest.raises(ValueError, match="width_scale=1.0 and the same num_classes"):
        pretrained.load_keras_applications_weights(net, source)
    headless = keras.applications.MobileNet(alpha=1.0, weights=None, include_top=False)
    with pytest.raises(ValueError, match="has no layer 'conv_preds'"):
        pretrained.load_keras_applications_weights(Supernet("mobilenet_v1"), headless)


def test_name_maps_cover_every_weight_layer():
    for model in APPS:
        net = Supernet(model, num_classes=10, width_scale=0.25)
        names = pretrained.keras_applications_name_map(model)
        assert sorted(names) == sorted(layer.name for layer in net.switchable_layers)
    assert names["block_2_expand_bn"] == "block_1_expand_BN"
    assert names["block_1_project"] == "expanded_conv_project"
