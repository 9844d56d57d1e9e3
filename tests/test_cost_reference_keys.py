"""pss_keras.cost.reference_keys: the reference's block keys of a subnet."""

import pytest
from latency_helpers import HAND_WRITTEN, V2_MIXED

from pss_keras.cost import reference_keys as RK
from pss_keras.supernet import blocks


@pytest.mark.parametrize(
    "config, keys", [pair for pairs in HAND_WRITTEN.values() for pair in pairs], ids=str
)
def test_keys_are_the_references(config, keys):
    assert RK.reference_keys(config) == keys


def test_quirks_the_ninth_multiplier_and_1000_classes():
    # The network keeps MobileNetV2's last conv at 1280 whatever its multiplier ...
    assert blocks.stage_channels(V2_MIXED)[8] == 1280
    # ... but the reference keys it (and the classifier) at make_divisible(1280 * 0.75).
    *_, head, linear = RK.reference_keys(V2_MIXED)
    assert (head.cout, linear.cin, linear.cout) == (960, 960, 1000)
