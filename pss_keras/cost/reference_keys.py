"""How the reference's latency tables key a subnet's blocks, and the
predictions over a table's entries.

The reference (PSS-Net's ``scripts/lut/``) keys every block of a subnet by a
record of its type, input size, channels, kernel, stride and padding
(`BlockCfg`), sums the blocks' entries and adds nothing else; this module
computes those keys for our subnets (`reference_keys`) and looks them up,
one subnet (`predict_us`) or many at once (`predict_us_np`). The table
itself, its file format and safe loading: `pss_keras.cost.reference_tables`.
"""

from __future__ import annotations

import collections

import numpy as np

from pss_keras.supernet import blocks, specs

BlockCfg = collections.namedtuple(
    "BlockCfg",
    "block_type in_size cin cout cmid kernel_size stride padding",
    defaults=(None, None, None, None),
)
BlockCfg.__doc__ = """One block's key in a reference table (the reference's record, as ours).

Equal to, and hashed as, the plain tuple of its fields, as the reference's
own namedtuple is: a table's keys are looked up by value.
"""

# The classifier's outputs in every key (quirk 2 of the module docstring).
REFERENCE_NUM_CLASSES = 1000
# The reference's record type of each architecture's table blocks.
TABLE_BLOCK_TYPES = {"mobilenet_v1": "MBV1Block", "mobilenet_v2": "MBV2Block"}
# Bits per size in a packed key: variant | in_size | cin | cout | cmid.
KEY_BITS = 13
MAX_VARIANTS = 1 << (63 - 4 * KEY_BITS)


# ----------------------------------------------------------------------------
# The reference's keys of a subnet.


def reference_channels(model_name: str, mults) -> list:
    """The widths the reference keys a subnet with: ``make_divisible(base * mult)``
    for every stage, the ninth of MobileNetV2 included (quirk 1).

    Works on a sequence of multipliers (Python ints result) and on an
    array [n, S] (int64 arrays [n] per stage).
    """
    base = blocks.ARCH_SPECS[model_name].base_channels
    if isinstance(mults, np.ndarray):
        return list(blocks.make_divisible_np(np.asarray(base) * mults).T)
    return [blocks.make_divisible(b * m) for b, m in zip(base, mults)]


def _block_fields(model_name: str, resolution, channels):
    """Yields ``(block name, fields)`` of every block of the plan, fields being
    BlockCfg's, with ints or (elementwise) arrays for the sizes."""
    table_block = TABLE_BLOCK_TYPES[model_name]
    layers = blocks.walk(model_name, resolution, channels, REFERENCE_NUM_CLASSES)
    for block in blocks.plan(model_name):
        rows = [next(layers) for _ in block.layers]
        first, in_size, _, c_in, _ = rows[0]
        c_out = rows[-1][4]
        if block.name == "top":  # pool + classifier: keyed by the classifier alone
            yield block.name, ("Linear", 1, c_in, c_out, None, None, None, None)
        elif block.name in ("stem", "head"):
            padding = (first.kernel - 1) // 2  # the reference's explicit 'same' padding
            fields = ("Conv2d", in_size, c_in, c_out, None, first.kernel, first.stride, padding)
            yield block.name, fields
        else:
            cmid = None
            if table_block == "MBV2Block":
                cmid = next(row[3] for row in rows if row[0].kind == "depthwise")
            yield block.name, (table_block, in_size, c_in, c_out, cmid, None, block.stride, None)


def named_keys(config: specs.SubnetConfig) -> list[tuple[str, BlockCfg]]:
    channels = reference_channels(config.model_name, config.stage_width_mults)
    return [
        (name, BlockCfg(*fields))
        for name, fields in _block_fields(config.model_name, config.resolution, channels)
    ]


def reference_keys(config: specs.SubnetConfig) -> list[BlockCfg]:
    """The reference's table keys of ``config``, in order.

    The same list as the reference's ``create_model_block_list`` (stem,
    table blocks, MobileNetV2's last conv, classifier), derived from the
    architecture plan, with both quirks of the module docstring.

    Args:
        config: the subnet (width scale 1: the reference has no other).

    Returns:
        One `BlockCfg` per block (15 for MobileNetV1, 20 for MobileNetV2).
    """
    return [key for _, key in named_keys(config)]


# ----------------------------------------------------------------------------
# Prediction.


def check_model(table, model_name: str) -> None:
    if table.model_name is not None and model_name != table.model_name:
        raise ValueError(
            f"{table._where()} holds {table.model_name} blocks "
            f"({TABLE_BLOCK_TYPES[table.model_name]}), not {model_name} ones; give the "
            f"{model_name} table."
        )


