"""MOT metrics on small hand-computed cases; HOTA cross-checked against TrackEval."""

import contextlib
import io
import math

import numpy as np
import pytest

from ssm_perception.eval.mot import HOTA_ALPHAS, GroundTruthObject, MotEvaluator, hota


def gt(i, x, y, cls=1):
    return GroundTruthObject(i, cls, x, y)


def hyp(i, x, y, cls=1):
    return GroundTruthObject(i, cls, x, y)  # same duck type: id, cls, x, y


def _two_objects_case():
    """A (id 1) for 6 frames, B (id 2) for 5. A is missed once (frame 2: fragmentation), B changes
    hypothesis at frame 3 (one switch), two false positives (frame 2: far clutter, frame 5: hypothesis 4
    stays after B has gone). Matched distances: 0.5 m except hypothesis 4 (0 m)."""
    a, b = (0.0, 0.0), (10.0, 0.0)
    frames = [
        ([gt(1, *a), gt(2, *b)], [hyp(1, 0.5, 0.0), hyp(2, 10.0, 0.5)]),
        ([gt(1, *a), gt(2, *b)], [hyp(1, 0.5, 0.0), hyp(2, 10.0, 0.5)]),
        ([gt(1, *a), gt(2, *b)], [hyp(2, 10.0, 0.5), hyp(3, 50.0, 50.0), hyp(9, 0.0, 0.0, cls=4)]),
        ([gt(1, *a), gt(2, *b)], [hyp(1, 0.5, 0.0), hyp(4, 10.0, 0.0)]),
        ([gt(1, *a), gt(2, *b)], [hyp(1, 0.5, 0.0), hyp(4, 10.0, 0.0)]),
        ([gt(1, *a)], [hyp(1, 0.5, 0.0), hyp(4, 10.0, 0.0)]),
    ]
    ev = MotEvaluator()
    for g, h in frames:
        ev.update(g, h)
    return ev.compute()


def test_clear_and_identity_metrics_hand_computed():
    m = _two_objects_case()
    car = m["car"]
    assert car["num_gt"] == 11 and car["misses"] == 1 and car["false_positives"] == 2
    assert car["id_switches"] == 1
    assert car["fragmentations"] == 1
    assert car["mota"] == pytest.approx(1 - (1 + 2 + 1) / 11)
    assert car["motp"] == pytest.approx((8 * 0.5 + 2 * 0.0) / 10)
    # IDF1: best one-to-one trajectory matching A<->1 (5 frames), B<->2 (3 frames) -> IDTP = 8;
    # IDF1 = 2 IDTP / (GT dets + hypothesis dets) = 16 / (11 + 12)
    assert car["idf1"] == pytest.approx(16 / 23)
    assert car["mostly_tracked"] == 2 and car["mostly_lost"] == 0
    # the pedestrian hypothesis on top of the missed car did not fill the miss: it is a pedestrian FP
    assert m["pedestrian"]["false_positives"] == 1 and m["pedestrian"]["num_gt"] == 0
    assert "truck" not in m  # nothing of that class on either side


def test_match_threshold_is_two_metres():
    ev = MotEvaluator()
    ev.update([gt(1, 0.0, 0.0), gt(2, 20.0, 0.0)], [hyp(1, 1.99, 0.0), hyp(2, 22.01, 0.0)])
    car = ev.compute()["car"]
    assert (car["num_matches"], car["misses"], car["false_positives"]) == (1, 1, 1)


def test_ignored_ground_truth_neither_rewards_nor_punishes():
    ev = MotEvaluator()
    # frame 0: both visible; frame 1: object 2 hidden (ignored) and the tracker coasts on it
    ev.update([gt(1, 0.0, 0.0), gt(2, 10.0, 0.0)], [hyp(1, 0.2, 0.0), hyp(2, 10.2, 0.0)])
    ev.update([gt(1, 0.0, 0.0)], [hyp(1, 0.2, 0.0), hyp(2, 10.5, 0.0), hyp(3, 30.0, 0.0)],
              ignored_gt=[gt(2, 10.0, 0.0)])
    car = ev.compute()["car"]
    assert car["num_gt"] == 3 and car["num_matches"] == 3
    assert car["false_positives"] == 1  # only the far clutter; the coasting track on the hidden object is dropped
    assert car["misses"] == 0


