"""pss_keras.supernet.pretrained: --init_from (imagenet, a keras.applications
file, another job's supernet)."""

import json
import os
import urllib.error

import numpy as np
import pytest
from supernet_helpers import _one_line, _randomize_bn

from pss_keras.jobs import directory as jobs
from pss_keras.supernet import keras_applications, pretrained
from pss_keras.supernet.model import Supernet
from pss_keras.testing import synthetic_job


def _classifier_sentinel(net):
    """Fills the classifier with 7s, so that a re-initialization shows."""
    layer = net.get_layer_by_name("classifier")
    layer.set_weights([np.full(w.shape, 7.0, np.float32) for w in layer.get_weights()])


def _assert_reinitialized(net):
    kernel, bias = net.get_layer_by_name("classifier").get_weights()
    assert kernel.shape == (net.get_layer_by_name("classifier").kernel.shape[0], net.num_classes)
    assert np.isfinite(kernel).all() and not np.any(kernel == 7.0)
    assert 0.005 < kernel.std() < 0.02  # RandomNormal(stddev=0.01), the supernet's own
    np.testing.assert_array_equal(bias, 0.0)


def _assert_copied_but_classifier(net, source_weights):
    """Every supernet layer but the classifier equals the source's layer of
    the keras.applications name map (``source_weights``: name -> arrays)."""
    copied = 0
    for ours, theirs in keras_applications.keras_applications_name_map(net.model_name).items():
        if ours == "classifier":
            continue
        got = net.get_layer_by_name(ours).get_weights()
        want = source_weights[theirs]
        assert len(got) == len(want) > 0, ours
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=ours)
        copied += 1
    assert copied == len(net.switchable_layers) - 1


@pytest.fixture(scope="module")
def mbv1_file(tmp_path_factory):
    """A keras.applications weights file as keras.applications downloads it:
    tf_keras' MobileNet(alpha=0.25) (1000 classes, random weights and BN
    statistics) saved in the legacy Keras .h5 format; with the weights of
    each layer by name."""
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    model = tf_keras.applications.MobileNet(alpha=0.25, weights=None, classifier_activation=None)
    _randomize_bn(model, np.random.default_rng(3), tf_keras.layers.BatchNormalization)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_2_5_224_tf.h5")
    model.save_weights(path)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    return path, weights, (x, model(x, training=False).numpy())


def test_init_from_file_with_other_classes_reinitializes_only_the_classifier(mbv1_file):
    """The issue's test: --init_from=FILE, a keras.applications MobileNet
    alpha 0.25 file (1000 classes), a 10-class supernet at another
    resolution range."""
    path, weights, _ = mbv1_file
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(32, 64))
    _classifier_sentinel(net)
    described = pretrained.initialize_supernet(net, path)
    assert described == (
        f"keras.applications MobileNet alpha 0.25 weights from {path}; "
        "classifier re-initialized (10 classes, file has 1000)"
    )
    _assert_copied_but_classifier(net, weights)
    _assert_reinitialized(net)
    assert net.get_layer_by_name("classifier").kernel.shape == (256, 10)
    x = np.zeros((1, 48, 48, 3), np.float32)
    assert np.isfinite(net(x, subnet=net.space.smallest()).numpy()).all()


def test_init_from_file_with_the_same_classes_reproduces_the_model(mbv1_file):
    path, weights, (x, expected) = mbv1_file
    net = Supernet("mobilenet_v1", num_classes=1000, width_scale=0.25)
    described = pretrained.initialize_supernet(net, path)
    assert described.endswith("; classifier copied (1000 classes)")
    _assert_copied_but_classifier(net, weights)
    kernel, bias = net.get_layer_by_name("classifier").get_weights()
    np.testing.assert_array_equal(kernel, weights["conv_preds"][0].reshape(256, 1000))
    np.testing.assert_array_equal(bias, weights["conv_preds"][1])
    np.testing.assert_allclose(net(x).numpy(), expected, atol=1e-4, rtol=0)


