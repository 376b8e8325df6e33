"""`ssm-perception evaluate BAG... [--model CKPT] [--baselines logodds,single,...] [--ablate SETS] -o DIR`.

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
    ablate: str = typer.Option(
        "", "--ablate", "-a",
        help="sensor sets to compare, comma-separated, sensors joined by '+' (lidar, radar, camera) or 'all'; "
             "'standard' = lidar,lidar+radar,lidar+camera,all. Each set runs the same pipeline with the other "
             "sensors switched off (sensors.use_*); the report gains each sensor's gain and latency cost"),
    allow_untrusted_weights: bool = typer.Option(
        False, "--allow-untrusted-weights",
        help="run weights not pinned in the package's checkpoints/MANIFEST.json (your own training runs)"),
) -> None:
    """Replay bags offline through the node's PerceptionPipeline and write metrics.json + report.md."""
    import shlex
    import sys

    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.ablation import parse_sensor_sets
    from ssm_perception.eval.evaluate import check_explicit_weights, parse_topic_map
    from ssm_perception.eval.evaluate import evaluate as run
    from ssm_perception.io.bag import check_bag

    # Errors (configuration, bags, checkpoints) become one line and exit code 2 in cli_errors.CliGroup.
    cfg = PerceptionConfig.load(config)
    if allow_untrusted_weights:
        cfg.model.allow_untrusted_weights = True
    roles = parse_topic_map(topic_map)
    kinds = [b for b in (x.strip() for x in baselines.split(",")) if b]
    sets = parse_sensor_sets(ablate) if ablate else None
    check_explicit_weights(model, kinds, cfg)  # the cheap checks first: weights, then bag structure
    for bag in bags:
        check_bag(bag)
    result = run([str(b) for b in bags], cfg, out, main_checkpoint=model, baselines=kinds, topic_map=roles,
                 plots=not no_plots, labels=[str(x) for x in labels], ablate=sets,
                 command=shlex.join(["ssm-perception", *sys.argv[1:]]) if sets else None)
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
    ab = result.get("ablation")
    for spec, m in (ab or {}).get("models", {}).items():
        for r in m["rows"]:
            g = r["gain_over_lidar"] or {}
            lat = r["latency_ms"]["process"] or {}
            gain = "" if not g else (f" (IoU {g['iou'] or 0:+.3f}, moving {g['moving_iou'] or 0:+.3f}, "
                                     f"process p50 {g['process_p50_ms'] or 0:+.1f} ms over lidar)")
            typer.echo(f"{spec}@{r['set']:<18} IoU {r['iou'] or 0:.3f}, moving IoU {r['moving_iou'] or 0:.3f}, "
                       f"car MOTA {((r['tracking'].get('car') or {}).get('mota') or 0):.3f}, "
                       f"process p50 {lat.get('p50', 0):.1f} ms{gain}")
    for name, why in (ab or {}).get("failed", {}).items():
        typer.secho(f"{name}: failed ({why}); the other sets are complete", fg="red", err=True)
    extra = f", {out / 'ablation.json'} and {out / 'ablation.md'}" if ab else ""
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}{extra}")
    if ab and ab["failed"]:  # the finished sets are written; the exit code still tells a script
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