def test_sequences_do_not_alias_ids():
    def run(separate: bool):
        ev = MotEvaluator()
        for k in range(2):  # two bags: object id 7 in both, each tracker starting at id 1 but assigned differently
            if separate:
                ev.start_sequence()
            for _ in range(3):
                ev.update([gt(7, 0.0, 0.0), gt(8, 20.0, 0.0)], [hyp(1 + k, 0.0, 0.0), hyp(2 - k, 20.0, 0.0)])
        return ev
    assert run(separate=False).compute()["car"]["id_switches"] == 2  # what aliasing would wrongly report
    ev = run(separate=True)
    m = ev.compute()["car"]
    assert m["id_switches"] == 0 and m["idf1"] == pytest.approx(1.0) and m["hota"] == pytest.approx(1.0)
    assert ev.id_switches() == []
    assert run(separate=False).id_switches()[0][2:] in {(7, 2), (8, 1)}  # reported with the ids as given


def test_bad_input_is_explained():
    ev = MotEvaluator()
    with pytest.raises(ValueError, match="non-finite"):
        ev.update([gt(1, math.nan, 0.0)], [])
    with pytest.raises(ValueError, match="duplicate"):
        ev.update([gt(1, 0.0, 0.0), gt(1, 5.0, 0.0)], [])
    with pytest.raises(ValueError, match="max_distance"):
        MotEvaluator(max_distance_m=0.0)


def _f(g, h, sim):
    return np.array(g), np.array(h), np.array(sim, dtype=float).reshape(len(g), len(h))


def test_hota_perfect():
    r = hota([_f([1], [7], [[1.0]])] * 4)
    assert r["hota"] == pytest.approx(1.0) and r["deta"] == pytest.approx(1.0) and r["loca"] == pytest.approx(1.0)


def test_hota_localisation_sweep():
    # similarity 0.5 (1 m off with a 2 m scale): a true positive for alpha <= 0.5, i.e. 10 of 19 thresholds
    r = hota([_f([1], [7], [[0.5]])] * 4)
    assert len(HOTA_ALPHAS) == 19
    assert r["hota"] == pytest.approx(10 / 19) and r["assa"] == pytest.approx(10 / 19)
    assert r["loca"] == pytest.approx(0.5)


def test_hota_id_switch_halves_association():
    # one object, hypothesis 1 for two frames then hypothesis 2: every TP has association IoU 2 / (4 + 2 - 2)
    r = hota([_f([1], [1], [[1.0]])] * 2 + [_f([1], [2], [[1.0]])] * 2)
    assert r["deta"] == pytest.approx(1.0) and r["assa"] == pytest.approx(0.5)
    assert r["hota"] == pytest.approx(math.sqrt(0.5))


def test_hota_fp_and_fn():
    # frame 0: A matched + an unmatched hypothesis (FP); frame 1: A matched + unmatched B (FN)
    r = hota([_f([1], [1, 2], [[1.0, 0.0]]), _f([1, 2], [1], [[1.0], [0.0]])])
    assert r["deta"] == pytest.approx(2 / 4) and r["assa"] == pytest.approx(1.0)
    assert r["hota"] == pytest.approx(math.sqrt(0.5))
    assert hota([_f([1], [], [])])["hota"] == 0.0


