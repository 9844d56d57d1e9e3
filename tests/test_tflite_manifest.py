"""pss_keras.tflite.manifest: what manifest.json records and prints."""

from pss_keras.tflite import manifest as tflite_manifest


def test_format_manifest_reads_a_manifest_without_top1():
    """A manifest written before tier rows carried the job's top-1 still
    prints, with ``-`` in that column."""
    row = {
        "name": "flops_1m", "resolution": 32, "mflops": 1.0, "size_bytes": 2048,
        "input": {"dtype": "int8"}, "latency_ms": 0.05,
    }  # fmt: skip
    manifest = {
        "tiers": [row, {**row, "name": "flops_2m", "top1": 0.75}],
        "latency": {"num_threads": 1, "repeats": 3},
        "reference": None,
    }
    lines = tflite_manifest.format_manifest(manifest).splitlines()
    assert lines[0].split()[:7] == ["tier", "res", "MFLOPs", "KB", "in", "job", "top1"]
    assert lines[1].split()[:6] == ["flops_1m", "32", "1.00", "2.0", "int8", "-"]
    assert lines[2].split()[:6] == ["flops_2m", "32", "1.00", "2.0", "int8", "0.750"]
