"""PNG plots of PSS results (matplotlib, headless).

* `plot_tiers`: validation top-1 against MFLOPs of the retained tiers of one
  or several runs (the paper's main figure, one line per run).
* `plot_pool_scores`: the best pool score of every target over the epochs
  (a run's ``logs/pss`` TensorBoard scalars).
* `plot_subnet_spread`: validation top-1 against MFLOPs of random subnets,
  one colour per FLOPs band, each band's median marked
  (scripts/subnet_spread.py).
* `plot_paired_sampling`: PSS vs uniform over seed pairs: each candidate
  set's chosen accuracy per band (mean, lowest to highest across pairs)
  and the pairs' matched-FLOPs differences with their 95 % intervals
  (scripts/compare_sampling_paired.py).
* `plot_load_timelines`: served requests over a load timeline, one panel per
  tier policy: each request's latency coloured by its tier, the objective,
  the phases shaded (benchmarks/adaptive_serving.py).
"""

from __future__ import annotations

import os

from pss_keras.utils.fileio import atomic_file


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


def plot_subnet_spread(
    bands: dict[str, list[tuple[float, float]]], path: str, title: str = ""
) -> str:
    """Writes top-1 vs MFLOPs of many subnets, one colour per band (from the
    cheapest band to the costliest), each band's median top-1 a dashed line
    over its MFLOPs range.

    Args:
        bands: ``{band name: [(MFLOPs, top-1 in %), ...]}``, cheapest band first.
        path: the PNG to write (atomically).
        title: the figure's title.
    """
    import statistics

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    cmap = plt.get_cmap("viridis")
    for i, (name, points) in enumerate(bands.items()):
        colour = cmap(i / max(1, len(bands) - 1))
        mflops, top1 = zip(*points)
        ax.scatter(mflops, top1, s=12, color=colour, label=f"{name} (n={len(points)})")
        ax.hlines(statistics.median(top1), min(mflops), max(mflops), colors=[colour], lw=1, ls="--")
    return _finish(plt, fig, ax, path, "MFLOPs", "validation top-1 (%)", title, legend=True)


def plot_paired_sampling(
    curves: dict[str, list[tuple[float, float, float, float]]],
    differences: dict[str, list[tuple[int, float]]],
    intervals: dict[str, tuple[float, float, float] | None],
    path: str,
    title: str = "",
    margin: float = 0.5,
) -> str:
    """Writes two panels. Left: validation top-1 of each set's chosen
    subnets against MFLOPs (log scale), the mean across pairs as a line,
    lowest to highest shaded. Right: each pair's matched-FLOPs difference
    per baseline (a dot per seed, labelled), the mean with its 95 %
    interval, 0 and +-``margin`` (the rule's no-effect band) dashed.

    Args:
        curves: ``{set: [(MFLOPs, mean, lowest, highest), ...]}`` (top-1 in %).
        differences: ``{baseline: [(seed, pss - baseline in points), ...]}``.
        intervals: ``{baseline: (mean, low, high)}``, None for fewer than 2 pairs.
        path: the PNG to write (atomically).
        title: the figure's title.
        margin: the no-effect margin (points).
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 4.4), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
    )
    from matplotlib.ticker import FuncFormatter

    # One colour per set in both panels (a baseline's differences in its own).
    colour = {label: f"C{i}" for i, label in enumerate(dict.fromkeys([*curves, *differences]))}
    for label, points in curves.items():
        x, mean, low, high = zip(*sorted(points))
        left.plot(x, mean, marker="o", ms=4, color=colour[label], label=label)
        left.fill_between(x, low, high, color=colour[label], alpha=0.2, lw=0)
    left.set_xscale("log")
    for axis_format in (left.xaxis.set_major_formatter, left.xaxis.set_minor_formatter):
        axis_format(FuncFormatter(lambda v, _: f"{v:g}"))
    left.tick_params(axis="x", which="minor", labelsize=7)
    left.set_xlabel("MFLOPs of the chosen subnet (mean over pairs)")
    left.set_ylabel("validation top-1 (%)")
    left.legend(fontsize=8)
    for i, (label, points) in enumerate(differences.items()):
        for j, (seed, value) in enumerate(points):
            x = i - 0.15 + 0.3 * j / max(1, len(points) - 1)
            right.scatter([x], [value], s=16, color=colour[label])
            right.annotate(
                str(seed), (x, value), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
        interval = intervals.get(label)
        if interval is not None:
            mean, low, high = interval
            right.errorbar([i + 0.3], [mean], yerr=[[mean - low], [high - mean]], fmt="s",
                           color="black", capsize=4, ms=4)  # fmt: skip
    right.axhline(0.0, color="black", lw=0.8)
    for y in (-margin, margin):
        right.axhline(y, color="grey", lw=0.8, ls="--")
    right.set_xticks(range(len(differences)), [f"pss - {b}" for b in differences], fontsize=8)
    right.set_xlim(-0.6, len(differences) - 0.4)
    right.set_ylabel("matched-FLOPs difference (points)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


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


def plot_load_timelines(
    runs: dict[str, list],
    phases,
    tier_names: list[str],
    objective_ms: float,
    path: str,
    title: str = "",
) -> str:
    """Writes one panel per policy: latency of every request against its
    send time (log scale, coloured by tier from cheapest to largest), the
    objective as a dashed line, phases shaded and named.

    Args:
        runs: ``{policy: [request, ...]}`` (`pss_keras.benchmarking.load_test.Request`).
        phases: the timeline's `pss_keras.benchmarking.load_test.Phase` list.
        tier_names: every tier, cheapest first (the colour order).
        objective_ms: the latency objective.
        path: the PNG to write (atomically).
        title: the figure's title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(9, 1.9 * len(runs) + 0.8), dpi=110, sharex=True, squeeze=False
    )
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(tier_names) - 1)) for i, n in enumerate(tier_names)}
    for ax, (policy, requests) in zip(axes[:, 0], runs.items()):
        start = 0.0
        for i, phase in enumerate(phases):
            if i % 2:
                ax.axvspan(start, start + phase.seconds, color="0.9", lw=0)
            if ax is axes[0, 0]:
                ax.text(start + phase.seconds / 2, 1.02, phase.name, transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
            start += phase.seconds
        for name in tier_names:
            points = [(r.scheduled, r.latency_ms) for r in requests if r.tier == name]
            if points:
                ax.scatter(*zip(*points), s=3, color=colour[name], label=name, lw=0)
        failed = [(r.scheduled, r.latency_ms) for r in requests if r.error is not None]
        if failed:
            ax.scatter(*zip(*failed), s=12, marker="x", color="red", label="failed")
        ax.axhline(objective_ms, color="red", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{policy}\nms", fontsize=8)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    # Every tier in cost order (cheapest first), whichever panel used it.
    handles = [Line2D([], [], ls="", marker="o", color=colour[n]) for n in tier_names]
    labels = list(tier_names)
    if any(r.error is not None for requests in runs.values() for r in requests):
        handles.append(Line2D([], [], ls="", marker="x", color="red"))
        labels.append("failed")
    fig.legend(handles, labels, loc="lower center", ncol=min(9, len(labels)), fontsize=7)
    axes[-1, 0].set_xlabel(f"seconds (dashed: objective {objective_ms:.1f} ms)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


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
