"""Helpers shared by the tests of pss_keras.supernet.keras_applications and
pss_keras.supernet.pretrained."""

import keras


def _randomize_bn(model, rng, bn_class=keras.layers.BatchNormalization):
    # Fresh keras models have mean 0 / variance 1: make the statistics count.
    for layer in model.layers:
        if isinstance(layer, bn_class):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(0, 0.1, b.shape),
                    rng.normal(0, 0.1, m.shape),
                    rng.uniform(0.5, 1.5, v.shape),
                ]
            )


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message
