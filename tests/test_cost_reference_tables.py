"""pss_keras.cost.reference_tables: the reference's .pkl latency tables (safe
loading, prediction, the four shipped tables) and a job's JSON copy of one."""

import collections
import os
import pickle
import sys

import numpy as np
import pytest
from conftest import shared_data_folder
from latency_helpers import (
    HAND_WRITTEN,
    V1_LARGEST,
    V1_LARGEST_KEYS,
    V1_MIXED,
    V1_MIXED_KEYS,
    V2_LARGEST,
    V2_MIXED,
    K,
    _hand_table,
    _reference_pickle,
    _write_table,
)

import pss_keras
from pss_keras.cost import reference_keys as RK
from pss_keras.cost import reference_tables as R
from pss_keras.cost import tables as tables_lib
from pss_keras.supernet import specs

# The reference's four .pkl tables: $PSS_KERAS_REFERENCE_LUTS, or a
# shared/data/reference_luts folder beside the repository's folder.
REFERENCE_LUTS = shared_data_folder("PSS_KERAS_REFERENCE_LUTS", "reference_luts")


@pytest.fixture
def hand_tables(tmp_path, monkeypatch):
    return {
        m: R.load_reference_table(_write_table(tmp_path, _hand_table(m), monkeypatch, f"{m}.pkl"))
        for m in HAND_WRITTEN
    }


# ----------------------------------------------------------------------------
# Loading.


def test_table_pickled_in_the_reference_format_loads(tmp_path, monkeypatch):
    entries = {V1_LARGEST_KEYS[0]: 812.25, V1_LARGEST_KEYS[1]: 1558.0}
    path = _write_table(tmp_path, entries, monkeypatch, "mbv1_tiny.pkl")
    with open(path, "rb") as f:
        assert b"__main__" in f.read()  # as the reference's files name their records
    assert not hasattr(sys.modules["__main__"], "BlockCfg")
    with pytest.raises(AttributeError):  # why a plain pickle.load does not do
        with open(path, "rb") as f:
            pickle.load(f)

    table = R.load_reference_table(path)
    assert table.entries == entries
    assert all(type(key) is RK.BlockCfg for key in table.entries)
    assert (table.path, table.name, len(table), table.model_name) == (
        path, "mbv1_tiny", 2, "mobilenet_v1"
    )  # fmt: skip
    assert isinstance(pss_keras.load_latency_table(path), R.ReferenceLatencyTable)


