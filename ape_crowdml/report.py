"""`ape crowdml report TASK`: what the workers said of their runs, drawn (matplotlib).

For a settled task, the run summaries its workers delivered (`Party.run_summaries`): each
epoch's mean loss as a curve per worker, the final metrics, and for a DISAGREED task the first
epoch at which the workers' transcripts (a parameter digest per epoch) differ, which is where
their runs parted. Everything drawn is the workers' word; only the result digest is the chain's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .board import Phase
from .delivery import Delivery, first_divergence
from .render import WORKERS_WORD, run_line, short


@dataclass(frozen=True)
class RunReport:
    task_id: int
    phase: Phase
    runs: dict[str, Delivery]  # worker -> what it delivered
    unread: list[str]  # announced URIs that gave nothing usable, with why
    divergence: int | None  # first epoch whose transcripts differ (several runs only)

    def lines(self) -> list[str]:
        lines = [f"task {self.task_id}: {self.phase.label}, "
                 f"{len(self.runs)} run summar{'y' if len(self.runs) == 1 else 'ies'} delivered"]
        for worker, delivery in self.runs.items():
            lines.append(f"  {worker} ({delivery.uri}): {run_line(delivery.summary) or 'no summary'}")
        lines += [f"  not read: {why}" for why in self.unread]
        if self.divergence is not None:
            lines.append(f"  the transcripts diverge at epoch {self.divergence}")
        elif len(self.runs) > 1:
            lines.append("  the transcripts agree at every epoch")
        return [*lines, f"  ({WORKERS_WORD})"]


def run_report(party, task_id: int) -> RunReport:
    """The report of a settled task, read at the URIs its workers announced."""
    from .errors import TaskRejected

    phase = party.board.phase(task_id)
    if phase not in (Phase.AGREED, Phase.DISAGREED):
        raise TaskRejected(f"task {task_id} is {phase.label}: workers deliver their runs' "
                           "summaries once a task settled agreed or disagreed")
    runs, unread = party.run_summaries(task_id)
    transcripts = [d.summary.get("transcript", []) for d in runs.values() if d.summary]
    divergence = first_divergence(transcripts) if len(transcripts) > 1 else None
    return RunReport(task_id, phase, runs, unread, divergence)


def draw(report: RunReport, out: Path) -> Path:
    """The loss per epoch of each delivered run, the divergence epoch marked; a PNG (or any
    format matplotlib infers from `out`'s suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for worker, delivery in report.runs.items():
        epochs = (delivery.summary or {}).get("epochs", [])
        losses = [(i, epoch["loss"]) for i, epoch in enumerate(epochs, 1) if "loss" in epoch]
        if losses:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in delivery.summary["metrics"].items()
                                if isinstance(v, float))
            axes.plot(*zip(*losses), marker="o", label=f"{short(worker, 6)}  {metrics}".strip())
    if report.divergence is not None:
        axes.axvline(report.divergence, color="crimson", linestyle="--",
                     label=f"transcripts diverge at epoch {report.divergence}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean training loss")
    axes.set_title(f"task {report.task_id}: {report.phase.label}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.text(0.01, 0.005, WORKERS_WORD, fontsize="x-small", color="grey")
    out = Path(out)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
