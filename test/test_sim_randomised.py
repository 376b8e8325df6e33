"""Simulator randomisation toward real sensors: datasheet LiDAR layouts, intensity models,
self-returns, beam failures, weather with an onset, extra scenery and classes, determinism."""

import math

import numpy as np
import pytest

from ssm_perception.geometry import transform_points
from ssm_perception.sim import world as W
from ssm_perception.sim.config import (
    AdversityConfig,
    ScenarioConfig,
    SceneryConfig,
    TrafficConfig,
)
from ssm_perception.sim.lidar_models import LIDAR_MODELS, lidar_config
from ssm_perception.sim.presets import RANDOMISED, preset
from ssm_perception.sim.scenario import Scenario
from ssm_perception.sim.sensors import MAT_SELF, MAT_WEATHER


def _cfg(lidar=None, duration=0.1, **kw) -> ScenarioConfig:
    base = {"name": "t", "layout": "urban", "seed": 3, "duration_s": duration,
            "radar": {"enabled": False}, "camera": {"enabled": False}}
    if lidar is not None:
        base["lidar"] = lidar.model_dump()
    base.update(kw)
    return ScenarioConfig.model_validate(base)


def _first(cfg: ScenarioConfig):
    return next(Scenario(cfg).frames(with_others=False))


def _elev(cloud) -> np.ndarray:
    return np.degrees(np.arctan2(cloud["z"], np.hypot(cloud["x"], cloud["y"])))


