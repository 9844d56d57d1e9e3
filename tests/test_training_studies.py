"""The one-supernet-or-N-models study: tier choice, equal compute, costs, summary."""

import os

import pytest

from pss_keras.jobs.config import TrainConfig
from pss_keras.training import studies as study


def _tiers(*mflops):
    return [{"name": f"t{m:g}", "mflops": m} for m in mflops]


def test_pick_tiers_spreads_over_the_range():
    # Range 9.5..43.6: the 1/3 and 2/3 points are 20.9 and 32.2.
    retained = _tiers(43.6, 9.5, 14.6, 20.4, 22.8, 30.1, 34.7, 41.4)
    assert [t["mflops"] for t in study.pick_tiers(retained)] == [9.5, 20.4, 30.1, 43.6]


def test_pick_tiers_takes_each_tier_once():
    # Both middle goals (4 and 7) are nearest to 5; the second takes the next nearest.
    assert [t["mflops"] for t in study.pick_tiers(_tiers(1, 5, 6, 10))] == [1, 5, 6, 10]


def test_pick_tiers_refuses_too_few():
    with pytest.raises(ValueError, match="Cannot pick 4 tiers from 3 retained"):
        study.pick_tiers(_tiers(1, 2, 3))


def test_supernet_image_mflops_counts_three_subnets():
    assert study.supernet_image_mflops(40.0, 5.0, [10, 20, 30]) == pytest.approx(65.0)
    with pytest.raises(ValueError, match="no FLOPs targets"):
        study.supernet_image_mflops(40.0, 5.0, [])


def test_training_flops_and_equal_compute():
    assert study.training_flops(10.0, 1000, 2) == pytest.approx(3 * 10e6 * 1000 * 2)
    # 24 epochs x 80 M a step over 8 tiers = 240 M-epochs: 6 epochs of a 40 M tier.
    assert study.equal_compute_epochs(24, 80.0, 8, 40.0) == 6
    assert study.equal_compute_epochs(24, 80.0, 8, 400.0) == 1  # never below one epoch
    spent = study.training_flops(40.0, 1000, 6)
    assert spent == pytest.approx(study.training_flops(80.0, 1000, 24) / 8)
    with pytest.raises(ValueError, match="at least one tier"):
        study.equal_compute_epochs(24, 80.0, 0, 40.0)


def test_break_even_tiers():
    assert study.break_even_tiers(300.0, [50.0, 100.0, 150.0]) == pytest.approx(3.0)


def test_flops_targets_of_a_run():
    config = TrainConfig(job_dir="", flops_targets=(10.0, 45.0, 5.0))
    assert study.flops_targets(config) == (10, 15, 20, 25, 30, 35, 40, 45)


def _row(top1, mflops=10.0, flops=0.0):
    return {"top1": top1, "mflops": mflops, "own_training_flops": flops}


def test_summarize_pairs_each_seed_with_its_inherited_tier():
    seeds = {
        "0": {
            "supernet": {"training_flops": 100.0},
            "arms": {
                "inherited": {"a": _row(0.70)},
                "standalone_equal_epochs": {"a": _row(0.74, flops=20.0)},
            },
        },
        "1": {
            "supernet": {"training_flops": 140.0},
            "arms": {
                "inherited": {"a": _row(0.60)},
                "standalone_equal_epochs": {"a": _row(0.70, flops=40.0)},
            },
        },
    }
    summary = study.summarize(seeds)
    alone = summary["standalone_equal_epochs"]["a"]
    assert alone["seeds"] == 2
    assert alone["top1"] == pytest.approx(0.72)
    assert alone["top1_minus_inherited"] == pytest.approx(0.07)  # (0.04 + 0.10) / 2
    assert summary["inherited"]["a"]["top1_minus_inherited"] == pytest.approx(0.0)
    assert summary["break_even_tiers"] == pytest.approx(4.0)  # 120 / 30
    table = study.format_summary(summary)
    assert "72.0 (+7.0) n=2" in table
    assert "from 4.0 tiers on" in table


def test_summarize_without_inherited_leaves_the_difference_empty():
    seeds = {"0": {"arms": {"finetuned": {"a": _row(0.5)}}}}
    cell = study.summarize(seeds)["finetuned"]["a"]
    assert cell["top1"] == 0.5 and cell["top1_minus_inherited"] is None
    assert "break_even_tiers" not in study.summarize(seeds)


def test_plot_writes_a_png(tmp_path):
    record = {
        "name": "s3",
        "seeds": {"0": {}},
        "summary": {"inherited": {"a": {"mflops": 10.0, "top1": 0.5}}},
    }
    path = study.plot(record, str(tmp_path / "s3.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_imagenette_folder_refuses_a_missing_tar(tmp_path):
    with pytest.raises(ValueError, match="nothing.tar is missing; pass --dataset=FOLDER"):
        study.imagenette_folder(str(tmp_path / "nothing.tar"), str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half written


def test_imagenette_folder_unpacks_once(tmp_path):
    import tarfile

    source = tmp_path / "src" / "imagenette2" / "val"
    source.mkdir(parents=True)
    (source / "x.txt").write_text("x")
    tar_path = tmp_path / "i.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "src" / "imagenette2", arcname="imagenette2")
    cache = tmp_path / "cache"
    cache.mkdir()
    folder = study.imagenette_folder(str(tar_path), str(cache))
    assert (cache / "imagenette2" / "val" / "x.txt").read_text() == "x"
    assert sorted(p.name for p in cache.iterdir()) == ["imagenette2"]
    tar_path.unlink()  # the folder is reused, the tar not read again
    assert study.imagenette_folder(str(tar_path), str(cache)) == folder


def test_train_timed_counts_interrupted_attempts_and_reuses_a_finished_job(tmp_path, monkeypatch):
    import json
    import time

    from pss_keras.jobs import directory as jobs
    from pss_keras.training import driver

    config = TrainConfig(job_dir=str(tmp_path / "job"))
    attempts = []

    def interrupted(c):
        os.makedirs(c.job_dir, exist_ok=True)
        time.sleep(0.05)
        attempts.append("stopped")
        raise KeyboardInterrupt

    def finishing(c):
        time.sleep(0.05)
        attempts.append("done")
        with open(os.path.join(c.job_dir, jobs.RETAINED), "w") as f:
            json.dump([{"name": "t", "mflops": 1.0}], f)

    monkeypatch.setattr(driver, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.train_timed(config)
    with open(tmp_path / "job" / "study_seconds.json") as f:
        first = json.load(f)["seconds"]
    assert first >= 0.05
    monkeypatch.setattr(driver, "train", finishing)
    tiers, spent = study.train_timed(config)
    assert [t["name"] for t in tiers] == ["t"] and spent >= first + 0.05
    tiers, again = study.train_timed(config)  # finished: not trained again
    assert attempts == ["stopped", "done"] and again == spent
