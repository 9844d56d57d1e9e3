"""pss_keras.cost.tables: either kind of latency table read from its file and
used through one interface (pss_keras.load_latency_table, predict_latency_us)."""

import pytest
from latency_helpers import _hand_table, _write_table

import pss_keras
from pss_keras.cost import latency
from pss_keras.cost import reference_tables as R
from pss_keras.supernet import specs


def test_public_api_dispatches_on_the_kind_of_table(tmp_path, monkeypatch):
    space = specs.SearchSpace("mobilenet_v1", (32, 32), 8, (1.0, 1.0), width_scale=0.25)
    own = latency.LatencyTable(
        latency.space_dict(space), {key: 2.0 for key in latency.table_keys(space)}, 10.0
    )
    own.save(str(tmp_path / "own.json"))
    loaded = pss_keras.load_latency_table(str(tmp_path / "own.json"))
    assert isinstance(loaded, latency.LatencyTable)
    config = space.largest()
    # 15 blocks (stem, 13, top) at 2 us each, plus 10 us per inference.
    assert pss_keras.predict_latency_us(loaded, config) == 40.0
    r, m = specs.configs_to_arrays([config])
    assert pss_keras.predict_latency_us_np(loaded, "mobilenet_v1", r, m).tolist() == [40.0]

    reference = _write_table(tmp_path, _hand_table("mobilenet_v1"), monkeypatch, "mbv1.pkl")
    assert isinstance(pss_keras.load_latency_table(reference), R.ReferenceLatencyTable)
    with pytest.raises(ValueError, match="does not exist"):
        pss_keras.load_latency_table(str(tmp_path / "absent.json"))
    with pytest.raises(TypeError, match="Expected a latency table .* got dict"):
        pss_keras.predict_latency_us({}, config)
    for name in ("load_latency_table", "predict_latency_us", "count_mflops", "LatencyTable"):
        assert name in pss_keras.__all__


@pytest.mark.parametrize(
    "content, match",
    [(b"{not json", "is not readable JSON"), (b"", "is not readable JSON")],
)
def test_unreadable_json_copy_is_refused_in_one_line(tmp_path, content, match):
    path = tmp_path / "latency_cpu.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        pss_keras.load_latency_table(str(path))
    assert str(path) in str(error.value) and len(str(error.value).splitlines()) == 1
