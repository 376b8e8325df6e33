"""Issue 3: what setup.py installs and what package.xml declares match the tree."""

import ast
import runpy
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Python import name -> the rosdep key / ROS package declared in package.xml for it.
IMPORT_TO_DEPEND = {
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "torch": "python3-torch",
    "transforms3d": "python3-transforms3d",
    "rosbags": "python3-rosbags-pip",
    "pydantic": "requirements-vehicle.txt",
    "typer": "python3-typer",
    "tqdm": "python3-tqdm",
    "rich": "python3-rich",
    "yaml": "python3-yaml",
    "matplotlib": "python3-matplotlib",
    "open3d": "python3-open3d-pip",
    "motmetrics": "requirements-vehicle.txt",
    "safetensors": "requirements-vehicle.txt",
    "zstandard": "requirements-vehicle.txt",
    "pyarrow": "requirements-vehicle.txt",
    "mcap": "requirements-vehicle.txt",
    "numba": "requirements-vehicle.txt",
    "psutil": "python3-psutil",
    "pandas": "python3-pandas",
    "cv2": "python3-opencv",
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "sensor_msgs": "sensor_msgs",
    "nav_msgs": "nav_msgs",
    "geometry_msgs": "geometry_msgs",
    "visualization_msgs": "visualization_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "tf2_msgs": "tf2_msgs",
    "unique_identifier_msgs": "unique_identifier_msgs",
    "lifecycle_msgs": "lifecycle_msgs",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python",
}
# Imported only where present (GPU machine, optional accelerators); each use is guarded.
OPTIONAL = {"mamba_ssm", "triton", "trackeval"}


def _setup_kwargs() -> dict:
    captured = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        cwd = Path.cwd()
        try:
            import os

            os.chdir(ROOT)
            runpy.run_path(str(ROOT / "setup.py"))
        finally:
            os.chdir(cwd)
    return captured


# Python rosdep keys of package.xml, each checked to exist in ros/rosdistro (rosdep/python.yaml at
# commit 8468e88ccd52, 2026-08-22). A key that is not there makes `rosdep install` fail for everyone:
# check a new one there before adding it here; dependencies without a key go to requirements-vehicle.txt.
ROSDEP_KEYS_IN_ROSDISTRO = {
    "python3-numpy", "python3-scipy", "python3-torch", "python3-transforms3d", "python3-rosbags-pip",
    "python3-typer", "python3-tqdm", "python3-rich", "python3-yaml", "python3-matplotlib", "python3-open3d-pip",
    "python3-psutil", "python3-opencv", "python3-pandas", "python3-pytest", "python3-pytest-timeout",
    "python3-hypothesis",
}


def _pip_requirements() -> set[str]:
    lines = (ROOT / "requirements-vehicle.txt").read_text().splitlines()
    return {ln.split("#")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for ln in lines
            if ln.split("#")[0].strip()}


def _declared() -> set[str]:
    tree = ET.parse(ROOT / "package.xml")
    tags = ("depend", "exec_depend", "build_depend", "test_depend")
    keys = {e.text.strip() for t in tags for e in tree.getroot().iter(t)}
    return keys | ({"requirements-vehicle.txt"} if _pip_requirements() else set())


def test_python_rosdep_keys_exist_in_rosdistro():
    keys = {k for k in _declared() if k.startswith("python3-")}
    unknown = sorted(keys - ROSDEP_KEYS_IN_ROSDISTRO)
    assert not unknown, f"package.xml keys not verified in rosdistro (use requirements-vehicle.txt): {unknown}"


def test_pip_requirements_cover_what_rosdep_cannot_and_pydantic_has_a_floor():
    assert {"pydantic", "motmetrics", "safetensors"} <= _pip_requirements()
    text = (ROOT / "requirements-vehicle.txt").read_text()
    assert "pydantic>=2" in text.replace(" ", "")
    root = ET.parse(ROOT / "package.xml").getroot()
    torch = [e for e in root.iter("exec_depend") if e.text.strip() == "python3-torch"]
    assert torch and torch[0].get("version_gte"), "python3-torch needs a version floor"


def test_test_dependencies_make_colcon_run_pytest_with_its_plugins():
    test_deps = {e.text.strip() for e in ET.parse(ROOT / "package.xml").getroot().iter("test_depend")}
    assert {"python3-pytest", "python3-pytest-timeout", "python3-hypothesis"} <= test_deps
    extras = _setup_kwargs().get("extras_require", {}).get("test", [])
    assert {"pytest", "pytest-timeout", "hypothesis"} <= set(extras)
    assert "--timeout" in (ROOT / "pytest.ini").read_text()


def test_python_m_ssm_perception_runs_the_cli():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "ssm_perception", "--help"], check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "simulate" in out.stdout and "replay" in out.stdout


def test_package_xml_is_format3_ament_cmake_with_interfaces():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "ssm_perception"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"


def test_no_package_hides_inside_this_one():
    """colcon's crawl and rosdep stop at the top-level package.xml: any other package.xml below it is
    invisible to them, so there must be none (except under a COLCON_IGNORE, i.e. on purpose)."""
    hidden = [p.relative_to(ROOT) for p in ROOT.rglob("package.xml") if p.parent != ROOT
              and not any((q / "COLCON_IGNORE").exists() for q in p.parents if ROOT in q.parents or q == ROOT)
              and not any(part.startswith(".") or part in ("build", "install", "log") for part in p.relative_to(ROOT).parts)]
    assert not hidden, f"packages colcon and rosdep would not find: {hidden}"


