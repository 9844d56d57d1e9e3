"""The served tiers as a client sees them (pss_keras.serving.tiers): tiers
from GetModelMetadata's signatures, the latency a budget is compared with,
the dominant tiers, and the refusal of tiers without a cost table. No server."""

import pytest

from pss_keras import serving
from pss_keras.serving import tiers as served_tiers


def _tier(name, mflops, top1, latency_ms, predicted=None, runtime=""):
    return serving.Tier(
        name, "flops", mflops, mflops, 0, 32, top1, latency_ms, predicted, "lut", runtime
    )


def _images_input(shape, dtype="uint8"):
    return {"inputs": {"images": (dtype, shape)}, "outputs": {"logits": ("float", (None, 10))}}


def test_tiers_from_metadata_keep_only_image_signatures_by_resolution():
    signatures = {
        "serving_default": _images_input((None, 32, 32, 3)),
        "tiers": {"inputs": {}, "outputs": {"names": ("string", (None,))}},
        "__saved_model_init_op": _images_input((None, 32, 32, 3)),
        "wide": _images_input((None, 32, 32, 3)),
        "narrow": _images_input((None, 24, 24, 3)),
        "any_size": _images_input((None, None, None, 3)),
        "any_rank": _images_input(None),
        "not_square": _images_input((None, 24, 32, 3)),
        "floats": _images_input((None, 32, 32, 3), dtype="float"),
        "grey": _images_input((None, 32, 32, 1)),
        "flat": _images_input((None, 3)),
        "two_inputs": {
            "inputs": {"images": ("uint8", (None, 32, 32, 3)), "x": ("float", (None,))},
            "outputs": {},
        },
    }
    tiers = serving.tiers_from_metadata(signatures)
    assert [(t.name, t.resolution) for t in tiers] == [
        ("narrow", 24),
        ("wide", 32),
        ("any_rank", None),
        ("any_size", None),
        ("not_square", None),
    ]
    assert all(
        t.mflops is None and t.top1 is None and t.latency_ms is None and t.metric_type is None
        for t in tiers
    )


def test_tier_latency_ms_by_source():
    measured = _tier("a", 10.0, 0.5, 4.0)
    lite = _tier("b", 10.0, 0.5, 4.0, predicted=1.5, runtime="tflite")
    served = _tier("c", 10.0, 0.5, 4.0, predicted=3.0, runtime="tensorflow")
    assert serving.LATENCY_SOURCES == ("auto", "measured", "predicted")
    # auto: the prediction only when its table measured the serving path.
    assert [serving.tier_latency_ms(t) for t in (measured, lite, served)] == [4.0, 4.0, 3.0]
    assert [serving.tier_latency_ms(t, "measured") for t in (lite, served)] == [4.0, 4.0]
    assert [serving.tier_latency_ms(t, "predicted") for t in (lite, served)] == [1.5, 3.0]
    with pytest.raises(serving.ServingError, match=r"^Tier a has no predicted latency"):
        serving.tier_latency_ms(measured, "predicted")
    with pytest.raises(serving.ServingError, match=r"latency_source='fastest' is unknown"):
        serving.tier_latency_ms(measured, "fastest")


def test_dominant_tiers_keep_the_tiers_worth_their_cost():
    tiers = [
        _tier("big", 40.0, 0.85, 30.0),
        _tier("small", 10.0, 0.60, 4.0),
        _tier("worse", 30.0, 0.70, 12.0),  # dearer than mid, less accurate
        _tier("mid", 20.0, 0.80, 9.0),
        _tier("tie", 25.0, 0.80, 9.0),  # as fast and accurate as mid, more MFLOPs
    ]
    kept, dominated = serving.dominant_tiers(tiers, "measured")
    assert [t.name for t in kept] == ["small", "mid", "big"]
    assert sorted(t.name for t in dominated) == ["tie", "worse"]


def test_tiers_without_a_cost_table_are_refused_where_a_choice_needs_one():
    tiers = serving.tiers_from_metadata({"wide": _images_input((None, 32, 32, 3))})
    message = (
        r"^Choosing among tiers needs each tier's MFLOPs and latency, which only the "
        r"tier table \('tier_table' signature\) gives; .* Choose a tier by name: \['wide'\]\.$"
    )
    with pytest.raises(serving.ServingError, match=message):
        serving.dominant_tiers(tiers)
    served_tiers.require_tier_table([_tier("a", 1.0, 0.5, 1.0)], "anything")  # a table: accepted


@pytest.mark.parametrize("unmeasured", [None, float("nan")])
def test_tiers_without_top1_are_kept_and_never_dominate(unmeasured):
    """A job without validation data: its tiers' top-1 is NaN (None as the
    tier table's reader gives it). None is dominated; with some measured,
    those are filtered among themselves alone."""
    assert not served_tiers.has_top1(_tier("x", 1.0, unmeasured, 1.0))
    assert served_tiers.has_top1(_tier("x", 1.0, 0.0, 1.0))
    tiers = [
        _tier(n, m, unmeasured, ms) for n, m, ms in [("c", 30, 12), ("a", 10, 4), ("b", 20, 9)]
    ]
    kept, dominated = serving.dominant_tiers(tiers, "measured")
    assert [t.name for t in kept] == ["a", "b", "c"] and dominated == []
    mixed = tiers + [_tier("good", 5.0, 0.8, 2.0), _tier("worse", 25.0, 0.7, 10.0)]
    kept, dominated = serving.dominant_tiers(mixed, "measured")
    assert [t.name for t in kept] == ["good", "a", "b", "c"]
    assert [t.name for t in dominated] == ["worse"]
    served_tiers.require_tier_table(tiers, "anything")  # cost without accuracy: accepted
