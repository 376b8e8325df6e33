"""config/ssm_perception.rviz shows what the node publishes and subscribes, with matching QoS."""

from pathlib import Path

import yaml

from ssm_perception.config import PerceptionConfig

RVIZ = Path(__file__).resolve().parents[1] / "config" / "ssm_perception.rviz"


def _displays():
    d = yaml.safe_load(RVIZ.read_text())
    return d, {x["Name"]: x for x in d["Visualization Manager"]["Displays"]}


def test_rviz_topics_match_the_node_defaults():
    t = PerceptionConfig().topics
    doc, displays = _displays()
    by_class = {}
    for x in displays.values():
        by_class.setdefault(x["Class"].split("/")[-1], []).append(x)
    assert {"Grid", "TF", "Map", "MarkerArray", "PointCloud2"} <= set(by_class)
    (grid_map,) = by_class["Map"]
    assert grid_map["Topic"]["Value"] == t.occupancy_grid
    (markers,) = by_class["MarkerArray"]
    assert markers["Topic"]["Value"] == t.markers
    clouds = {x["Topic"]["Value"] for x in by_class["PointCloud2"]}
    assert t.lidar in clouds and clouds <= {t.lidar, t.radar}
    fixed = doc["Visualization Manager"]["Global Options"]["Fixed Frame"]
    assert fixed in (PerceptionConfig().frames.odom, PerceptionConfig().frames.base_link)


def test_rviz_qos_is_compatible_with_the_node():
    from ssm_perception.nodes.perception_node import MAP_QOS, OUTPUT_QOS, SENSOR_QOS

    _, displays = _displays()
    names = {1: "Reliable", 2: "Best Effort"}
    dur = {1: "Transient Local", 2: "Volatile"}
    by_topic = {x["Topic"]["Value"]: x["Topic"] for x in displays.values() if "Topic" in x}
    t = PerceptionConfig().topics
    # The latched grid: a transient-local reader gets the last map on start-up.
    assert by_topic[t.occupancy_grid]["Reliability Policy"] == names[MAP_QOS.reliability.value]
    assert by_topic[t.occupancy_grid]["Durability Policy"] == dur[MAP_QOS.durability.value]
    # A reliable reader does not match a best-effort writer: sensor clouds must be read best effort.
    assert by_topic[t.lidar]["Reliability Policy"] == names[SENSOR_QOS.reliability.value] == "Best Effort"
    assert by_topic[t.markers]["Reliability Policy"] == names[OUTPUT_QOS.reliability.value]
