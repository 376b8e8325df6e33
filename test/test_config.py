"""The single configuration schema: defaults, YAML (ROS parameter-file form), flat ROS parameters, errors."""

import pytest

from ssm_perception.config import (
    ConfigError,
    GridConfig,
    PerceptionConfig,
    flatten,
    unflatten,
)


def test_default_grid_is_200_by_200_at_half_metre():
    g = PerceptionConfig().grid
    assert (g.nx, g.ny, g.resolution) == (200, 200, 0.5)
    assert (g.x_min, g.y_min) == (-50.0, -50.0)


def test_any_grid_size_is_allowed():
    g = GridConfig(length_x=64.0, length_y=32.0, resolution=0.25)
    assert (g.nx, g.ny) == (256, 128)


def test_ros_parameters_round_trip():
    cfg = PerceptionConfig()
    cfg.grid.resolution = 0.25
    cfg.model.kind = "logodds"
    flat = cfg.to_ros_parameters()
    assert flat["grid.resolution"] == 0.25 and flat["model.kind"] == "logodds"
    assert PerceptionConfig.from_ros_parameters(flat) == cfg
    assert unflatten(flatten({"a": {"b": 1, "c": {"d": 2}}})) == {"a": {"b": 1, "c": {"d": 2}}}


def test_yaml_in_ros_parameter_file_form(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ssm_perception:\n  ros__parameters:\n    use_sim_time: true\n    grid:\n      resolution: 0.25\n"
                 "    reset.max_time_gap_s: 3.0\n")
    cfg = PerceptionConfig.from_yaml(p)
    assert cfg.grid.resolution == 0.25 and cfg.reset.max_time_gap_s == 3.0
    assert PerceptionConfig.from_yaml(_write(tmp_path, PerceptionConfig().to_yaml())) == PerceptionConfig()


def _write(tmp_path, text):
    p = tmp_path / "round.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("grid:\n  resolution: -1\n", "grid.resolution"),
        ("grid:\n  resolutoin: 0.5\n", "grid.resolutoin"),
        ("model:\n  device: gpu\n", "model.device"),
        ("model:\n  kind: transformer\n", "model.kind"),
        ("grid:\n  length_x: 10.3\n", "grid"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, text, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        PerceptionConfig.from_yaml(p)
    assert field in str(err.value)
    assert "\n" not in str(err.value)  # one line, suitable for a node refusing to start


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        PerceptionConfig.from_yaml(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PerceptionConfig.from_yaml(p)
