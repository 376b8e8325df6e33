"""`pip install -e .` (make setup): the Python package in development mode.

On a vehicle, colcon builds the package with CMakeLists.txt (one ament_cmake package: the interfaces
in msg/ and this Python package); the executables below are the same list there."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ssm_perception"


def files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern) if not p.endswith("~"))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["checkpoints/*.safetensors", "checkpoints/*.json", "checkpoints/*.md",
                            "temporal/fused_launch.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", files("launch/*")),
        (f"share/{PACKAGE}/config", files("config/*")),
        (f"share/{PACKAGE}/msg", files("msg/*.msg")),
    ],
    install_requires=["setuptools"],
    # What the test suite needs (pytest.ini uses the timeout plugin); same list as package.xml's
    # <test_depend> keys, which `colcon test` (ament_cmake_pytest) relies on.
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis"]},
    zip_safe=False,
    maintainer="ssm_perception maintainers",
    maintainer_email="maintainers@ssm-perception.dev",
    description="Temporal BEV perception with a Mamba selective state-space model for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ssm-perception = ssm_perception.cli:main",
            "perception_node = ssm_perception.nodes.perception_node:main",
            "perception_lifecycle_node = ssm_perception.nodes.lifecycle_node:main",
        ],
    },
)
