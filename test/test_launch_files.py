"""launch/ssm_perception.launch.py (launch_ros is not installable here: checked by parsing) and the
parameter file it passes."""

import ast
import re
from pathlib import Path

import yaml

from ssm_perception.config import NODE_NAME, PerceptionConfig, flatten

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "ssm_perception.launch.py"
CONFIG = ROOT / "config" / "ssm_perception.yaml"


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _kw(call, key):
    return next(k.value for k in call.keywords if k.arg == key)


def test_launch_file_starts_the_declared_executable_with_the_installed_config():
    tree = ast.parse(LAUNCH.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    (node,) = _calls(tree, "Node")
    assert ast.literal_eval(_kw(node, "package")) == "ssm_perception"
    executable = ast.literal_eval(_kw(node, "executable"))
    assert ast.literal_eval(_kw(node, "name")) == NODE_NAME  # the key of the YAML parameter file
    setup = (ROOT / "setup.py").read_text()
    assert re.search(rf'"{executable} = ssm_perception\.nodes\.perception_node:main"', setup)
    # parameters=[<config launch argument>, {'use_sim_time': ...}]
    params = _kw(node, "parameters")
    assert isinstance(params, ast.List) and len(params.elts) == 2
    assert isinstance(params.elts[1], ast.Dict) and ast.literal_eval(params.elts[1].keys[0]) == "use_sim_time"
    declared = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == {"config", "use_sim_time"}
    # The default config is the installed share/ssm_perception/config/ssm_perception.yaml ...
    join = next(c for c in _calls(tree, "join") if any(isinstance(a, ast.Constant) and a.value == "config"
                                                        for a in c.args))
    assert ast.literal_eval(join.args[1]) == "config"
    assert isinstance(join.args[2], ast.Call) and join.args[2].func.id == "default_config_name"  # CPU or GPU file
    from ssm_perception.defaults import default_config_name

    assert all((ROOT / "config" / default_config_name(g)).is_file() for g in (False, True))
    (share,) = _calls(tree, "get_package_share_directory")
    assert ast.literal_eval(share.args[0]) == "ssm_perception"
    # ... which setup.py installs there.
    assert 'f"share/{PACKAGE}/config", files("config/*")' in setup
    assert 'f"share/{PACKAGE}/launch", files("launch/*")' in setup


def test_parameter_file_loads_and_documents_every_parameter():
    shipped = PerceptionConfig.from_yaml(CONFIG).to_ros_parameters()
    defaults = PerceptionConfig().to_ros_parameters()
    # The node runs with the shipped file: it must state the schema's defaults, or the two drift apart.
    drift = {k: (shipped[k], defaults[k]) for k in defaults if shipped.get(k) != defaults[k]}
    assert not drift, f"config/ssm_perception.yaml differs from config.py defaults (yaml, schema): {drift}"
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == [NODE_NAME]
    listed = set(flatten(data[NODE_NAME]["ros__parameters"]))
    schema = set(PerceptionConfig().to_ros_parameters())
    assert listed == schema, f"missing in YAML: {sorted(schema - listed)}; unknown: {sorted(listed - schema)}"