def test_init_from_a_headless_file(tmp_path):
    import tf_keras

    model = tf_keras.applications.MobileNet(alpha=0.25, weights=None, include_top=False)
    path = str(tmp_path / "mobilenet_2_5_224_tf_no_top.h5")
    model.save_weights(path)
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25)
    _classifier_sentinel(net)
    described = pretrained.initialize_supernet(net, path)
    assert described.endswith("classifier re-initialized (10 classes, file has no classifier)")
    _assert_copied_but_classifier(net, {layer.name: layer.get_weights() for layer in model.layers})
    _assert_reinitialized(net)


def test_width_or_architecture_mismatch_with_a_file_is_refused(mbv1_file):
    path = mbv1_file[0]
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.5)
    before = [w.numpy().copy() for w in net.weights]
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, path)
    assert _one_line(e) == (
        f"--init_from={path} holds MobileNet alpha 0.25 weights (conv_pw_13: 256 channels) "
        "but this run's mobilenet_v1 supernet has width_scale 0.5 (512 channels there): use "
        "weights for alpha 0.5, or the file's width (--width_scale)."
    )
    for b, w in zip(before, net.weights):
        np.testing.assert_array_equal(b, w.numpy())  # nothing copied
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(Supernet("mobilenet_v2", width_scale=1.0), path)
    assert _one_line(e) == (
        f"--init_from={path} holds keras.applications MobileNet weights (mobilenet_v1); this "
        "run's supernet is mobilenet_v2."
    )


def test_unusable_files_are_refused_in_one_line(tmp_path):
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25)
    missing = str(tmp_path / "nothing.h5")
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, missing)
    assert _one_line(e).startswith(f"--init_from={missing}: no such file or directory")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, str(garbage))
    assert "is not a readable HDF5 weights file" in _one_line(e)
    keras3 = str(tmp_path / "supernet.weights.h5")
    net.save_weights(keras3)  # Keras 3's format: a job's, not keras.applications'
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, keras3)
    assert "is not a keras.applications weights file" in _one_line(e)
    assert "pass its job directory" in str(e.value)


@pytest.fixture
def no_network(monkeypatch):
    """Keras's download fails as offline; records the URLs it tried."""
    from keras.src.utils import file_utils

    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    return tried


@pytest.mark.parametrize(
    "model,width,resolution_range,expected",
    [
        ("mobilenet_v1", 0.25, (32, 64), "mobilenet_2_5_224_tf.h5"),
        ("mobilenet_v1", 0.75, (128, 192), "mobilenet_7_5_192_tf.h5"),
        ("mobilenet_v2", 1.3, (96, 160), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_160.h5"),
    ],
)  # fmt: skip
def test_imagenet_offline_names_the_file_and_where_to_put_it(
    model, width, resolution_range, expected, tmp_path, no_network
):
    from keras.src.applications import mobilenet, mobilenet_v2

    net = Supernet(model, num_classes=10, width_scale=width, resolution_range=resolution_range)
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, "imagenet", cache_dir=str(tmp_path))
    base = (mobilenet if model == "mobilenet_v1" else mobilenet_v2).BASE_WEIGHT_PATH
    assert no_network == [base + expected]  # keras.applications' own URL
    folder = os.path.join(str(tmp_path), "models")
    assert _one_line(e) == (
        f"--init_from=imagenet needs {expected}, which is not in Keras's cache and could not "
        f"be downloaded (URL fetch failure on {base + expected}: None -- [Errno -3] Temporary "
        f"failure in name resolution): put that file (from {base + expected}) in {folder}/ "
        "and run again."
    )
    assert not os.listdir(folder)  # nothing half-downloaded left behind


def test_imagenet_without_matching_weights_does_not_download(tmp_path, no_network):
    net = Supernet("mobilenet_v2", num_classes=10, width_scale=0.5)
    with pytest.raises(ValueError, match="stage 8 .head conv. has 1280 channels there, 640"):
        pretrained.initialize_supernet(net, "imagenet", cache_dir=str(tmp_path))
    assert no_network == []


