"""Per-tier folded graphs on shared weights (`tier_graph`) and the shared
export modes built on them, on tiny random jobs (`synthetic_job`)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from pss_keras.data.preprocessing import preprocess
from pss_keras.export import saved_model as export
from pss_keras.export import tier_graph
from pss_keras.jobs import directory as jobs
from pss_keras.supernet import extraction
from pss_keras.supernet.model import resize_to
from pss_keras.testing import synthetic_job


def _job(path, seed, model_name="mobilenet_v1", tiers=3):
    width, resolutions = (0.25, (16, 32)) if model_name == "mobilenet_v1" else (0.35, (32, 48))
    synthetic_job.write(str(path), model_name, width, resolutions, tiers=tiers, seed=seed)
    return jobs.Job(str(path))


def _pixels(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3)).astype(np.uint8)


def _standalone_logits(job, entry, pixels):
    """The reference: the tier's extracted subnet with BN folded (copies)."""
    config, stats = job.tier(entry)
    model = extraction.extract_subnet(job.supernet, config, stats, fold_bn=True)
    x = resize_to(preprocess(tf.constant(pixels), job.image_size), config.resolution)
    return model(x, training=False).numpy()


def _assert_close(actual, expected):
    # Same folded kernels, same ops: equal to float32 rounding, stated as
    # 1e-5 of the logits' scale.
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("model_name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("materialize", [True, False])
def test_tier_graph_equals_the_standalone_subnet(tmp_path, model_name, materialize):
    job = _job(tmp_path / "job", seed=0, model_name=model_name)
    pixels = _pixels(job.image_size)
    for entry in job.retained:
        config, stats = job.tier(entry)
        graph = tier_graph.TierGraph(job.supernet, config, stats, materialize, entry.name)
        assert bool(graph.kernels) == materialize
        traced = tf.function(lambda t, graph=graph: graph(preprocess(t, job.image_size)))
        _assert_close(traced(tf.constant(pixels)).numpy(), _standalone_logits(job, entry, pixels))


def test_materialized_kernels_are_computed_from_the_shared_weights(tmp_path):
    """Eagerly the kernel is the folded slice; later weight changes do not
    reach it until it is rebuilt (as at the next load)."""
    job = _job(tmp_path / "job", seed=0, tiers=2)
    entry = job.retained[0]
    config, stats = job.tier(entry)
    graph = tier_graph.TierGraph(job.supernet, config, stats, True, entry.name)
    layer = "block_13_pointwise"
    source = job.supernet.get_layer_by_name(layer)
    kernel = graph.kernels[layer].read().numpy()
    _, _, c_in, c_out = kernel.shape
    full_in, full_out = source.kernel.shape[2:]
    assert c_in < full_in and c_out < full_out  # a real slice of both
    bn = job.supernet.get_layer_by_name(f"{layer}_bn")
    mean, variance = stats[f"{layer}_bn"]
    scale = bn.gamma.numpy()[:c_out] / np.sqrt(variance + job.supernet.bn_epsilon)
    expected = source.kernel.numpy()[:, :, :c_in, :c_out] * scale
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    source.kernel.assign(source.kernel * 2.0)
    np.testing.assert_allclose(graph.kernels[layer].read().numpy(), expected, rtol=1e-6)


def test_shared_exports_store_the_weights_once(tmp_path):
    """The materialized kernels are not in the checkpoint: both shared modes
    save exactly the supernet variables their graphs read."""
    job = _job(tmp_path / "job", seed=0, tiers=3)
    expected = (
        sum(
            int(np.prod(job.supernet.get_layer_by_name(spec.name).kernel.shape))
            for spec in _weight_layers(job)
        )
        + job.supernet.num_classes
    )  # + the classifier's bias
    for mode in ("shared", "shared_lowmem"):
        path = export.export(job.job_dir, str(tmp_path / mode), mode, latency_repeats=1)["path"]
        saved = tf.train.list_variables(os.path.join(path, "variables", "variables"))
        count = sum(int(np.prod(shape)) for name, shape in saved if "OBJECT_GRAPH" not in name)
        assert count == expected, (mode, count, expected)


def _weight_layers(job):
    from pss_keras.supernet import blocks

    return [
        spec
        for block in blocks.plan(job.supernet.model_name)
        for spec in block.layers
        if spec.kind != "pool"
    ]


def test_two_shared_exports_in_one_process_keep_their_own_kernels(tmp_path, monkeypatch):
    """Two models (or two versions) loaded into one process, as TF Serving
    and tf.saved_model.load do, each answer with their own weights, even when
    their materialized kernels carry the same resource names (the per-export
    uuid in the names is fixed here): the loaders keep them apart."""
    import uuid

    from pss_keras.testing.served_model import ServedModel

    fixed = uuid.UUID(int=0)
    monkeypatch.setattr(tier_graph.uuid, "uuid4", lambda: fixed)

    first, second = _job(tmp_path / "a", seed=0), _job(tmp_path / "b", seed=1)
    paths = [
        export.export(job.job_dir, str(tmp_path / f"export_{i}"), "shared", latency_repeats=1)[
            "path"
        ]
        for i, job in enumerate((first, second))
    ]
    served = [ServedModel(p) for p in paths]
    loaded = [tf.saved_model.load(p) for p in paths]
    pixels = _pixels(first.image_size, seed=3)
    try:
        for job, server, model in zip((first, second), served, loaded):
            for entry in job.retained:
                expected = _standalone_logits(job, entry, pixels)
                _assert_close(server.predict(entry.name, {"images": pixels})["logits"], expected)
                out = model.signatures[entry.name](images=tf.constant(pixels))["logits"]
                _assert_close(out.numpy(), expected)
    finally:
        for server in served:
            server.close()


def test_the_tensorflow_internals_of_folded_kernels_exist():
    """FoldedKernel (a tier's BN-folded kernel, a resource the SavedModel
    initializes at load) uses two TensorFlow internals with no public
    equivalent: a TensorFlow that moves them fails here, naming them."""
    from tensorflow.python.eager import context
    from tensorflow.python.ops import gen_resource_variable_ops

    missing = [
        name
        for module, name in [
            (context, "anonymous_name"),
            (gen_resource_variable_ops, "var_handle_op"),
            (gen_resource_variable_ops, "assign_variable_op"),
            (gen_resource_variable_ops, "read_variable_op"),
        ]
        if not callable(getattr(module, name, None))
    ]
    assert not missing, f"tensorflow {tf.__version__} lacks {missing}: update export/tier_graph.py"


@pytest.mark.parametrize("materialize", [True, False])
def test_a_symmetric_padded_job_gives_its_supernets_logits(tmp_path, materialize):
    """A job recording the official PSS-Net's numerics (symmetric padding,
    BN epsilon 1e-5): its supernet, tier graphs and standalone subnets all
    follow them."""
    path = tmp_path / "job"
    synthetic_job.write(str(path), "mobilenet_v1", 0.25, (16, 32), tiers=2, seed=0,
                        padding="symmetric", bn_epsilon=1e-5)  # fmt: skip
    job = jobs.Job(str(path))
    assert (job.config.padding, job.config.bn_epsilon) == ("symmetric", 1e-5)
    assert (job.supernet.padding, job.supernet.bn_epsilon) == ("symmetric", 1e-5)
    pixels = _pixels(job.image_size)
    for entry in job.retained:
        config, stats = job.tier(entry)
        graph = tier_graph.TierGraph(job.supernet, config, stats, materialize, entry.name)
        assert graph.padding == "symmetric"
        x = preprocess(tf.constant(pixels), job.image_size)
        expected = job.supernet(x, subnet=config, bn_stats=stats).numpy()
        _assert_close(tf.function(graph)(x).numpy(), expected)
        _assert_close(_standalone_logits(job, entry, pixels), expected)
