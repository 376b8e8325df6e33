"""ament_python package: `colcon build` on a vehicle, `pip install -e .` (make setup) elsewhere."""

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
    # `colcon test` runs pytest (not unittest) because pytest is declared here; the plugins are what
    # pytest.ini uses. Same list as the <test_depend> keys of package.xml.
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
        ],
    },
)
