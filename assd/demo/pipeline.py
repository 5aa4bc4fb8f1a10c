"""``run_demo``: check the input, run (or reuse) every step in order, write and print the summary."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from assd.demo.report import REPORT_JSON, REPORT_MD, build_report, format_seconds
from assd.demo.settings import MODEL, DemoOptions, get_budget, plan_data
from assd.demo.state import DemoState
from assd.demo.steps import STEPS, DemoContext
from assd.errors import CheckFailed, UserError
from assd.utils import atomic_write_json, atomic_write_text


def prepare_out(out: Path) -> Path:
    """Create ``out`` and make sure files can be written there (UserError otherwise)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder: pass a folder for the demo's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".assd-demo-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{out}: cannot write to --out ({exc.strerror or exc}): pass a writable folder") from None
    return out


def resolve_demo_device(device: str):
    """The torch device for ``--device`` (``auto``, ``cpu``, ``cuda[:N]``); UserError for anything else."""
    from assd.runtime.runners import resolve_device

    try:
        return resolve_device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device: use auto, cpu or cuda[:N]") from None


class _Console:
    """Step results and the summary on stdout; step details on stderr (with ``progress``); never breaking
    the active progress bars (tqdm's external write mode)."""

    def __init__(self, echo: Callable[[str], None], progress: bool):
        self.echo, self.progress = echo, progress
        self.log: list[str] = []

    def say(self, text: str) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stdout):
            self.echo(text)

    def detail(self, text: str) -> None:
        self.log.extend(text.splitlines())
        if self.progress:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> dict:
    """Train, evaluate, export, convert, (build engines,) eval-engine, bench and draw, reusing the steps
    already finished in ``options.out``; returns the report (also in ``OUT/report.json``).

    Raises ``UserError`` for bad input before any work, and ``CheckFailed`` after writing the report
    when an fp32 check failed (the ONNX export does not match PyTorch). Reduced-precision (fp16, int8)
    Δ mAP outside its tolerance is reported in the summary, not raised.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    torch_device = resolve_demo_device(options.device)
    budget = get_budget(torch_device.type, options.quick)
    plan = plan_data(options, budget)
    out = prepare_out(Path(options.out))
    state = DemoState(out, force=options.force)
    console = _Console(echo, options.progress)
    ctx = DemoContext(out, options, budget, plan, str(torch_device), console.detail)
    console.say(f"assd demo ({budget.name} budget): {MODEL} on {plan.train}, validated on {plan.val_note} -> {out}")
    steps = {}
    with tqdm(total=len(STEPS), desc="demo", unit="step", disable=not options.progress, file=sys.stderr,
              dynamic_ncols=True, leave=False) as bar:
        for number, step in enumerate(STEPS, 1):
            bar.set_postfix_str(step.title)
            key = step.key(ctx)
            entry = state.reusable(step.name, key)
            reused = entry is not None
            if not reused:
                console.log, step_started = [], time.perf_counter()
                output = step.run(ctx)
                result = {**output.result, "line": output.line, "log": console.log}
                entry = state.record(step.name, key, result, output.outputs, time.perf_counter() - step_started)
            ctx.results[step.name] = entry["result"]
            line = entry["result"]["line"]
            steps[step.name] = {"title": step.title, "reused": reused, "seconds": entry["seconds"], "line": line}
            timing = "reused" if reused else format_seconds(entry["seconds"])
            console.say(f"[{number}/{len(STEPS)}] {step.title}: {line} ({timing})")
            bar.update(1)
    report, markdown, summary = build_report(ctx, steps, time.perf_counter() - started)
    atomic_write_json(out / REPORT_JSON, report)
    atomic_write_text(out / REPORT_MD, markdown)
    console.say("")
    console.say(summary.rstrip("\n"))
    if report["checks"]["failed"]:
        raise CheckFailed(f"demo finished, but: {'; '.join(report['checks']['failed'])} (report: {out / REPORT_MD})")
    return report
