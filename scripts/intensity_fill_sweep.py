#!/usr/bin/env python3
"""Published track instances per real sample bag with the intensity as recorded, x255, and removed
with the absent intensity filled by each value in --fills (bev/lidar_input.py fills the training
median, 21): does any fill make a recording without intensity give the tracks of the recording?

Bags: those scripts/measure_real_samples.py imported (out/real_samples/bags).

    .venv/bin/python scripts/intensity_fill_sweep.py --fills 10,21,30,40,55 av2_7fab2350 nuscenes_demo ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
app = typer.Typer(add_completion=False)


@app.command()
def main(
    names: Annotated[list[str], typer.Argument(help="bag names under --bags")],
    fills: Annotated[str, typer.Option(help="comma-separated fill values for the removed intensity")] = "21",
    bags: Annotated[Path, typer.Option(help="folder of the imported bags")] = Path("out/real_samples/bags"),
) -> None:
    from measure_real_samples import _variant

    import ssm_perception.bev.lidar_input as li
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.evaluate import decode_bag, topic_roles
    from ssm_perception.pipeline import PerceptionPipeline

    cfg = PerceptionConfig()
    median = li.TRAIN_INTENSITY_MEDIAN
    for name in names:
        dec = decode_bag(bags / name, cfg, topic_roles(cfg.topics), progress=False)
        res = {}
        for how, fill in [("as recorded", None), ("x255", None)] + [("removed", float(v)) for v in fills.split(",")]:
            li.TRAIN_INTENSITY_MEDIAN = median if fill is None else fill  # read at call time by LidarInput
            pipe, n = PerceptionPipeline(cfg), 0
            for inp in _variant(dec.frames, how):
                n += sum(t.status != "tentative" for t in pipe.process(inp).tracks)
            res[how if fill is None else f"removed, fill {fill:g}"] = n
        li.TRAIN_INTENSITY_MEDIAN = median
        typer.echo(json.dumps({name: res}))


if __name__ == "__main__":
    app()
