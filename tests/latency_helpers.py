"""Helpers shared by the latency-table tests (tests/test_cost_*.py and the
runs of tests/test_training_preflight.py): a synthetic table of the
project's format, and the reference's .pkl tables with subnets whose keys
are written out by hand."""

import collections
import pickle
import sys

from pss_keras.cost import latency
from pss_keras.cost import reference_keys as RK
from pss_keras.supernet import specs

TINY = specs.SearchSpace("mobilenet_v1", (16, 32), 8, (0.75, 1.0), 0.25, 10)


def synthetic_table(space, overhead=7.0, runtime="tflite"):
    """A table whose entry is a formula of the block's shape (deterministic)."""
    entries = {
        key: 1.0 + key[1] * key[1] * (key[2] + key[3]) / 1000.0 + 3 * key[0].stride
        for key in latency.table_keys(space)
    }
    device = {"cpu_model": "test CPU", "isa": ["AVX2"], "cores": 2, "threads": 1, "gpu": None}
    return latency.LatencyTable(
        latency.space_dict(space), entries, overhead, {"runtime": runtime, "device": device}
    )


K = RK.BlockCfg


def _reference_pickle(entries: dict, monkeypatch) -> bytes:
    """``entries`` pickled as the reference pickles its tables: keys of a
    namedtuple ``BlockCfg`` defined in ``__main__``."""
    main_block_cfg = collections.namedtuple(
        "BlockCfg", "block_type in_size cin cout cmid kernel_size stride padding",
        defaults=[None, None, None, None],
    )  # fmt: skip
    main_block_cfg.__module__ = "__main__"
    with monkeypatch.context() as m:
        m.setattr(sys.modules["__main__"], "BlockCfg", main_block_cfg, raising=False)
        data = pickle.dumps({main_block_cfg(*key): us for key, us in entries.items()}, protocol=4)
    return data


def _write_table(tmp_path, entries, monkeypatch, name="table.pkl"):
    path = tmp_path / name
    path.write_bytes(_reference_pickle(entries, monkeypatch))
    return str(path)


# ----------------------------------------------------------------------------
# Subnets with their keys written out by hand (the reference's
# create_model_block_list), in block order.