EXPECTED = {  # name: (beams, top, bottom) from the datasheets
    "vlp16": (16, 15.0, -15.0), "hdl32e": (32, 10.67, -30.67), "hdl64e": (64, 2.0, -24.87),
    "os1_64": (64, 22.5, -22.5), "os1_128": (128, 22.5, -22.5), "pandar64": (64, 15.0, -25.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lidar_model_rings_and_elevations(name):
    beams, top, bottom = EXPECTED[name]
    cfg = lidar_config(name, missing_prob=0.0)
    el = np.asarray(cfg.elevations())
    assert len(el) == beams == len(np.unique(el))
    assert el.max() == pytest.approx(top, abs=0.01) and el.min() == pytest.approx(bottom, abs=0.01)
    steps = np.diff(el)
    uniform = np.ptp(steps) < 1e-3
    assert uniform == (name not in ("hdl64e", "pandar64"))
    if name == "vlp16":
        np.testing.assert_allclose(steps, 2.0, atol=1e-3)
    if name == "hdl64e":  # denser upper block
        assert steps[-1] == pytest.approx(1 / 3, abs=0.01) and steps[0] == pytest.approx(0.516, abs=0.01)
    if name == "pandar64":
        assert steps.min() == pytest.approx(0.167, abs=0.002) and steps.max() >= 5.0
    fr = _first(_cfg(cfg))
    ring = fr.lidar["ring"].astype(int)
    seen = np.unique(ring)
    assert seen.min() >= 0 and seen.max() == beams - 1
    assert len(seen) >= 0.9 * beams  # upward beams in a street still hit buildings
    # every point of a ring lies on that ring's elevation; ring order follows the driver convention
    e = _elev(fr.lidar)
    order = el if cfg.ring_order == "bottom_up" else el[::-1]
    np.testing.assert_allclose(e, order[ring], atol=1e-3)
    assert (cfg.ring_order == "top_down") == name.startswith("os1")


def test_intensity_models_and_scales():
    base = lidar_config("hdl32e", missing_prob=0.0)
    out = {}
    for model, top in (("none", 255.0), ("reflectivity", 1.0), ("reflectivity", 255.0), ("signal", 100.0)):
        fr = _first(_cfg(base.model_copy(update={"intensity_model": model, "intensity_max": top})))
        i = fr.lidar["intensity"]
        assert i.min() >= 0 and i.max() <= top + 1e-4
        out[(model, top)] = fr
    assert not out[("none", 255.0)].lidar["intensity"].any()
    a, b = out[("reflectivity", 1.0)].lidar["intensity"], out[("reflectivity", 255.0)].lidar["intensity"]
    assert a.max() > 0.3 and b.max() > 50
    np.testing.assert_allclose(b / 255.0, a, rtol=1e-5, atol=1e-6)  # same draw, other full scale

    def near_far(fr):
        p, m = fr.lidar, fr.lidar_material
        r = np.hypot(p["x"], p["y"])
        road = m == W.GROUND
        return np.median(p["intensity"][road & (r < 8)]), np.median(p["intensity"][road & (r > 20) & (r < 35)])

    sn, sf = near_far(out[("signal", 100.0)])
    rn, rf = near_far(out[("reflectivity", 1.0)])
    assert sn > 4 * sf  # raw signal falls with range
    assert rn == pytest.approx(rf, rel=0.15)  # calibrated reflectivity does not
    # a gamma curve changes the shape, not the scale
    g = _first(_cfg(base.model_copy(update={"intensity_model": "reflectivity", "intensity_max": 1.0,
                                            "intensity_gamma": 2.0}))).lidar["intensity"]
    np.testing.assert_allclose(g, a**2, rtol=1e-4, atol=1e-6)


def test_self_returns_inside_the_ego_box():
    body = (-2.3, 2.3, -0.95, 0.95, 0.0, 1.5)
    lid = lidar_config("hdl32e", ego_body=body, mount={"xyz": (0.3, 0.0, 1.8)})
    off = _first(_cfg(lid))
    on = _first(_cfg(lid.model_copy(update={"self_returns": True, "self_min_range": 0.2})))

    def in_box(fr, margin):
        xyz = np.stack([fr.lidar[c] for c in "xyz"], 1).astype(np.float64)
        p = transform_points(fr.T_base_sensor["lidar_top"], xyz)
        return ((p[:, 0] > body[0] - margin) & (p[:, 0] < body[1] + margin) & (p[:, 1] > body[2] - margin)
                & (p[:, 1] < body[3] + margin) & (p[:, 2] > body[4] - margin) & (p[:, 2] < body[5] + margin))

    assert not in_box(off, 0.0).any()
    selfp = on.lidar_material == MAT_SELF
    assert selfp.sum() > 200  # roof and hood
    assert in_box(on, 0.1)[selfp].all()
    assert (on.lidar_object[selfp] == -1).all()
    # the body stops the beam: nothing is seen through the roof, fewer ground returns around the car
    assert (on.lidar_material == W.GROUND).sum() < (off.lidar_material == W.GROUND).sum()


def test_beam_failures_and_packet_loss():
    lid = lidar_config("vlp16", missing_prob=0.0)
    ok = _first(_cfg(lid))
    bad = _first(_cfg(lid.model_copy(update={"dead_beams": [3, 9], "weak_beams": [5], "weak_beam_missing": 0.8,
                                             "packet_loss_prob": 0.2, "blocked_sectors_deg": [(160.0, 200.0)]})))
    ring = bad.lidar["ring"]
    assert not np.isin(ring, [3, 9]).any() and np.isin(ok.lidar["ring"], [3, 9]).any()
    weak = (ring == 5).sum() / max((ok.lidar["ring"] == 5).sum(), 1)
    assert 0.05 < weak < 0.45
    az = np.degrees(np.arctan2(bad.lidar["y"], bad.lidar["x"])) % 360
    assert not ((az > 161) & (az < 199)).any()
    assert len(bad.lidar) < 0.75 * len(ok.lidar)


def test_fog_after_onset_loses_far_returns_and_adds_near_clutter():
    lid = lidar_config("hdl32e", missing_prob=0.0)
    fog = AdversityConfig(type="weather", weather="fog", start_s=0.5, duration_s=0.5, sensors=["lidar"],
                          visibility_m=60.0, rate=3000.0)
    clear = list(Scenario(_cfg(lid, duration=1.0)).frames(with_others=False))
    foggy_sc = Scenario(_cfg(lid, duration=1.0, adversities=[fog.model_dump()]))
    foggy = list(foggy_sc.frames(with_others=False))
    assert len(clear) == len(foggy) == 10
    for c, f in zip(clear[:5], foggy[:5], strict=True):  # before the onset: the clear-air scan, bit for bit
        assert c.lidar.tobytes() == f.lidar.tobytes()

    def stats(fr):
        r = np.sqrt(fr.lidar["x"] ** 2 + fr.lidar["y"] ** 2 + fr.lidar["z"] ** 2)
        return (r > 35).sum(), ((fr.lidar_material == MAT_WEATHER) & (r < 10)).sum()

    for c, f in zip(clear[5:], foggy[5:], strict=True):
        far_c, clut_c = stats(c)
        far_f, clut_f = stats(f)
        assert clut_c == 0 and clut_f > 1000
        assert far_f < 0.2 * far_c
    ev = [e for e in foggy_sc.events() if e["type"] == "weather"]
    assert ev and ev[0]["start_ns"] == foggy_sc.ns(0.5) and ev[0]["weather"] == "fog"
    assert [e["type"] for e in foggy_sc.active_events(0.7)] == ["weather"] and not foggy_sc.active_events(0.3)


def test_new_classes_and_scenery_in_ground_truth():
    cfg = _cfg(duration=1.0, traffic=TrafficConfig(vehicles=10, trucks=1, buses=2, cyclists=5, pedestrians=9,
                                                   pedestrian_group_max=4).model_dump(),
               scenery=SceneryConfig(vegetation=1.0, fences=1.0, poles=1.0, front_parking=1.0).model_dump())
    sc = Scenario(cfg)
    tr = sc.world.traj
    buses = (tr.cls == W.CLS_TRUCK) & (tr.size[:, 0] == W.BUS_SIZE[0])
    assert buses.sum() == 2
    assert (tr.cls == W.CLS_PEDESTRIAN).sum() > 9  # group members on top of the configured walkers
    assert (tr.cls == W.CLS_CYCLIST).sum() == 5
    st = sc.world.static
    hedges = (st.bmat == W.VEGETATION).sum()
    fences = ((st.bmat == W.BARRIER) & (st.bw < 0.1)).sum()
    assert hedges > 10 and fences > 10
    clean = Scenario(_cfg(duration=1.0))
    assert (st.bid >= 0).sum() > (clean.world.static.bid >= 0).sum()  # forecourt parking
    # every class appears in the per-frame objects with its class, and new scenery is occupied
    seen = set()
    frames = list(sc.frames(with_others=False))
    for fr in frames:
        seen |= set(fr.objects_base["cls"].tolist())
    assert {W.CLS_CAR, W.CLS_TRUCK, W.CLS_CYCLIST, W.CLS_PEDESTRIAN} <= seen
    g, fr = sc.grid, frames[-1]
    T = np.linalg.inv(fr.T_world_base)
    hits = 0
    for k in np.nonzero((st.bmat == W.VEGETATION) | ((st.bmat == W.BARRIER) & (st.bw < 0.1)))[0]:
        x, y = T[0, 0] * st.bx[k] + T[0, 1] * st.by[k] + T[0, 3], T[1, 0] * st.bx[k] + T[1, 1] * st.by[k] + T[1, 3]
        i, j = int((x - g.x_min) // g.resolution), int((y - g.y_min) // g.resolution)
        if 0 <= i < g.nx and 0 <= j < g.ny:
            assert fr.occupied[i, j]
            hits += 1
    assert hits >= 3


def test_randomised_preset_is_deterministic_and_varied():
    cfgs = [preset("randomised", seed=s, duration_s=5.0) for s in range(40)]
    assert preset("randomised", seed=7, duration_s=5.0) == cfgs[7]
    assert len({c.model_dump_json() for c in cfgs}) == 40
    models = {c.lidar.model for c in cfgs}
    assert len(models) >= 5 and models <= set(LIDAR_MODELS)
    assert {c.layout for c in cfgs} == {"urban", "highway", "parking"}
    assert {c.lidar.intensity_model for c in cfgs} == {"incidence", "reflectivity", "signal", "none"}
    assert any(c.lidar.self_returns for c in cfgs) and any(c.lidar.dead_beams for c in cfgs)
    assert {np.sign(c.scenery.slope) for c in cfgs} == {-1.0, 0.0, 1.0}
    weather = [a for c in cfgs for a in c.adversities if a.type == "weather"]
    assert len(weather) >= 5 and all(0 <= a.start_s < 5.0 for a in weather)
    assert all(preset(n, seed=1, duration_s=2.0).layout == (lay or preset(n, seed=1, duration_s=2.0).layout)
               for n, lay in RANDOMISED.items())
    # the same seed gives the same data; a tilted mount keeps returns in visible cells
    tilted = next(s for s in range(40) if abs(cfgs[s].lidar.mount.rpy[1]) > math.radians(1.0))
    a = Scenario(preset("randomised", seed=tilted, duration_s=0.2))
    b = Scenario(preset("randomised", seed=tilted, duration_s=0.2))
    fa, fb = next(a.frames()), next(b.frames())
    assert fa.lidar.tobytes() == fb.lidar.tobytes() and (fa.visible == fb.visible).all()
    g = a.grid
    pts = transform_points(fa.T_base_sensor[a.config.lidar.frame_id],
                           np.stack([fa.lidar[c] for c in "xyz"], 1).astype(np.float64))
    i = np.floor((pts[:, 0] - g.x_min) / g.resolution).astype(int)
    j = np.floor((pts[:, 1] - g.y_min) / g.resolution).astype(int)
    ground = np.isin(fa.lidar_material, [W.GROUND, W.SIDEWALK, W.MARKING])  # (wall returns may fall inside)
    ok = (i >= 0) & (i < g.nx) & (j >= 0) & (j < g.ny) & ground
    assert ok.sum() > 1000 and fa.visible[i[ok], j[ok]].mean() > 0.99


@pytest.mark.parametrize("grade", [0.06, -0.08])
def test_slope_ahead_on_the_highway(grade):
    from ssm_perception.sim.raycast import cast
    from ssm_perception.sim.sensors import sensor_rays_world

    lid = lidar_config("hdl32e", missing_prob=0.0)
    sc = Scenario(_cfg(lid, duration=0.2, layout="highway", scenery=SceneryConfig(slope=grade).model_dump()))
    nx, ny, c, g = sc.world.ramp
    assert g == grade and np.max(nx * sc.world.traj.x[0] + ny * sc.world.traj.y[0]) < c - 10
    fr = list(sc.frames(with_others=False))[-1]
    p = fr.lidar
    xyz = np.stack([p[k] for k in "xyz"], 1).astype(np.float64)
    pts = np.empty_like(xyz)
    for t in np.unique(p["t"]):  # each point through the ego pose at its own time
        m = p["t"] == t
        pts[m] = transform_points(sc.T_world_base(fr.t_s + float(t)) @ fr.T_base_sensor["lidar_top"], xyz[m])
    ground = np.isin(fr.lidar_material, [W.GROUND, W.SIDEWALK, W.MARKING])
    beyond = (nx * pts[:, 0] + ny * pts[:, 1] > c + 1.0) & ground
    err = np.abs(pts[beyond, 2] - sc.world.ground_z(pts[beyond, 0], pts[beyond, 1]))
    if grade > 0:  # a hill ahead is seen; a dip hides most of its ground (the shadow behind the crest)
        assert beyond.sum() > 200 and np.abs(pts[beyond, 2]).max() > 0.5
    assert beyond.sum() == 0 or np.quantile(err, 0.99) < 0.1
    # objects sit on the ground; barriers are cut to follow it
    objs = sc.objects_at(fr.t_s)
    np.testing.assert_allclose(objs["z"] - objs["h"] / 2, sc.world.ground_z(objs["x"], objs["y"]), atol=0.35)
    st = sc.world.static
    rails = (st.bmat == W.BARRIER) & (nx * st.bx + ny * st.by > c + 1)
    assert rails.any() and np.maximum(st.bl[rails], st.bw[rails]).max() <= 2.0 + 1e-9
    np.testing.assert_allclose(st.bz0[rails], sc.world.ground_z(st.bx[rails], st.by[rails]), atol=1e-9)
    # the LiDAR's fast culling path still finds exactly the hits of the generic path
    lidar = sc.lidar
    origins, dirs = sensor_rays_world(sc.ego_pose_at(0.1 + lidar.col_t), lidar.T_base_sensor, lidar.dirs)
    o, d = np.repeat(origins, lidar.cfg.beams, axis=0), dirs.reshape(-1, 3)
    dt = np.repeat(lidar.col_t, lidar.cfg.beams)
    a = cast(sc.scene_at(0.1), o, d, lidar.cfg.max_range, dt)
    b = cast(sc.scene_at(0.1), o, d, lidar.cfg.max_range, dt, beams=lidar.cfg.beams)
    np.testing.assert_array_equal(a.range, b.range)
    assert (a.range[np.isfinite(a.range)] > 0).all()


def test_simulate_overrides_lidar_model_and_weather(tmp_path):
    from typer.testing import CliRunner

    from ssm_perception.cli import app
    from ssm_perception.sim.presets import with_overrides
    from ssm_perception.sim.scenario import ScenarioError

    cfg = preset("urban", seed=1, duration_s=4.0)
    o = with_overrides(cfg, "os1_128", "fog:1.5:60")
    assert o.lidar.model == "os1_128" and o.lidar.beams == 128 and o.lidar.mount == cfg.lidar.mount
    w = o.adversities[-1]
    assert (w.type, w.weather, w.start_s, w.visibility_m, w.end_s) == ("weather", "fog", 1.5, 60.0, 4.0)
    assert w.sensors == ["lidar", "camera"] and w.rate > 1000
    assert with_overrides(cfg, weather="rain").adversities[-1].start_s == 0.0
    for bad, msg in ((("vlp32", ""), "unknown lidar model"), (("", "hail"), "fog, rain or snow"),
                     (("", "fog:9"), "onset < duration"), (("", "fog:x"), "must be numbers")):
        with pytest.raises(ScenarioError, match=msg):
            with_overrides(cfg, *bad)
    res = CliRunner().invoke(app, ["simulate", "--weather", "hail", "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "fog, rain or snow" in res.output and not (tmp_path / "b").exists()