def _trackeval_hota(frames):
    with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints about optional dependencies
        trackeval = pytest.importorskip("trackeval")
    gids = sorted({int(i) for f in frames for i in f[0]})
    hids = sorted({int(i) for f in frames for i in f[1]})
    data = {
        "num_gt_dets": sum(len(f[0]) for f in frames), "num_tracker_dets": sum(len(f[1]) for f in frames),
        "num_gt_ids": len(gids), "num_tracker_ids": len(hids), "num_timesteps": len(frames),
        "gt_ids": [np.array([gids.index(int(i)) for i in f[0]], dtype=int) for f in frames],
        "tracker_ids": [np.array([hids.index(int(i)) for i in f[1]], dtype=int) for f in frames],
        "similarity_scores": [f[2] for f in frames],
    }
    res = trackeval.metrics.HOTA().eval_sequence(data)
    return {k: float(np.mean(res[k])) for k in ("HOTA", "DetA", "AssA", "LocA")}, res


@pytest.mark.parametrize("seed", range(8))
def test_hota_matches_trackeval(seed):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(20):
        g = rng.choice(6, size=rng.integers(0, 5), replace=False)
        h = rng.choice(np.arange(10, 18), size=rng.integers(0, 5), replace=False)
        sim = rng.uniform(0, 1, (len(g), len(h))) * (rng.uniform(0, 1, (len(g), len(h))) > 0.4)
        frames.append((g, h, sim))
    ours = hota(frames)
    ref, res = _trackeval_hota(frames)
    assert ours["hota"] == pytest.approx(ref["HOTA"], abs=1e-9)
    assert ours["deta"] == pytest.approx(ref["DetA"], abs=1e-9)
    assert ours["assa"] == pytest.approx(ref["AssA"], abs=1e-9)
    with_tp = res["HOTA_TP"] > 0  # TrackEval reports LocA = 1 where there is no TP; we leave those out
    assert ours["loca"] == pytest.approx(float(np.mean(res["LocA"][with_tp])), abs=1e-9)


def test_range_breakdown_counts_recall_and_false_positives_per_bucket():
    ev = MotEvaluator()
    for _ in range(4):
        # ego at (100, 0): a car 5 m away (tracked), one 25 m away (missed), clutter 45 m away
        ev.update([gt(1, 105.0, 0.0), gt(2, 125.0, 0.0)], [hyp(7, 105.5, 0.0), hyp(8, 145.0, 0.0)],
                  ego_xy=(100.0, 0.0))
    rows = {r["range_m"]: r for r in ev.range_breakdown()["car"]}
    assert (rows["0-10"]["num_gt"], rows["0-10"]["recall"], rows["0-10"]["false_positives"]) == (4, 1.0, 0)
    assert (rows["20-30"]["num_gt"], rows["20-30"]["recall"]) == (4, 0.0)
    assert (rows["40-50"]["num_hyp"], rows["40-50"]["false_positives"]) == (4, 4)
    assert math.isnan(rows["10-20"]["recall"]) and rows["10-20"]["num_gt"] == 0
    assert MotEvaluator().range_breakdown() == {}  # nothing recorded without ego_xy


def test_id_switch_causes_are_told_apart():
    """scripts/diagnose_id_switches.classify: a hand-over (no gap, the old track gone that frame)
    and a switch after a detection gap with the old track still reported elsewhere."""
    import importlib.util
    from pathlib import Path

    import motmetrics as mm

    path = Path(__file__).resolve().parents[1] / "scripts" / "diagnose_id_switches.py"
    spec = importlib.util.spec_from_file_location("diagnose_id_switches", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = mm.MOTAccumulator(auto_id=False)
    acc.update([1], [10], [[0.1]], frameid=0)
    acc.update([1], [10], [[0.1]], frameid=1)
    acc.update([1], [11], [[0.1]], frameid=2)  # track 10 gone, 11 takes over: hand-over
    acc.update([1], [11], [[float("nan")]], frameid=3)  # missed (11 too far)
    acc.update([1, 2], [12, 11], [[0.1, float("nan")], [float("nan"), 0.1]], frameid=4)  # back as 12; 11 on object 2
    out = mod.classify(acc.mot_events)
    assert out["switches"] == 2
    assert out["causes"] == {"handover_old_gone": 1, "after_gap_old_reported": 1}
    assert out["gap_frames_median"] == 1.0
