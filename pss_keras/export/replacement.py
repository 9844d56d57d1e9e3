"""A tier fine-tuned alone in place of its inherited one, in a job's export.

After ``scripts/train.py --init_from=J --subnet=TIER --job_dir=J_ft``
(one subnet trained alone from the job's weights), ``scripts/export.py
--job_dir=J --replace_tier=TIER=J_ft`` writes a new version of J's export
whose signature ``TIER`` (and ``TIER_bytes``) runs J_ft's weights: its
subnet extracted from J_ft's supernet as a standalone Keras model with BN
folded (what ``--export_mode=standalone`` builds for every tier), with its
own variables in the SavedModel. The other tiers are J's as before (in the
shared modes, built from J's supernet, stored once). Its tier-table row
keeps J's name, metric type and target and takes J_ft's accuracy.

Any job whose tiers include the same subnet can stand in (one fine-tuned
from J, or the same subnet trained from scratch), with the same classes.
"""

from __future__ import annotations

import dataclasses

from pss_keras.jobs.directory import Job


@dataclasses.dataclass(frozen=True)
class Replacement:
    """One replaced tier.

    Attributes:
        name: the tier of the exported job.
        job: the job whose weights it runs.
        tier: that job's tier of the same subnet (its statistics, accuracy).
        inherited_top1: the replaced (inherited) tier's validation top-1.
    """

    name: str
    job: Job
    tier: object
    inherited_top1: float


def parse_replacements(values) -> dict[str, str]:
    """``["TIER=JOB", ...]`` (``--replace_tier``) as ``{tier: job_dir}``.

    Raises:
        ValueError: one line, for a value without ``=`` or a tier named twice.
    """
    out = {}
    for value in values or ():
        name, sep, job_dir = str(value).partition("=")
        if not sep or not name or not job_dir:
            raise ValueError(
                f"--replace_tier={value}: give TIER=JOB, e.g. flops_12m=jobs/flops_12m_ft (the "
                "tier of --job_dir and the job that fine-tuned it)."
            )
        if name in out:
            raise ValueError(f"--replace_tier names tier {name} twice.")
        out[name] = job_dir
    return out


def replacements(job: Job, entries, replace: dict[str, str]) -> list[Replacement]:
    """The replaced tiers among ``entries`` (the exported tiers of ``job``).

    Raises:
        ValueError: one line: a tier not exported, a job that cannot be
            read, has other classes or holds no tier of that subnet.
    """
    exported = {t.name: t for t in entries}
    out = []
    for name, job_dir in replace.items():
        if name not in exported:
            raise ValueError(
                f"--replace_tier={name}={job_dir}: {job.job_dir} exports no tier {name} "
                f"(its tiers: {', '.join(exported)})."
            )
        other = Job(job_dir)
        if other.class_names != job.class_names:
            raise ValueError(
                f"--replace_tier={name}={job_dir}: that job has other classes than "
                f"{job.job_dir} ({len(other.class_names)} vs {len(job.class_names)}, or another "
                "order)."
            )
        config = exported[name].config
        tier = next((t for t in other.retained if t.config == config), None)
        if tier is None:
            raise ValueError(
                f"--replace_tier={name}={job_dir}: that job has no tier of {name}'s subnet "
                f"{config.name} (its tiers: {', '.join(t.name for t in other.retained)}); "
                f"fine-tune it with: scripts/train.py --init_from={job.job_dir} --subnet={name}."
            )
        out.append(Replacement(name, other, tier, float(exported[name].top1)))
    return out


def replaced_entries(entries, replaced: list[Replacement]) -> list:
    """``entries`` with each replaced tier's accuracy taken from its job."""
    by_name = {r.name: r.tier for r in replaced}
    return [
        dataclasses.replace(
            t,
            top1=by_name[t.name].top1,
            top5=by_name[t.name].top5,
            minival_top1=by_name[t.name].minival_top1,
        )
        if t.name in by_name
        else t
        for t in entries
    ]
