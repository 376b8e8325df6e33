"""`ssm-perception evaluate BAG... [--model CKPT] [--baselines logodds,single,...] -o DIR`.

Heavy imports (torch, the pipeline) stay inside the command so that `ssm-perception --help` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ssm_perception.cli_errors import existing_path


def evaluate(
    bags: list[Path] = typer.Argument(..., help="rosbag2 directories (mcap or sqlite3)"),  # noqa: B008
    out: Path = typer.Option(Path("out/eval"), "--out", "-o", help="output directory"),  # noqa: B008
    model: str = typer.Option("", "--model", "-m", help="checkpoint (.safetensors); default: the shipped one",
                              callback=existing_path),
    baselines: str = typer.Option("", "--baselines", "-b",
                                  help="comma-separated kinds, each optionally kind=checkpoint "
                                       "(logodds,single,convgru,attention)"),
    config: str = typer.Option("", "--config", "-c", help="PerceptionConfig YAML (grid, topics, thresholds)",
                               callback=existing_path),
    topic_map: list[str] = typer.Option(  # noqa: B008
        [], "--topic-map", "-t", help="role=/topic, repeatable (roles: lidar, radar, camera_image, camera_info, "
                                      "tf, tf_static, zone, gt_occupancy, gt_dynamic, gt_visibility, gt_objects, "
                                      "gt_events)"),
    no_plots: bool = typer.Option(False, "--no-plots", help="metrics.json and report.md without PNGs"),
    labels: list[Path] = typer.Option(  # noqa: B008
        [], "--labels", "-l", help="label file (JSON lines, io/labels.py), one per bag in order; default: "
                                   "the bag's labels.jsonl when present"),
    allow_untrusted_weights: bool = typer.Option(
        False, "--allow-untrusted-weights",
        help="run weights not pinned in the package's checkpoints/MANIFEST.json (your own training runs)"),
) -> None:
    """Replay bags offline through the node's PerceptionPipeline and write metrics.json + report.md."""
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.evaluate import check_explicit_weights, parse_topic_map
    from ssm_perception.eval.evaluate import evaluate as run
    from ssm_perception.io.bag import check_bag

    # Errors (configuration, bags, checkpoints) become one line and exit code 2 in cli_errors.CliGroup.
    cfg = PerceptionConfig.load(config)
    if allow_untrusted_weights:
        cfg.model.allow_untrusted_weights = True
    roles = parse_topic_map(topic_map)
    kinds = [b for b in (x.strip() for x in baselines.split(",")) if b]
    check_explicit_weights(model, kinds, cfg)  # the cheap checks first: weights, then bag structure
    for bag in bags:
        check_bag(bag)
    result = run([str(b) for b in bags], cfg, out, main_checkpoint=model, baselines=kinds, topic_map=roles,
                 plots=not no_plots, labels=[str(x) for x in labels])
    for name, m in result["models"].items():
        occ, raw, lf = m["occupancy"], m.get("occupancy_raw"), m["label_free"]
        lat = m["latency_ms"].get("total", {})
        head = "no ground truth" if occ is None else (
            f"published grid IoU {occ['splits']['all']['iou'] or 0:.3f} (dynamic "
            f"{occ['splits']['dynamic']['iou'] or 0:.3f}, occluded {occ['splits']['occluded']['iou'] or 0:.3f}), "
            f"ECE {occ['ece'] or 0:.3f}; raw IoU {raw['splits']['all']['iou'] or 0:.3f}")
        cov = lf["evidence_coverage"]
        typer.echo(f"{name:>10}: {head}; evidence coverage {'n/a' if cov is None else f'{cov:.3f}'}; "
                   f"latency p50 {lat.get('p50', 0):.1f} ms; resets {m['resets']['count']}")
    for name, why in result.get("skipped_models", {}).items():
        typer.secho(f"{name:>10}: skipped ({why})", fg="yellow")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