V1_LARGEST = specs.SubnetConfig("mobilenet_v1", 224, (1.0,) * 14)
V1_LARGEST_KEYS = [
    K("Conv2d", 224, 3, 32, None, 3, 2, 1),
    K("MBV1Block", 112, 32, 64, None, None, 1, None),
    K("MBV1Block", 112, 64, 128, None, None, 2, None),
    K("MBV1Block", 56, 128, 128, None, None, 1, None),
    K("MBV1Block", 56, 128, 256, None, None, 2, None),
    K("MBV1Block", 28, 256, 256, None, None, 1, None),
    K("MBV1Block", 28, 256, 512, None, None, 2, None),
    K("MBV1Block", 14, 512, 512, None, None, 1, None),
    K("MBV1Block", 14, 512, 512, None, None, 1, None),
    K("MBV1Block", 14, 512, 512, None, None, 1, None),
    K("MBV1Block", 14, 512, 512, None, None, 1, None),
    K("MBV1Block", 14, 512, 512, None, None, 1, None),
    K("MBV1Block", 14, 512, 1024, None, None, 2, None),
    K("MBV1Block", 7, 1024, 1024, None, None, 1, None),
    K("Linear", 1, 1024, 1000, None, None, None, None),
]
# Channels: make_divisible(base * mult): 24, 64, 104, 112, 256, 192, 432,
# 512 x4, 488, 768, 1024.
V1_MIXED = specs.SubnetConfig(
    "mobilenet_v1", 160, (0.75, 1.0, 0.8, 0.9, 1.0, 0.75, 0.85, 1.0, 1.0, 1.0, 1.0, 0.95, 0.75, 1.0)
)
V1_MIXED_KEYS = [
    K("Conv2d", 160, 3, 24, None, 3, 2, 1),
    K("MBV1Block", 80, 24, 64, None, None, 1, None),
    K("MBV1Block", 80, 64, 104, None, None, 2, None),
    K("MBV1Block", 40, 104, 112, None, None, 1, None),
    K("MBV1Block", 40, 112, 256, None, None, 2, None),
    K("MBV1Block", 20, 256, 192, None, None, 1, None),
    K("MBV1Block", 20, 192, 432, None, None, 2, None),
    K("MBV1Block", 10, 432, 512, None, None, 1, None),
    K("MBV1Block", 10, 512, 512, None, None, 1, None),
    K("MBV1Block", 10, 512, 512, None, None, 1, None),
    K("MBV1Block", 10, 512, 512, None, None, 1, None),
    K("MBV1Block", 10, 512, 488, None, None, 1, None),
    K("MBV1Block", 10, 488, 768, None, None, 2, None),
    K("MBV1Block", 5, 768, 1024, None, None, 1, None),
    K("Linear", 1, 1024, 1000, None, None, None, None),
]
V2_LARGEST = specs.SubnetConfig("mobilenet_v2", 224, (1.0,) * 9)
V2_LARGEST_KEYS = [
    K("Conv2d", 224, 3, 32, None, 3, 2, 1),
    K("MBV2Block", 112, 32, 16, 32, None, 1, None),
    K("MBV2Block", 112, 16, 24, 96, None, 2, None),
    K("MBV2Block", 56, 24, 24, 144, None, 1, None),
    K("MBV2Block", 56, 24, 32, 144, None, 2, None),
    K("MBV2Block", 28, 32, 32, 192, None, 1, None),
    K("MBV2Block", 28, 32, 32, 192, None, 1, None),
    K("MBV2Block", 28, 32, 64, 192, None, 2, None),
    K("MBV2Block", 14, 64, 64, 384, None, 1, None),
    K("MBV2Block", 14, 64, 64, 384, None, 1, None),
    K("MBV2Block", 14, 64, 64, 384, None, 1, None),
    K("MBV2Block", 14, 64, 96, 384, None, 1, None),
    K("MBV2Block", 14, 96, 96, 576, None, 1, None),
    K("MBV2Block", 14, 96, 96, 576, None, 1, None),
    K("MBV2Block", 14, 96, 160, 576, None, 2, None),
    K("MBV2Block", 7, 160, 160, 960, None, 1, None),
    K("MBV2Block", 7, 160, 160, 960, None, 1, None),
    K("MBV2Block", 7, 160, 320, 960, None, 1, None),
    K("Conv2d", 7, 320, 1280, None, 1, 1, 0),
    K("Linear", 1, 1280, 1000, None, None, None, None),
]
# Channels: 24, 16, 24 (19.2 rounds up: 16 is below 90 %), 32, 56, 96, 128,
# 304; the ninth multiplier (0.75) keys the last conv and the classifier at
# 960 although the network keeps 1280 (the reference's quirk).
V2_MIXED = specs.SubnetConfig(
    "mobilenet_v2", 192, (0.75, 1.0, 0.8, 0.9, 0.85, 1.0, 0.8, 0.95, 0.75)
)
V2_MIXED_KEYS = [
    K("Conv2d", 192, 3, 24, None, 3, 2, 1),
    K("MBV2Block", 96, 24, 16, 24, None, 1, None),
    K("MBV2Block", 96, 16, 24, 96, None, 2, None),
    K("MBV2Block", 48, 24, 24, 144, None, 1, None),
    K("MBV2Block", 48, 24, 32, 144, None, 2, None),
    K("MBV2Block", 24, 32, 32, 192, None, 1, None),
    K("MBV2Block", 24, 32, 32, 192, None, 1, None),
    K("MBV2Block", 24, 32, 56, 192, None, 2, None),
    K("MBV2Block", 12, 56, 56, 336, None, 1, None),
    K("MBV2Block", 12, 56, 56, 336, None, 1, None),
    K("MBV2Block", 12, 56, 56, 336, None, 1, None),
    K("MBV2Block", 12, 56, 96, 336, None, 1, None),
    K("MBV2Block", 12, 96, 96, 576, None, 1, None),
    K("MBV2Block", 12, 96, 96, 576, None, 1, None),
    K("MBV2Block", 12, 96, 128, 576, None, 2, None),
    K("MBV2Block", 6, 128, 128, 768, None, 1, None),
    K("MBV2Block", 6, 128, 128, 768, None, 1, None),
    K("MBV2Block", 6, 128, 304, 768, None, 1, None),
    K("Conv2d", 6, 304, 960, None, 1, 1, 0),
    K("Linear", 1, 960, 1000, None, None, None, None),
]
HAND_WRITTEN = {
    "mobilenet_v1": [(V1_LARGEST, V1_LARGEST_KEYS), (V1_MIXED, V1_MIXED_KEYS)],
    "mobilenet_v2": [(V2_LARGEST, V2_LARGEST_KEYS), (V2_MIXED, V2_MIXED_KEYS)],
}


def _hand_table(model_name):
    """Every hand-written key of ``model_name``, each with its own latency
    (halves: the sums are exact)."""
    keys = sorted({k for _, ks in HAND_WRITTEN[model_name] for k in ks}, key=repr)
    return {key: i + 0.5 for i, key in enumerate(keys)}
