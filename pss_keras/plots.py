"""PNG plots of PSS results (matplotlib, headless).

* `plot_tiers`: validation top-1 against MFLOPs of the retained tiers of one
  or several runs (the paper's main figure, one line per run).
* `plot_pool_scores`: the best pool score of every target over the epochs
  (a run's ``logs/pss`` TensorBoard scalars).
"""

from __future__ import annotations

import os

from pss_keras.fileio import atomic_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_tiers(runs: dict[str, list[dict]], path: str, title: str = "") -> str:
    """Writes top-1 vs MFLOPs, one line per run.

    Args:
        runs: ``{label: [tier, ...]}`` with each tier's ``mflops`` and ``top1``
            (``retained_subnets.json`` records).
        path: the PNG to write (atomically).
        title: the figure's title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for label, tiers in runs.items():
        points = sorted((t["mflops"], 100 * t["top1"]) for t in tiers)
        ax.plot(*zip(*points), marker="o", label=label)
    return _finish(plt, fig, ax, path, "MFLOPs", "validation top-1 (%)", title, legend=True)


def read_pool_scores(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``{target name: [(epoch, best pool score), ...]}`` from a run's
    ``logs/pss`` event files."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    prefix = "pool_best_score/"
    scores: dict[str, list[tuple[int, float]]] = {}
    for root, _, files in os.walk(log_dir):
        for name in files:
            if "tfevents" not in name:
                continue
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag.startswith(prefix):
                        scores.setdefault(value.tag[len(prefix) :], []).append(
                            (int(event.step), float(tf.make_ndarray(value.tensor)))
                        )
    return {k: sorted(dict(v).items()) for k, v in sorted(scores.items())}


def plot_pool_scores(scores: dict[str, list[tuple[int, float]]], path: str, title: str = "") -> str:
    """Writes the best pool score (negative CE on its training batch, EMA)
    of every target over the epochs, coloured from the smallest target to
    the largest."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    cmap = plt.get_cmap("viridis")
    names = list(scores)
    for i, name in enumerate(names):
        epochs, values = zip(*scores[name])
        ax.plot(epochs, values, color=cmap(i / max(1, len(names) - 1)), lw=1, label=name)
    return _finish(
        plt, fig, ax, path, "epoch", "best pool score (-CE)", title, legend=len(names) <= 12
    )


def _finish(plt, fig, ax, path, xlabel, ylabel, title, legend) -> str:
    """Labels, grid, legend and title; writes the PNG atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