def test_imagenet_from_keras_cache_needs_no_network(mbv1_file, tmp_path, no_network):
    path, weights, _ = mbv1_file
    os.makedirs(tmp_path / "models")
    cached = str(tmp_path / "models" / "mobilenet_2_5_224_tf.h5")
    with open(path, "rb") as src, open(cached, "wb") as dst:
        dst.write(src.read())
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, resolution_range=(96, 224))
    _classifier_sentinel(net)
    described = pretrained.initialize_supernet(net, "imagenet", cache_dir=str(tmp_path))
    assert no_network == []
    assert described == (
        f"keras.applications MobileNet alpha 0.25 ImageNet weights ({cached}); "
        "classifier re-initialized (10 classes, file has 1000)"
    )
    _assert_copied_but_classifier(net, weights)
    _assert_reinitialized(net)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A job directory (run_config.json, classes.json, supernet.weights.h5) of
    a 5-class MobileNet supernet at width 0.25, 16..32 px."""
    path = str(tmp_path_factory.mktemp("job") / "job")
    synthetic_job.write(path, "mobilenet_v1", 0.25, (16, 32), tiers=1, num_classes=5, seed=2)
    source = jobs.Job(path).supernet
    _randomize_bn_of_supernet(source)
    source.save_weights(os.path.join(path, jobs.WEIGHTS))
    return path, {layer.name: layer.get_weights() for layer in source.switchable_layers}


def _randomize_bn_of_supernet(net):
    rng = np.random.default_rng(5)
    for layer in net.switchable_layers:
        if layer.name.endswith("_bn"):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])


@pytest.mark.parametrize("num_classes", [10, 5])
def test_init_from_a_job_directory(job_dir, num_classes):
    path, weights = job_dir
    # Another class count (or the same) and another resolution range.
    net = Supernet("mobilenet_v1", num_classes=num_classes, width_scale=0.25,
                   resolution_range=(64, 96), width_range=(0.5, 1.0))  # fmt: skip
    _classifier_sentinel(net)
    described = pretrained.initialize_supernet(net, path)
    what = (
        f"the supernet of job {path} (supernet.weights.h5; mobilenet_v1 at width_scale 0.25, "
        "width_range max 1.0); "
    )
    for layer in net.switchable_layers:
        if layer.name != "classifier":
            for got, want in zip(layer.get_weights(), weights[layer.name], strict=True):
                np.testing.assert_array_equal(got, want, err_msg=layer.name)
    if num_classes == 5:
        assert described == what + "classifier copied (5 classes)"
        for got, want in zip(net.get_layer_by_name("classifier").get_weights(),
                             weights["classifier"]):  # fmt: skip
            np.testing.assert_array_equal(got, want)
    else:
        assert described == what + "classifier re-initialized (10 classes, job has 5)"
        _assert_reinitialized(net)


@pytest.mark.parametrize(
    "model,width,theirs",
    [
        ("mobilenet_v1", 0.5, "mobilenet_v1 at width_scale 0.5, width_range max 1.0"),
        ("mobilenet_v2", 0.25, "mobilenet_v2 at width_scale 0.25, width_range max 1.0"),
    ],
)
def test_a_job_of_another_width_or_architecture_is_refused(job_dir, model, width, theirs):
    path = job_dir[0]
    net = Supernet(model, num_classes=5, width_scale=width)
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, path)
    assert _one_line(e) == (
        f"--init_from={path} trained a mobilenet_v1 at width_scale 0.25, width_range max 1.0 "
        f"supernet; this run's is {theirs}: use the job's --model_name, --width_scale and "
        "--width_mult_range, or another job."
    )


def test_a_directory_that_is_no_finished_job_is_refused(tmp_path, job_dir):
    net = Supernet("mobilenet_v1", num_classes=5, width_scale=0.25)
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, str(tmp_path))
    assert "is not a PSS job directory (run_config.json is missing)" in _one_line(e)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with open(os.path.join(job_dir[0], jobs.RUN_CONFIG)) as f:
        (unfinished / jobs.RUN_CONFIG).write_text(json.dumps(json.load(f)))
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, str(unfinished))
    assert _one_line(e) == (
        f"--init_from={unfinished} has no supernet.weights.h5 (a finished training run writes it)."
    )


def test_a_damaged_cached_imagenet_file_is_named(tmp_path, no_network):
    os.makedirs(tmp_path / "models")
    cached = tmp_path / "models" / "mobilenet_2_5_224_tf.h5"
    cached.write_bytes(b"half a download")
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25)
    with pytest.raises(ValueError) as e:
        pretrained.initialize_supernet(net, "imagenet", cache_dir=str(tmp_path))
    message = _one_line(e)
    assert message.startswith(
        f"{cached} could not be loaded as keras.applications MobileNet alpha 0.25 ImageNet weights: "
    )
    assert message.endswith("; delete it from Keras's cache to download it again.")
    assert no_network == []


@pytest.mark.heavy
def test_a_run_started_from_a_file_has_its_weights_before_the_first_step(
    mbv1_file, tiny_image_folder, tmp_path, monkeypatch
):
    """The issue's done-when: a tiny run with init_from=FILE (the file has
    1000 classes, the run 10): before the first step every supernet weight
    but the classifier equals the file's; the run records where they came
    from, and a resume does not import them again."""
    from conftest import tiny_train_config

    from pss_keras.jobs import directory as jobs
    from pss_keras.training import driver as training

    path, weights, _ = mbv1_file
    config = tiny_train_config(tmp_path / "job", tiny_image_folder, init_from=path, epochs=1)
    seen = {}

    class Stop(Exception):
        pass

    def before_the_first_step(config_, strategy, trainer, sampler, checkpointer, *args, **kw):
        checkpointer.save(0, 1)  # as if stopped after a step: the next train() resumes
        net = trainer.supernet
        _assert_copied_but_classifier(net, weights)
        kernel = net.get_layer_by_name("classifier").kernel.numpy()
        seen["classifier"] = kernel.shape
        assert np.isfinite(kernel).all() and 0.005 < kernel.std() < 0.02
        raise Stop

    monkeypatch.setattr(training, "fit_epochs", before_the_first_step)
    with pytest.raises(Stop):
        training.train(config)
    assert seen["classifier"] == (256, 10)
    origin = jobs.read_weights_origin(config.job_dir)
    assert origin == (
        f"keras.applications MobileNet alpha 0.25 weights from {path}; "
        "classifier re-initialized (10 classes, file has 1000)"
    )
    # A resume takes the checkpoint's weights: initialize_supernet is not called.
    calls = []
    monkeypatch.setattr(training, "initialize_supernet", lambda *a: calls.append(a) or "x")
    monkeypatch.setattr(training, "fit_epochs", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        training.train(config)
    assert calls == [] and jobs.read_weights_origin(config.job_dir) == origin


def test_a_source_of_other_numerics_is_copied_and_said(job_dir, mbv1_file):
    """Into a supernet of the official PSS-Net's numerics (symmetric
    padding, BN epsilon 1e-5): the weights are copied as they are, and the
    description says the source computed otherwise."""
    path, weights = job_dir
    net = Supernet("mobilenet_v1", num_classes=5, width_scale=0.25, padding="symmetric",
                   bn_epsilon=1e-5)  # fmt: skip
    described = pretrained.initialize_supernet(net, path)
    assert described.endswith(
        "classifier copied (5 classes); the job has same padding and BN epsilon 0.001, this "
        "run symmetric and 1e-05 (weights copied as they are)"
    )
    for layer in net.switchable_layers:
        for got, want in zip(layer.get_weights(), weights[layer.name], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
    net = Supernet("mobilenet_v1", num_classes=10, width_scale=0.25, padding="symmetric")
    described = pretrained.initialize_supernet(net, mbv1_file[0])
    assert described.endswith(
        "; keras.applications has same padding and BN epsilon 0.001, this run symmetric and "
        "0.001 (weights copied as they are)"
    )
