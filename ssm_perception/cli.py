"""`ssm-perception` command line: one typer app; each sub-command lives next to the code it drives.

Sub-command modules keep heavy imports (torch, rclpy) inside their functions so that
`ssm-perception --help` stays fast.
"""

from __future__ import annotations

import typer

from ssm_perception.cli_errors import CliGroup

app = typer.Typer(
    cls=CliGroup,  # user errors -> one line on stderr, exit code 2 (ssm_perception/cli_errors.py)
    name="ssm-perception",
    help="Temporal BEV perception with a Mamba state-space model: simulate, replay, evaluate, train, bench.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.command("config")
def show_config(
    path: str = typer.Argument("", help="YAML file to validate; empty prints the defaults"),
) -> None:
    """Validate a configuration file (or print the defaults) in ROS 2 parameter-file form.

    Checks what the node would refuse at startup: the schema, the device, and the weights it would
    load (present, intact, trusted, trained with the configured model fields)."""
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.weights import check_model_weights

    cfg = PerceptionConfig.load(path)
    check_model_weights(cfg)
    typer.echo(cfg.to_yaml())


# Sub-commands registered by their modules (one line each).
from ssm_perception.sim.cli import simulate as _simulate

app.command("simulate")(_simulate)
__import__("ssm_perception.nodes.replay", fromlist=["register"]).register(app)
__import__("ssm_perception.nodes.launcher", fromlist=["register"]).register(app)
__import__("ssm_perception.train.cli", fromlist=["register"]).register(app)
__import__("ssm_perception.eval.cli", fromlist=["register"]).register(app)
__import__("ssm_perception.bench", fromlist=["register"]).register(app)
__import__("ssm_perception.io.importers.cli", fromlist=["register"]).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