def _cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def test_cmake_generates_every_message_and_installs_executables_where_ros2_run_looks():
    text = _cmake()
    for msg in sorted((ROOT / "msg").glob("*.msg")):
        assert f'"msg/{msg.name}"' in text, f"CMakeLists.txt does not generate {msg.name}"
    import re

    cmake_exes = set(re.findall(r'"([\w-]+=[\w.]+:\w+)"', text))
    setup_exes = {s.replace(" ", "") for s in _setup_kwargs()["entry_points"]["console_scripts"]}
    assert cmake_exes == setup_exes, "CMakeLists.txt and setup.py list different executables"
    assert "DESTINATION lib/${PROJECT_NAME}" in text
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in text
    assert "ament_add_pytest_test(pytest test" in text


@pytest.mark.parametrize("folder", ["launch", "config", "msg"])
def test_every_file_is_installed_by_setup_py(folder):
    kwargs = _setup_kwargs()
    installed = {src for _, srcs in kwargs["data_files"] for src in srcs}
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*") if p.is_file()}
    assert on_disk, f"{folder}/ is empty"
    missing = sorted(on_disk - installed)
    assert not missing, f"files under {folder}/ that setup.py does not install: {missing}"


def test_marker_package_xml_and_entry_points_installed():
    kwargs = _setup_kwargs()
    pairs = {(dest, src) for dest, srcs in kwargs["data_files"] for src in srcs}
    assert ("share/ament_index/resource_index/packages", "resource/ssm_perception") in pairs
    assert ("share/ssm_perception", "package.xml") in pairs
    scripts = kwargs["entry_points"]["console_scripts"]
    assert any(s.startswith("ssm-perception =") for s in scripts)
    assert any(s.startswith("perception_node =") for s in scripts)


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_import_in_the_package_is_declared():
    declared = _declared()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    files = list((ROOT / "ssm_perception").rglob("*.py")) + list((ROOT / "launch").glob("*.py"))
    for py in files:
        for name in sorted(_imports_of(py) - stdlib - OPTIONAL - {"ssm_perception"}):
            key = IMPORT_TO_DEPEND.get(name)
            if key is None:
                problems.append(f"{py.relative_to(ROOT)}: import {name!r} has no known package.xml key")
            elif key not in declared:
                problems.append(f"{py.relative_to(ROOT)}: import {name!r} needs <exec_depend>{key}</exec_depend>")
    assert not problems, "\n".join(problems)


def test_lock_file_pins_every_dependency_exactly():
    lines = [ln.strip() for ln in (ROOT / "requirements.lock").read_text().splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith("#")]
    loose = [r for r in reqs if "==" not in r]
    assert not loose, f"unpinned requirements: {loose}"
    names = {r.split("==")[0].lower() for r in reqs}
    for needed in ("torch", "numpy", "scipy", "transforms3d", "rosbags", "pydantic", "typer", "tqdm",
                   "rich", "matplotlib", "open3d-cpu", "motmetrics", "pytest", "hypothesis",
                   "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-std-srvs", "ros-diagnostic-msgs"):
        assert needed in names, f"{needed} is not pinned in requirements.lock"


def test_readme_vehicle_commands_are_what_ci_runs():
    """The README's vehicle block and scripts/check_vehicle_path.sh run the same colcon commands."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using it in a ROS 2 workspace on a vehicle"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 7)]
    script = (ROOT / "scripts" / "check_vehicle_path.sh").read_text()
    script_lines = {ln.strip() for ln in script.splitlines()}
    for cmd in ("colcon build", "source install/setup.bash", "colcon test --packages-select ssm_perception",
                "colcon test-result --all"):
        assert cmd in block, f"README vehicle block lacks {cmd!r}"
        assert any(ln.startswith(cmd) or f"$({cmd}" in ln for ln in script_lines), f"CI does not run {cmd!r}"
    assert "bash scripts/check_vehicle_path.sh" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_package_path_takes_generated_interfaces_and_nothing_else(tmp_path):
    """ssm_perception/__init__.py adds ssm_perception/ folders that hold generated interfaces (msg/)
    to the package path, and no other checkout's ssm_perception/."""
    import subprocess

    (tmp_path / "gen" / "ssm_perception" / "msg").mkdir(parents=True)
    (tmp_path / "gen" / "ssm_perception" / "msg" / "__init__.py").write_text("MARK = 'generated'\n")
    (tmp_path / "other" / "ssm_perception").mkdir(parents=True)
    (tmp_path / "other" / "ssm_perception" / "config.py").write_text("raise SystemExit('wrong checkout')\n")
    code = ("import json, sys; sys.path[:0] = sys.argv[1:4]; import ssm_perception as p; "
            "print(json.dumps(list(p.__path__)))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "gen"), str(tmp_path / "other")],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    path = json.loads(out.stdout.strip().splitlines()[-1])
    assert path[0] == str(ROOT / "ssm_perception")
    assert str(tmp_path / "gen" / "ssm_perception") in path
    assert not any(p.startswith(str(tmp_path / "other")) for p in path)
