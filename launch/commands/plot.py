"""``agora plot RUN_DIR [RUN_DIR ...]``: learning curves from metrics.csv as a PNG (matplotlib, no display).

Runs that trained some seats of their worlds (``env.seats``) are labelled with those seats, so that two learners
trained against each other (predators and prey of the same worlds) read as the two sides of one figure; where a run
logged ``opponent_late`` (how often its opponent's seats were filled at the deadline), a second row plots it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="write the learning-curve PNG of one or more runs",
        description="Plot a metric of one or more runs against environment steps and wall-clock time.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by agora train")
    parser.add_argument("--metric", default="return", help="the metrics.csv column to plot (default %(default)s)")
    parser.add_argument("--out", type=Path, help="output PNG (default: RUN_DIR/learning_curve.png of the first run)")
    parser.add_argument("--smooth", type=int, default=5, help="moving-average window in rows (default %(default)s)")
    parser.add_argument("--hline", type=float, action="append", default=[], help="draw a reference line at this value")
    parser.add_argument("--title", help="figure title")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from agora_marl.learners.config import ConfigError, load_config
    from agora_marl.learners.run import CONFIG_FILE, METRICS_FILE, read_metrics

    run_dirs = [Path(d) for d in args.run_dirs]
    curves = []
    for run_dir in run_dirs:
        all_rows = read_metrics(run_dir / METRICS_FILE)
        rows = [r for r in all_rows if r.get(args.metric, "") != ""]
        if not rows:
            raise SystemExit(f"agora plot: {run_dir / METRICS_FILE} has no values of {args.metric!r}")
        try:
            config = load_config(run_dir / CONFIG_FILE)
        except ConfigError as exc:  # e.g. the algorithm's file moved: its config says where it was
            raise SystemExit(f"agora plot: {run_dir / CONFIG_FILE}: {exc}") from None
        late = [r for r in all_rows if r.get(LATE, "") != ""]
        curves.append((run_label(run_dir, config.algorithm.name, run_dirs, config.env.seats), rows, late))
    with_late = any(late for _, _, late in curves)
    fig, axes = plt.subplots(
        2 if with_late else 1, 2, figsize=(11, 6.5 if with_late else 4), sharex="col", sharey="row", squeeze=False
    )
    (by_step, by_time) = axes[0]
    for color, (label, rows, late) in enumerate(curves):
        values = _smooth(np.array([float(r[args.metric]) for r in rows]), args.smooth)
        for ax, x in zip(axes[0], _x(rows), strict=True):
            ax.plot(x, values, label=label, color=f"C{color}")
        if late:
            for ax, x in zip(axes[1], _x(late), strict=True):
                ax.plot(x, [float(r[LATE]) for r in late], label=label, color=f"C{color}")
    for value in args.hline:
        for ax in (by_step, by_time):
            ax.axhline(value, color="gray", linestyle="--", linewidth=0.8)
    axes[-1][0].set_xlabel("environment steps")
    axes[-1][1].set_xlabel("wall-clock minutes")
    by_step.set_ylabel(args.metric)
    if with_late:
        axes[1][0].set_ylabel(f"{LATE} (fraction filled)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out = args.out or Path(args.run_dirs[0]) / "learning_curve.png"
    fig.savefig(out, dpi=120)
    print(f"agora plot: wrote {out}")
    return 0


def run_label(run_dir: Path, algo: str, run_dirs: list[Path], seats: list[str] | None = None) -> str:
    """A run's legend entry: its directory's name (its path where two runs share a name), with the algorithm unless
    the name already says it (``runs/mappo`` reads "mappo", not "mappo (mappo)"), and the seats it trained when it
    trained some (``runs/prey (ippo, prey_*)``)."""
    same_name = [d for d in run_dirs if d.name == run_dir.name]
    name = str(run_dir) if len(same_name) > 1 else run_dir.name
    words = re.split(r"[^a-z0-9]+", run_dir.name.lower())
    notes = ([] if algo.lower() in words else [algo]) + ([",".join(seats)] if seats else [])
    return f"{name} ({', '.join(notes)})" if notes else name


#: The metric of a run's second row: how often the seats it left to others were filled at the deadline.
LATE = "opponent_late"


def _x(rows: list[dict]) -> tuple:
    """The rows' environment steps and wall-clock minutes."""
    import numpy as np

    return np.array([float(r["step"]) for r in rows]), np.array([float(r["time_s"]) for r in rows]) / 60


def _smooth(values, window: int):
    import numpy as np

    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = [values[: i + 1].mean() for i in range(window - 1)]
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])
