"""Experiment tracking for `pretrain` through Accelerate's own `log_with`: the trackers Accelerate knows, checked
before a run starts, and a CSV tracker for when none is installed."""

import csv
from pathlib import Path

from accelerate.tracking import GeneralTracker
from accelerate.utils import LoggerType

from .atomic import atomic_write_json

# The trackers Accelerate's `log_with` takes (this Accelerate's), and the pip package of each where it differs.
ACCELERATE_TRACKERS = tuple(t.value for t in LoggerType if t.value != "all")
TRACKER_PACKAGES = {"comet_ml": "comet-ml", "tensorboard": "tensorboard (or tensorboardX)"}


class CSVTracker(GeneralTracker):
    """Accelerate tracker writing `step,key,value` rows to `<output_dir>/logs/metrics.csv` (used when TensorBoard is
    not installed)."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir):
        super().__init__()
        self.path = Path(logging_dir) / "logs" / "metrics.csv"

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path.parent / "config.json", values)

    def log(self, values: dict, step=None, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "key", "value"])
            writer.writerows([step, key, value] for key, value in values.items())


def tracker_names(report_to: str) -> list[str]:
    """The names in `--report_to` (comma-separated), checked against the trackers there are."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    allowed = ("auto", "all", "csv", "none", *ACCELERATE_TRACKERS)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"report_to must name trackers among {', '.join(allowed)}; got {report_to!r}")
    if len(names) > 1 and {"none", "auto"} & set(names):
        raise ValueError(f"report_to: none and auto stand alone; got {report_to!r}")
    return list(dict.fromkeys(names))


def build_tracker(report_to: str, output_dir) -> list | None:
    """Accelerate's `log_with` for `--report_to`: tracker names and our `CSVTracker`; None for `none`.

    Accelerate drops a tracker whose package is missing without a word (a debug log line): a run asked to report
    to W&B would train for hours and log nothing. A named tracker that is not installed is refused here instead.
    `all` is every installed Accelerate tracker plus CSV; `auto` is TensorBoard if installed, else CSV."""
    from accelerate.tracking import get_available_trackers

    names = tracker_names(report_to)
    if names == ["none"]:
        return None
    available = [LoggerType(t).value for t in get_available_trackers()]
    if names == ["auto"]:
        names = ["tensorboard" if "tensorboard" in available else "csv"]
    if "all" in names:
        names = [*available, "csv", *names]
    trackers = []
    for name in dict.fromkeys(name for name in names if name != "all"):
        if name == "csv":
            trackers.append(CSVTracker("ptum", output_dir))
        elif name in available:
            trackers.append(name)
        else:
            package = TRACKER_PACKAGES.get(name, name)
            raise ValueError(f"report_to={name} but {package} is not installed: pip install {package.split()[0]}")
    return trackers
