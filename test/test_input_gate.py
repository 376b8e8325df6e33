"""Issue 19 (item 4): who may publish a stream or a TF edge, and when a TF jump is believed."""

import numpy as np

from ssm_perception.input_gate import SourceLock, TfEdgeGate

S = 1_000_000_000
Q0 = np.array([0.0, 0.0, 0.0, 1.0])


def test_source_lock_refuses_a_second_publisher_until_the_first_is_silent():
    lock = SourceLock(handover_s=1.0)
    assert lock.check(b"a", 0.0) and lock.check(b"a", 0.5)
    assert not lock.check(b"b", 0.6)  # the owner is alive
    assert not lock.check(b"b", 1.4)
    assert lock.check(b"b", 1.6) and lock.handovers == 1  # owner silent > 1 s: a restarted driver
    assert not lock.check(b"a", 1.7)
    assert lock.check(None, 1.7)  # identity unknown: not refused


def _gate(**kw):
    return TfEdgeGate(max_speed_mps=50.0, jump_m=2.0, jump_yaw_rad=0.5, confirm=3, handover_s=1.0, **kw)


def _send(gate, k, x, pub=b"loc", yaw=0.0, now=None):
    q = np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])
    return gate.check("odom", "base_link", S + k * S // 50, (x, 0.0, 0.0), q, pub, now if now is not None else k / 50)


def test_plausible_motion_is_accepted_and_a_glitch_is_not():
    g = _gate()
    for k in range(10):
        r = _send(g, k, 0.1 * k)
        assert r.flag is None and len(r.accept) == 1
    r = _send(g, 10, 50.0)  # one sample 50 m away: held back
    assert r.flag == "tf_jump" and r.accept == []
    r = _send(g, 11, 1.1)  # the real stream continues: the glitch is forgotten
    assert r.flag is None and len(r.accept) == 1
    assert _send(g, 12, 51.0).flag == "tf_jump" and _send(g, 13, 1.3).accept  # never 3 in a row
    r = _send(g, 14, 0.1, yaw=1.0)  # a yaw step is a jump too
    assert r.flag == "tf_jump"


def test_a_jump_that_persists_is_confirmed_with_all_its_samples():
    g = _gate()
    for k in range(5):
        _send(g, k, 0.1 * k)
    assert _send(g, 5, 20.5).flag == "tf_jump"
    assert _send(g, 6, 20.6).flag == "tf_jump"
    r = _send(g, 7, 20.7)
    assert r.flag == "tf_jump_confirmed" and [s[0] for s in r.accept] == [S + k * S // 50 for k in (5, 6, 7)]
    r = _send(g, 8, 20.8)
    assert r.flag is None and r.accept  # the new track is the reference now


def test_a_second_tf_publisher_is_refused_while_the_first_is_alive():
    g = _gate()
    for k in range(5):
        assert _send(g, k, 0.1 * k).accept
    r = _send(g, 5, 50.0, pub=b"forger")  # interleaved with the real stream, even a plausible value
    assert r.flag == "tf_second_publisher" and not r.accept
    assert _send(g, 5, 0.5, pub=b"forger").flag == "tf_second_publisher"
    assert _send(g, 6, 0.6).accept
    # the localization restarted (new identity) after 2 s of silence: it takes over
    r = _send(g, 200, 20.0, pub=b"loc2", now=6 / 50 + 2.0)
    assert r.flag is None and r.accept


def test_static_edges_change_only_by_their_owner():
    g = _gate()
    t, q = (1.0, 0.0, 1.8), Q0
    assert g.check("base_link", "lidar", 0, t, q, b"robot_state", 0.0, static=True).accept
    same = g.check("base_link", "lidar", 0, t, q, b"restarted", 1.0, static=True, current=(np.array(t), q))
    assert same.accept and same.flag is None  # a restarted static publisher re-sends the same mount
    moved = g.check("base_link", "lidar", 0, (5.0, 0, 0), q, b"forger", 2.0, static=True, current=(np.array(t), q))
    assert moved.flag == "tf_second_publisher" and not moved.accept
    recal = g.check("base_link", "lidar", 0, (1.1, 0, 1.8), q, b"restarted", 3.0, static=True, current=(np.array(t), q))
    assert recal.accept  # its owner may recalibrate
