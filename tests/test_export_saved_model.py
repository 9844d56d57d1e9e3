"""pss_keras.export.saved_model: the SavedModel of a job's tiers (every mode,
signatures, warm-up, versions, a full disk). Also the serving signature's
preprocessing against the evaluation transform."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import _one_line

from pss_keras.data import preprocessing
from pss_keras.export import saved_model as export
from pss_keras.jobs import directory as jobs
from pss_keras.utils import fileio

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture(scope="module")
def exports(trained_job, tmp_path_factory):
    config, _ = trained_job
    base = tmp_path_factory.mktemp("exports")
    return {
        mode: export.export(config.job_dir, str(base / mode), mode=mode, latency_repeats=2)
        for mode in export.MODES
    }


def _images(seed=0, shape=(3, 45, 61, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("mode", export.MODES)
def test_every_tier_equals_the_supernet(trained_job, exports, mode):
    config, summary = trained_job
    job = jobs.Job(config.job_dir)
    loaded = tf.saved_model.load(exports[mode]["path"])
    names = [e["name"] for e in summary["retained"]]
    encoded = [f"{n}_bytes" for n in names]
    assert sorted(loaded.signatures) == sorted(
        [*names, *encoded, "serving_default", "tiers", "tier_table"]
    )
    images = _images()
    for entry in job.retained:
        subnet, stats = job.tier(entry)

        # The reference (the supernet with this subnet active and its
        # calibrated statistics) runs as a graph too: eager and graph float32
        # differ by ~1e-6, which an untrained tiny net can amplify.
        @tf.function
        def reference(t, subnet=subnet, stats=stats):
            x = preprocessing.preprocess(t, job.image_size)
            return job.supernet(x, subnet=subnet, bn_stats=stats)

        expected = reference(tf.constant(images)).numpy()
        out = loaded.signatures[entry.name](images=tf.constant(images))
        # Every mode folds BN into the convolutions, which changes float32
        # rounding: equal to 5e-5 relative to the logits' scale (max |logit|;
        # measured up to 7e-6 of it on an AVX-512 EPYC, 1.2e-5 on an
        # AVX2-only one, whose kernels round differently).
        scale = np.abs(expected).max()
        np.testing.assert_allclose(out["logits"].numpy(), expected, atol=5e-5 * scale, rtol=0)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
        top = np.argsort(-expected, axis=-1)[:, :5]
        np.testing.assert_array_equal(out["top5_indices"].numpy(), top)
        classes = [c.decode() for c in out["top5_classes"].numpy()[0]]
        assert classes == [job.class_names[i] for i in top[0]]
    largest = max(job.retained, key=lambda e: e.mflops).name
    np.testing.assert_array_equal(
        loaded.signatures["serving_default"](images=tf.constant(images))["logits"],
        loaded.signatures[largest](images=tf.constant(images))["logits"],
    )


def test_tiers_signature_and_assets(trained_job, exports):
    _, summary = trained_job
    path = exports["shared"]["path"]
    loaded = tf.saved_model.load(path)
    tiers = loaded.signatures["tiers"]()
    # tier_table is the same table, with an input that is ignored whatever it holds
    for dummy in (tf.constant(0), tf.constant([[7, 8]])):
        table = loaded.signatures["tier_table"](dummy=dummy)
        assert sorted(table) == sorted(tiers)
        for key, value in tiers.items():
            np.testing.assert_array_equal(table[key].numpy(), value.numpy())
    retained = sorted(summary["retained"], key=lambda e: e["mflops"])
    assert [n.decode() for n in tiers["bytes_signatures"].numpy()] == [
        f"{e['name']}_bytes" for e in retained
    ]
    assert [n.decode() for n in tiers["names"].numpy()] == [e["name"] for e in retained]
    np.testing.assert_allclose(tiers["mflops"].numpy(), [e["mflops"] for e in retained], rtol=1e-6)
    np.testing.assert_allclose(tiers["top1"].numpy(), [e["top1"] for e in retained], rtol=1e-6)
    assert np.all(tiers["latency_ms"].numpy() > 0)
    with open(os.path.join(path, "assets.extra", "tiers.json")) as f:
        table = json.load(f)
    assert [t["name"] for t in table["tiers"]] == [e["name"] for e in retained]
    from tensorflow_serving.apis import prediction_log_pb2

    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(warmup)
    ]
    signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(signatures) == sorted(
        [*(e["name"] for e in retained), *(f"{e['name']}_bytes" for e in retained)]
        + ["serving_default", "tiers", "tier_table"]
    )
    encoded = next(log for log in logs if "image_bytes" in log.predict_log.request.inputs)
    jpeg = tf.make_ndarray(encoded.predict_log.request.inputs["image_bytes"])[0]
    size = exports["shared"]["image_size"]
    assert tf.io.decode_jpeg(jpeg).shape == (size, size, 3)


@pytest.mark.parametrize("mode", export.MODES)
def test_encoded_images_give_the_logits_of_their_pixels(exports, mode):
    """A tier's ``<tier>_bytes`` signature on JPEG and PNG bytes equals the
    tier on the pixels the same decoder gives, image by image, also for a
    batch of images of different sizes (each is cropped on its own)."""
    loaded = tf.saved_model.load(exports[mode]["path"])
    rng = np.random.default_rng(3)
    pixels = [
        rng.integers(0, 256, (40, 52, 3)).astype(np.uint8),
        rng.integers(0, 256, (61, 33, 3)).astype(np.uint8),
    ]
    files = [tf.io.encode_jpeg(pixels[0], quality=90), tf.io.encode_png(pixels[1])]
    for tier in exports[mode]["tiers"]:
        name = tier["name"]
        out = loaded.signatures[f"{name}_bytes"](image_bytes=tf.stack(files))
        for i, data in enumerate(files):
            decoded = tf.io.decode_image(data, channels=3)[None]
            expected = loaded.signatures[name](images=decoded)
            # Measured equal to the bit on an AVX-512 EPYC; a batch of two
            # may take other kernels than a batch of one: 1e-5 of the scale.
            scale = np.abs(expected["logits"].numpy()).max()
            np.testing.assert_allclose(
                out["logits"][i], expected["logits"][0], atol=1e-5 * scale, rtol=0
            )
            np.testing.assert_array_equal(out["top5_indices"][i], expected["top5_indices"][0])


def test_undecodable_image_bytes_are_refused_by_the_graph(exports):
    loaded = tf.saved_model.load(exports["shared"]["path"])
    name = exports["shared"]["tiers"][0]["name"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures[f"{name}_bytes"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.parametrize("mode", export.MODES)
def test_export_loads_and_warms_up_as_tf_serving_loads_it(exports, mode):
    """The session TF Serving loads (the MetaGraph tagged serve, by the
    SignatureDef's tensor names) replays every warm-up request and answers
    as the SavedModel's own functions do."""
    from pss_keras.testing.served_model import ServedModel

    path = exports[mode]["path"]
    model = ServedModel(path)
    try:
        names = [t["name"] for t in exports[mode]["tiers"]]
        encoded = [f"{n}_bytes" for n in names]
        assert sorted(model.signature_defs) == sorted(
            [*names, *encoded, "serving_default", "tiers", "tier_table"]
        )
        assert model.warmup_requests == 2 * len(names) + 3
        loaded = tf.saved_model.load(path)
        images = _images(2)
        for name in [*names, "serving_default"]:
            out = model.predict(name, {"images": images})
            expected = loaded.signatures[name](images=tf.constant(images))
            assert sorted(out) == sorted(expected)
            np.testing.assert_allclose(out["logits"], expected["logits"].numpy(), atol=1e-5)
            np.testing.assert_array_equal(out["top5_classes"], expected["top5_classes"].numpy())
        tiers = model.predict("tiers", {})
        assert [n.decode() for n in tiers["names"]] == names
        table = model.predict("tier_table", {"dummy": np.int32(0)})
        assert [n.decode() for n in table["names"]] == names
        jpeg = tf.io.encode_jpeg(images[0]).numpy()
        out = model.predict(encoded[0], {"image_bytes": np.array([jpeg], object)})
        pixels = tf.io.decode_jpeg(jpeg)[None]
        expected = loaded.signatures[names[0]](images=pixels)["logits"].numpy()
        np.testing.assert_allclose(out["logits"], expected, atol=1e-5 * np.abs(expected).max())
    finally:
        model.close()


def _graph_constant_bytes(path):
    """Bytes of every constant in ``saved_model.pb``: the graph's own (where
    captured tensors such as the BN statistics go) and its functions'."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    total = 0
    for graph in model.meta_graphs:
        functions = graph.graph_def.library.function
        nodes = [*graph.graph_def.node, *(n for f in functions for n in f.node_def)]
        total += sum(n.attr["value"].tensor.ByteSize() for n in nodes if n.op == "Const")
    return total


def _folder_size(path):
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for folder, _, files in os.walk(path)
        for f in files
    )


@pytest.mark.parametrize("mode", ["shared", "shared_lowmem"])
def test_weights_stored_once_in_shared_mode(trained_job, exports, mode):
    config, _ = trained_job
    job = jobs.Job(config.job_dir)
    weights = sum(int(np.prod(w.shape)) * 4 for w in job.supernet.weights)
    tiers = exports[mode]["tiers"]
    entries = job.select([t["name"] for t in tiers])
    bn_stats = sum((m.size + v.size) * 4 for e in entries for m, v in job.tier(e)[1].values())
    shared_path, standalone_path = exports[mode]["path"], exports["standalone"]["path"]

    # The variables: the weights once (measured 0.86 MB (shared) and 0.85 MB
    # (shared_lowmem) of variables for 0.88 MB of weights; the supernet's
    # moving statistics and BN scales are not read by any signature and not
    # saved; `shared`'s materialized kernels are built at load, not saved).
    variables = _folder_size(os.path.join(shared_path, "variables"))
    assert weights * 0.9 < variables < weights * 1.15
    assert _folder_size(os.path.join(standalone_path, "variables")) > variables

    # The graph holds no copy of them: its constants are each tier's folded
    # BN scale and bias (as many numbers as the calibrated statistics, 59 KB
    # for the 3 tiers, 7% of the weights) plus names and shapes (measured
    # 102 KB in all, 12% of the weights). One copy of the weights as
    # constants adds 0.88 MB; even the largest kernel alone (262 KB) breaks
    # this bound.
    constants = _graph_constant_bytes(shared_path)
    assert constants < bn_stats + 0.1 * weights, (constants, bn_stats, weights)

    # The whole SavedModel (saved_model.pb + variables + assets), measured
    # 1.58 MB (shared) and 1.27 MB (shared_lowmem) = 1.8 x and 1.4 x the
    # weights: variables 1.0 x, the rest the per-tier graphs (and, for
    # shared, the kernels' load-time initializers). Allowed: 1.1 x the
    # weights plus 0.3 x per tier and default signature (2.3 x here; a
    # tier's encoded-image signature calls its graph, it holds no copy); one
    # constant copy of the weights makes shared >= 2.8 x.
    signatures = len(tiers) + 1
    total = _folder_size(shared_path)
    assert total < weights * (1.1 + 0.3 * signatures), (total, weights, signatures)


def test_saved_model_cli_lists_every_tier(exports):
    result = subprocess.run(
        [SAVED_MODEL_CLI, "show", "--all", "--dir", exports["shared"]["path"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for tier in exports["shared"]["tiers"]:
        assert f"signature_def['{tier['name']}']" in result.stdout
    assert "DT_UINT8" in result.stdout and "shape: (-1, -1, -1, 3)" in result.stdout


def test_versions_are_new_and_atomic(trained_job, tmp_path):
    config, _ = trained_job
    base = tmp_path / "model"
    os.makedirs(base / "7")  # an existing version (e.g. being served) is never touched
    (base / "7" / "keep").write_text("x")
    first = export.export(config.job_dir, str(base), latency_repeats=1)
    assert first["version"] == 8 and (base / "7" / "keep").exists()
    assert sorted(os.listdir(base)) == ["7", "8"]  # no temporary directory left behind
    assert export.next_version(str(base)) == 9


def test_export_errors(trained_job, tmp_path):
    config, _ = trained_job
    with pytest.raises(ValueError, match="it needs a finished training run"):
        export.export(str(tmp_path / "nope"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"Unknown tier\(s\) \['flops_9999m'\]"):
        export.export(config.job_dir, str(tmp_path / "out"), tiers=["flops_9999m"])
    with pytest.raises(ValueError, match="export mode 'fast' is unknown"):
        export.export(config.job_dir, str(tmp_path / "out"), mode="fast")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def _tiny_archive():
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Dense(4)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    fn = lambda images: {"logits": model(tf.cast(images, "float32"))}  # noqa: E731
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    archive.add_endpoint("serving_default", fn, input_signature=spec)
    archive.add_endpoint("tiers", lambda: {"n": tf.constant([1])}, input_signature=[])
    return archive


@pytest.mark.parametrize("where", ["saved_model", "tiers.json", "warmup"])
def test_a_full_disk_adds_no_export_version(tmp_path, disk_full, monkeypatch, where):
    """Issue #14: a disk that fills up midway through an export leaves no
    version folder (TF Serving loads any all-digit folder) and no temporary."""
    import tensorflow as tf

    from pss_keras.export import saved_model as export

    base = tmp_path / "model"
    (base / "3").mkdir(parents=True)
    (base / "3" / "saved_model.pb").write_bytes(b"x" * 2000)
    archive = _tiny_archive()
    no_space = tf.errors.ResourceExhaustedError(None, None, "...; No space left on device")
    if where == "saved_model":  # part of the SavedModel is there, then TF fails
        real = archive.write_out

        def write_out(path, **kwargs):
            real(path, **kwargs)
            raise no_space

        monkeypatch.setattr(archive, "write_out", write_out)
    elif where == "tiers.json":
        disk_full("tiers.json", after=10)
    else:

        class FullWriter(tf.io.TFRecordWriter):
            def write(self, record):
                raise no_space

        monkeypatch.setattr(tf.io, "TFRecordWriter", FullWriter)
    summary = {"image_size": 8, "tiers": []}
    with pytest.raises(Exception) as caught:
        export._write_version(archive, str(base), summary, {"serving_default": "images"})
    assert os.listdir(base) == ["3"]  # no version 4, no hidden temporary folder
    assert isinstance(caught.value, fileio.DiskFullError)
    assert re.fullmatch(
        rf"Out of disk space writing {re.escape(str(base / '4'))} \(.* free on .*, about 2.0 kB "
        r"needed\): free space on .* and re-run; no version was added; the newest, 3, is "
        r"untouched\.",
        _one_line(caught.value),
    )
    monkeypatch.undo()
    final, version = export._write_version(
        archive, str(base), summary, {"serving_default": "images"}
    )
    assert version == 4 and sorted(os.listdir(base)) == ["3", "4"]


def _reference_eval_crop(image, image_size):
    """Pixels [0, 255] of the evaluation transform, written out: a bilinear
    resize of the shorter side to image_size * 256 / 224, the central square."""
    h, w = image.shape[:2]
    scale = round(image_size * 256 / 224) / min(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    resized = tf.image.resize(image.astype(np.float32), (new_h, new_w), method="bilinear")
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    crop = resized.numpy()[top : top + image_size, left : left + image_size]
    return np.clip(crop, 0.0, 255.0)


@pytest.mark.parametrize(
    "shape",
    [(2, 50, 70, 3), (2, 70, 50, 3), (1, 32, 32, 3), (2, 20, 28, 3), (1, 37, 300, 3)],
    ids=["landscape", "portrait", "square", "upscaled", "panorama"],
)
def test_preprocess_matches_the_evaluation_transform(shape):
    images = _images(1, shape)
    batched = preprocessing.preprocess(tf.constant(images), 32).numpy()
    pixels = preprocessing.preprocess(tf.constant(images), 32, normalized=False).numpy()
    assert batched.shape == pixels.shape == (shape[0], 32, 32, 3)
    mean, std = np.array(preprocessing.MEAN_RGB), np.array(preprocessing.STDDEV_RGB)
    for image, out, out_pixels in zip(images, batched, pixels):
        single = preprocessing.eval_transform(tf.constant(image), 32).numpy()
        np.testing.assert_allclose(out, single, atol=1e-5)
        reference = _reference_eval_crop(image, 32)
        np.testing.assert_allclose(out_pixels, reference, atol=1e-3)
        np.testing.assert_allclose(out, (reference / 255.0 - mean) / std, atol=1e-5)


def test_preprocess_keeps_only_the_centre():
    # Dark centre, bright bands at the sides and a bright first and last row:
    # at 32 px a 48 x 80 image is resized to 37 x 62 and the central 32 x 32
    # (source columns ~19.5..59.5, rows ~2.7..43) is all dark. No crop, an
    # off-centre crop or a resize of the shorter side straight to 32 is not.
    images = np.zeros((2, 48, 80, 3), np.uint8)
    images[:, :, :16] = images[:, :, 64:] = 255
    images[:, 0] = images[:, -1] = 255
    pixels = preprocessing.preprocess(tf.constant(images), 32, normalized=False).numpy()
    np.testing.assert_allclose(pixels, 0.0, atol=1e-3)
