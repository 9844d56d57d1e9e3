"""The per-metric target lists of a command line (pss_keras.jobs.targets)."""

import pytest

from pss_keras.jobs.targets import MetricTargets


def test_targets_per_metric_type_in_the_given_order():
    targets = MetricTargets.parse(
        ["latency_cpu", " flops"], ["20", "100"], ["40", "300"], ["10", "100"],
        ["lut/cpu.json", "None"],
    )  # fmt: skip
    assert targets.metric_types == ("latency_cpu", "flops")
    assert targets.flops == (100.0, 300.0, 100.0)
    assert targets.latency_targets == ((20.0, 40.0, 10.0),)
    assert targets.lut_paths == ("lut/cpu.json",)
    flops_only = MetricTargets.parse(["flops"], ["1"], ["3"], ["1"])
    assert (flops_only.flops, flops_only.latency_targets, flops_only.lut_paths) == (
        (1.0, 3.0, 1.0), (), ()
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        ((["flops"], ["1", "2"], ["3"], ["1"]),
         r"--infer_metric_target_range_starts needs one value per metric type \(flops\)"),
        ((["flops"], ["1"], ["x"], ["1"]), r"--infer_metric_target_range_stops=x must be numbers"),
        ((["flops", "latency_cpu"], ["1", "2"], ["3", "4"], ["1", "1"], ["None"]),
         r"--lut_dirs needs one entry per metric type \(flops,latency_cpu\)"),
        ((["latency_cpu"], ["1"], ["3"], ["1"], ["None"]),
         r"--lut_dirs: latency_cpu needs a latency table .*, got None\."),
        ((["flops"], ["1"], ["3"], ["1"], ["t.json"]),
         r"--lut_dirs: flops needs None \(FLOPs are counted\), got t.json\."),
    ],
)  # fmt: skip
def test_lists_that_do_not_fit_name_the_flag(args, message):
    with pytest.raises(ValueError, match=message):
        MetricTargets.parse(*args)