def check_width_scale(table, width_scale: float) -> None:
    if width_scale != 1.0:
        raise ValueError(
            f"{table._where()} keys MobileNets at width scale 1, not {width_scale}; use "
            "--width_scale=1 with the reference's tables, or a table of your own "
            "(scripts/build_latency_lut.py)."
        )


def missing_message(table, block_name: str, key: BlockCfg, subnet: str) -> str:
    return (
        f"{table._where()} has no entry for {block_name} {key} of subnet {subnet}; the "
        "reference's tables cover its paper's search space (resolutions 128..224, "
        "multipliers 0.75..1.0)."
    )


def predict_us(table, config: specs.SubnetConfig) -> float:
    """Predicted latency of one subnet, as the reference's ``LatencyPredictor``.

    The sum, in block order, of the table's entries for `reference_keys`.

    Args:
        table: a reference table (`load_reference_table`).
        config: the subnet.

    Returns:
        Microseconds.

    Raises:
        ValueError: one line, if the table is for the other architecture
            or lacks a block of the subnet (naming the block, its key and
            the subnet).
    """
    check_model(table, config.model_name)
    total = 0.0
    for name, key in named_keys(config):
        total += table._lookup(name, key, config.name)
    return total


def predict_us_np(table, model_name: str, resolutions, mults) -> np.ndarray:
    """Vectorized `predict_us` over many subnets (the sampler's map).

    Looks every block up at once in the table's sorted packed keys; the
    sum runs in the same block order as `predict_us`, so both give the
    same floats.

    Args:
        table: a reference table.
        model_name: architecture of every subnet.
        resolutions: int array [n].
        mults: float array [n, num_stages].

    Returns:
        float64 array [n] of microseconds.

    Raises:
        ValueError: as `predict_us`, for the first subnet with a block the
            table lacks.
    """
    check_model(table, model_name)
    resolutions = np.asarray(resolutions, dtype=np.int64)
    mults = np.array(mults, dtype=np.float64, ndmin=2)
    if table._codes is None:  # a table whose sizes do not pack: one config at a time
        configs = specs.arrays_to_configs(model_name, resolutions, mults)
        return np.array([predict_us(table, c) for c in configs], np.float64)
    channels = reference_channels(model_name, mults)
    total = np.zeros(resolutions.shape, dtype=np.float64)
    for name, fields in _block_fields(model_name, resolutions, channels):
        block_type, in_size, cin, cout, cmid, kernel_size, stride, padding = fields
        sizes = [
            np.broadcast_to(np.asarray(s, np.int64), resolutions.shape)
            for s in (in_size, cin, cout, 0 if cmid is None else cmid)
        ]
        variant = table._variants.get((block_type, kernel_size, stride, padding, cmid is None))
        fits = np.all([(s >= 0) & (s < 1 << KEY_BITS) for s in sizes], axis=0)
        if variant is None:
            found = np.zeros(resolutions.shape, bool)
            at = np.zeros(resolutions.shape, np.int64)
        else:
            codes = pack_key(variant, *(np.where(fits, s, 0) for s in sizes))
            at = np.clip(np.searchsorted(table._codes, codes), 0, len(table._codes) - 1)
            found = fits & (table._codes[at] == codes)
        if not np.all(found):
            i = int(np.flatnonzero(~found)[0])
            key = BlockCfg(
                block_type,
                *(int(s[i]) for s in sizes[:3]),
                None if cmid is None else int(sizes[3][i]),
                kernel_size,
                stride,
                padding,
            )
            subnet = subnet_name(model_name, resolutions[i], mults[i])
            raise ValueError(missing_message(table, name, key, subnet))
        total = total + table._values[at]
    return total


def key_variant(key: BlockCfg) -> tuple:
    """A key's fields that do not vary with the subnet's sizes."""
    return (key.block_type, key.kernel_size, key.stride, key.padding, key.cmid is None)


def pack_key(variant, in_size, cin, cout, cmid):
    """One int64 per key: variant | in_size | cin | cout | cmid (13 bits each)."""
    code = np.asarray(variant, np.int64)
    for size in (in_size, cin, cout, cmid):
        code = (code << KEY_BITS) | np.asarray(size, np.int64)
    return code


def subnet_name(model_name: str, resolution, mults) -> str:
    try:
        return specs.SubnetConfig(model_name, int(resolution), tuple(mults)).name
    except ValueError:
        return f"{model_name} at {resolution} px with multipliers {list(mults)}"