class _RunsACommand:
    """Pickles as a call of os.system: what a hostile table could hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["whole file", "inside a table"])
def test_pickle_naming_another_class_is_refused_without_running_it(tmp_path, monkeypatch, where):
    marker = tmp_path / "it_ran"
    hostile = _RunsACommand(f"touch {marker}")
    if where == "whole file":
        path = tmp_path / "hostile.pkl"
        path.write_bytes(pickle.dumps(hostile))
    else:
        entries = {V1_LARGEST_KEYS[0]: 1.0, V1_LARGEST_KEYS[1]: hostile}
        path = tmp_path / "hostile.pkl"
        path.write_bytes(_reference_pickle(entries, monkeypatch))

    with pytest.raises(ValueError) as error:
        R.load_reference_table(str(path))
    message = str(error.value)
    assert f"{os.system.__module__}.system" in message and str(path) in message
    assert "refused" in message and len(message.splitlines()) == 1
    assert not marker.exists()
    with pytest.raises(ValueError, match="system"):
        pss_keras.load_latency_table(str(path))
    assert not marker.exists()

    # The control: a plain pickle.load does run it (so the marker would show).
    with monkeypatch.context() as m:
        m.setattr(sys.modules["__main__"], "BlockCfg", RK.BlockCfg, raising=False)
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_any_other_global_is_refused(tmp_path):
    path = tmp_path / "ordered.pkl"
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(ValueError, match=r"tries to load collections\.OrderedDict; .*refused"):
        R.load_reference_table(str(path))


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist; .*scripts/lut/"),
        (b"not a pickle at all", "is not a readable pickle"),
        (b"", "is not a readable pickle"),
        (pickle.dumps([1.0, 2.0]), "holds a list, but .*dict of BlockCfg -> microseconds"),
        (pickle.dumps({}), "holds an empty dict"),
        (pickle.dumps({("Conv2d", 224, 3, 32, None, 3, 2, 1): 1.0}), "key of type tuple"),
    ],
)
def test_files_that_are_not_tables_are_refused_in_one_line(tmp_path, content, match):
    path = tmp_path / "bad.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        R.load_reference_table(str(path))
    assert str(path) in str(error.value) and len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize(
    "entries, match",
    [
        ({V1_LARGEST_KEYS[0]: "fast"}, "maps BlockCfg.* to 'fast'"),
        ({V1_LARGEST_KEYS[0]: float("nan")}, "to nan"),
        ({V1_LARGEST_KEYS[0]: True}, "to True"),
        ({K("Conv2d", 224.0, 3, 32, None, 3, 2, 1): 1.0}, "in_size that is not an int"),
        ({K(7, 224, 3, 32): 1.0}, "block_type that is not a string"),
    ],
)
def test_tables_with_bad_entries_are_refused(tmp_path, monkeypatch, entries, match):
    with pytest.raises(ValueError, match=match):
        R.load_reference_table(_write_table(tmp_path, entries, monkeypatch))


# ----------------------------------------------------------------------------
# Prediction.


@pytest.mark.parametrize("model_name", sorted(HAND_WRITTEN))
def test_prediction_is_the_sum_of_the_blocks(hand_tables, model_name):
    table, values = hand_tables[model_name], _hand_table(model_name)
    configs = [config for config, _ in HAND_WRITTEN[model_name]]
    expected = [sum(values[k] for k in keys) for _, keys in HAND_WRITTEN[model_name]]
    assert [RK.predict_us(table, c) for c in configs] == expected
    assert [pss_keras.predict_latency_us(table, c) for c in configs] == expected
    r, m = specs.configs_to_arrays(configs)
    assert pss_keras.predict_latency_us_np(table, model_name, r, m).tolist() == expected
    assert [sum(us for _, us in table.block_us(c)) for c in configs] == expected
    names = [name for name, _ in table.block_us(configs[0])]
    assert names[0] == "stem" and names[1] == "block_1" and names[-1] == "top"


def test_metric_fn_and_space_checks(hand_tables):
    table = hand_tables["mobilenet_v2"]
    space = specs.SearchSpace("mobilenet_v2")
    table.check_space(space)
    r, m = specs.configs_to_arrays([V2_MIXED, V2_LARGEST])
    assert table.metric_fn()(space, r, m).tolist() == [
        table.predict_us(V2_MIXED), table.predict_us(V2_LARGEST)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="holds mobilenet_v2 blocks .*not mobilenet_v1"):
        table.check_space(specs.SearchSpace("mobilenet_v1"))
    with pytest.raises(ValueError, match="holds mobilenet_v2 blocks .*not mobilenet_v1"):
        table.predict_us(V1_LARGEST)
    with pytest.raises(ValueError, match="width scale 1, not 0.5"):
        table.check_space(specs.SearchSpace("mobilenet_v2", width_scale=0.5))
    assert table.describe() == "PSS-Net reference table mobilenet_v2 (30 entries)"
    assert table.digest() == R.ReferenceLatencyTable(dict(table.entries)).digest()


@pytest.mark.parametrize("vectorized", [False, True])
def test_a_missing_key_names_the_block_and_the_subnet(tmp_path, monkeypatch, vectorized):
    entries = {key: 1.0 for key in V1_MIXED_KEYS if key.in_size != 10 or key.cout != 768}
    table = R.load_reference_table(_write_table(tmp_path, entries, monkeypatch, "mbv1_cpu.pkl"))
    with pytest.raises(ValueError) as error:
        if vectorized:
            table.predict_us_np("mobilenet_v1", *specs.configs_to_arrays([V1_MIXED]))
        else:
            table.predict_us(V1_MIXED)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert table.path in message
    assert (
        "block_12 BlockCfg(block_type='MBV1Block', in_size=10, cin=488, cout=768, cmid=None, "
        "kernel_size=None, stride=2, padding=None)" in message
    )
    assert f"of subnet {V1_MIXED.name}" in message


def test_the_vectorized_path_without_packed_keys_agrees(hand_tables):
    table = hand_tables["mobilenet_v1"]
    fallback = R.ReferenceLatencyTable(
        {**table.entries, K("Conv2d", 9000, 3, 32, None, 3, 2, 1): 1}
    )
    assert fallback._codes is None  # a size beyond 13 bits: one subnet at a time
    r, m = specs.configs_to_arrays([V1_LARGEST, V1_MIXED])
    assert fallback.predict_us_np("mobilenet_v1", r, m).tolist() == (
        table.predict_us_np("mobilenet_v1", r, m).tolist()
    )  # fmt: skip


# ----------------------------------------------------------------------------
# The four tables the reference ships (REFERENCE_LUTS).

# entries, largest subnet (224, all 1.0), smallest (128, all 0.75), as its README gives them.
# entries, largest subnet (224, all 1.0), smallest (128, all 0.75), as its README gives them.
SHIPPED = {
    "mbv1_cpu": ("mobilenet_v1", 20480, 24648, 9079),
    "mbv1_gpu": ("mobilenet_v1", 20480, 240.6, 68.6),
    "mbv2_cpu": ("mobilenet_v2", 37390, 27886, 12267),
    "mbv2_gpu": ("mobilenet_v2", 37390, 272.7, 95.0),
}


@pytest.fixture(scope="module")
def shipped_tables():
    if not os.path.isdir(REFERENCE_LUTS):
        pytest.skip(
            f"{os.path.normpath(REFERENCE_LUTS)} is absent: the reference's four .pkl tables "
            "are not in this checkout (they are in the PSS-Net repository's scripts/lut/)."
        )
    return {
        name: pss_keras.load_latency_table(os.path.join(REFERENCE_LUTS, f"{name}.pkl"))
        for name in SHIPPED
    }


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_tables_predict_the_readmes_figures(shipped_tables, name):
    model_name, entries, largest_us, smallest_us = SHIPPED[name]
    table = shipped_tables[name]
    assert (len(table), table.model_name, table.name) == (entries, model_name, name)
    space = specs.SearchSpace(model_name)
    table.check_space(space)
    # To the figure's last digit (1 us for the CPU tables, 0.1 us for the GPU ones).
    tolerance = 0.5 if isinstance(largest_us, int) else 0.05
    assert pss_keras.predict_latency_us(table, space.largest()) == pytest.approx(
        largest_us, abs=tolerance
    )
    assert pss_keras.predict_latency_us(table, space.smallest()) == pytest.approx(
        smallest_us, abs=tolerance
    )
    # Random subnets of the paper's space (every multiplier varying): all keyed,
    # and the vectorized path gives the very same floats as the per-subnet one.
    r, m = space.random_arrays(300, np.random.default_rng(0))
    vectorized = pss_keras.predict_latency_us_np(table, model_name, r, m)
    one_by_one = [table.predict_us(c) for c in specs.arrays_to_configs(model_name, r, m)]
    assert vectorized.tolist() == one_by_one


# ----------------------------------------------------------------------------
# A job's JSON copy of a reference table (`ReferenceLatencyTable.save`).


@pytest.mark.parametrize("model_name", sorted(HAND_WRITTEN))
def test_json_copy_round_trips(tmp_path, monkeypatch, model_name):
    import json

    pkl = _write_table(tmp_path, _hand_table(model_name), monkeypatch, "ref_cpu.pkl")
    table = pss_keras.load_latency_table(pkl)
    path = str(tmp_path / "latency_cpu.json")
    table.save(path)
    with open(path) as f:
        data = json.load(f)  # plain JSON: read without unpickling anything
    assert data["format"] == R.FORMAT and data["name"] == "ref_cpu"

    copy = pss_keras.load_latency_table(path)
    assert type(copy) is R.ReferenceLatencyTable
    assert copy.entries == table.entries
    assert all(type(key) is RK.BlockCfg for key in copy.entries)
    assert all(type(us) is float for us in copy.entries.values())
    assert (copy.name, copy.model_name, copy.path) == ("ref_cpu", model_name, path)
    assert copy.digest() == table.digest()
    assert (
        copy.describe()
        == table.describe()
        == f"PSS-Net reference table ref_cpu ({len(table)} entries)"
    )
    assert copy.runtime == table.runtime == R.RUNTIME
    configs = [config for config, _ in HAND_WRITTEN[model_name]]
    assert [copy.predict_us(c) for c in configs] == [table.predict_us(c) for c in configs]
    r, m = specs.configs_to_arrays(configs)
    assert copy.predict_us_np(model_name, r, m).tolist() == (
        table.predict_us_np(model_name, r, m).tolist()
    )  # fmt: skip
    # Saved again, the copy is the same file (sorted rows: a stable digest on disk too).
    copy.save(str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_text() == (tmp_path / "latency_cpu.json").read_text()


def _damage_first_row(change):
    def damage(data):
        change(data["entries"][0])
        return data

    return damage


@pytest.mark.parametrize(
    "damage, match",
    [
        (_damage_first_row(lambda row: row.pop()), "an entry has 8 fields, not 9"),
        (_damage_first_row(lambda row: row.append(1.0)), "an entry has 10 fields, not 9"),
        (_damage_first_row(lambda row: row.__setitem__(-1, "fast")), "maps to 'fast'"),
        (_damage_first_row(lambda row: row.__setitem__(-1, None)), "maps to None"),
        (_damage_first_row(lambda row: row.__setitem__(-1, float("nan"))), "maps to nan"),
        (_damage_first_row(lambda row: row.__setitem__(-1, [1.0])), r"maps to \[1\.0\]"),
        (_damage_first_row(lambda row: row.__setitem__(-1, True)), "maps to True"),
        (_damage_first_row(lambda row: row.__setitem__(1, "224")), "in_size that is not an int"),
        (_damage_first_row(lambda row: row.__setitem__(0, 7)), "block_type that is not a string"),
        (lambda data: dict(data, entries=[]), "no entries"),
        (lambda data: {k: v for k, v in data.items() if k != "entries"}, "'entries'"),
        (lambda data: dict(data, entries=42), "damaged"),
        (lambda data: dict(data, entries=[7]), "damaged"),  # a row that is not a list
    ],
)
def test_damaged_json_copy_is_refused_in_one_line(tmp_path, monkeypatch, damage, match):
    import json

    pkl = _write_table(tmp_path, _hand_table("mobilenet_v1"), monkeypatch, "ref_cpu.pkl")
    good = R.load_reference_table(pkl).to_dict()
    path = tmp_path / "latency_cpu.json"
    path.write_text(json.dumps(damage(json.loads(json.dumps(good)))))
    with pytest.raises(ValueError, match=match) as error:
        pss_keras.load_latency_table(str(path))
    message = str(error.value)
    assert str(path) in message and len(message.splitlines()) == 1, message
    with pytest.raises(ValueError, match=match):
        tables_lib.load_table(str(path))
