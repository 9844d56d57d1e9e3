"""pss_keras.data.toydata: the generated synthetic_shapes set."""

import os

_BUILDER = """
import os, sys, time
import tensorflow as tf  # imported before the start signal, so both build at once
from pss_keras.data import toydata
built = []
original = toydata._build
toydata._build = lambda *a: (built.append(1), original(*a))
root, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
toydata.make_synthetic_shapes(root, 12, 4, image_size=32, seed=5)
print("built" if built else "reused", sorted(os.listdir(os.path.join(root, "train"))) == sorted(toydata.CLASSES))
"""


def test_synthetic_shapes_concurrent_builders_build_once(tmp_path):
    """Two processes asked for the set at the same moment (the workers of a
    multi-worker run): one builds, the other waits and reuses it; the result
    is complete and no temporary folder is left."""
    import subprocess
    import sys

    root, go = tmp_path / "shapes", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(root), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outcomes == ["built True", "reused True"]
    counts = [len(os.listdir(root / "train" / c)) for c in sorted(os.listdir(root / "train"))]
    assert counts == [12] * 10
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".synthetic_shapes-")]
