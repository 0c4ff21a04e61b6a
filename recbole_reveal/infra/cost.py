"""The cost of a run (paper Table 7): wall-clock seconds per named stage and the peak memory.

:class:`CostMeter` accumulates seconds per stage name (``with meter.stage("train"):`` or
``meter.add("fve_encode", seconds)``), can time every call of a method while a block runs
(``with meter.timing(trainer, "_train_epoch", "train"):``), and reads the peak memory of the run:

* CPU: the process's peak resident set size. On Linux the kernel's high-water mark (``VmHWM`` in
  ``/proc/self/status``) is reset when the meter starts (writing ``5`` to ``/proc/self/clear_refs``),
  so the peak is the run's own (``peak_rss_scope: run``); elsewhere it is ``ru_maxrss``, the
  process's peak since it started (``peak_rss_scope: process``).
* GPU: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the run's device, reset when
  the meter starts; ``null`` when the run is not on a CUDA device.
* Per stage, once the memory window is open: the peak RSS while the stage ran
  (``peak_rss_mb_by_stage``, the maximum over its calls). On Linux the mark is reset when a stage
  starts, after folding it into every open stage and the run's peak, so each stage's peak is its own
  and the run's peak is unchanged.

:meth:`CostMeter.report` gives a JSON-ready dict (``<stage>_s`` per stage, ``calls`` per stage,
the memory readings, and any context passed in), :func:`format_cost` the table the run logs, and
:func:`write_cost` writes it atomically. ``run_recbole_reveal`` writes it beside RecBole's checkpoint
as ``<checkpoint_dir>/<model>-<time>.cost.json`` (:func:`cost_path`). See docs/cost-and-heatmaps.md.
"""

import os
import re
import resource
import sys
import time
from contextlib import contextmanager

from recbole_reveal.infra.files import write_json_atomic

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
MB = 2.0 ** 20


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("_s"):
        raise ValueError(f"a cost stage name is a word of letters, digits and '_' not ending in '_s' "
                         f"(the report adds the '_s'); got {name!r}")


def reset_peak_rss():
    """Reset this process's peak-RSS mark (Linux ``clear_refs``); True when it was reset."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """This process's peak resident set size in MiB: ``VmHWM`` on Linux (resettable, see
    :func:`reset_peak_rss`), otherwise ``ru_maxrss`` (kilobytes on Linux, bytes on macOS)."""
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / MB if sys.platform == "darwin" else maxrss * 1024 / MB


def _cuda_device(device):
    """``device`` as a CUDA ``torch.device`` when it is one and CUDA is usable, else None."""
    import torch

    if device is None or not torch.cuda.is_available():
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


class CostMeter:
    """Seconds per named stage and the run's peak memory.

    Args:
        clock: a monotonic clock in seconds (``time.perf_counter``; tests inject their own).
    """

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._seconds = {}      # stage -> accumulated seconds, in order of first use
        self._calls = {}        # stage -> number of timed blocks / add() calls
        self._open = {}         # stage -> how many stage() blocks of that name are open
        self.rss_scope = "process"
        self._window = False    # start_memory() was called: stages record their peak RSS
        self._stack = []        # [name, peak MiB] of the open stages, outermost first
        self._stage_peaks = {}  # stage -> peak RSS MiB over its calls
        self._run_peak = 0.0    # the run's peak folded in before each reset of the mark

    # ---------------------------------------------------------------- time
    @contextmanager
    def stage(self, name):
        """Time the block and add it to ``name``. Blocks of different names nest (an outer stage
        includes its inner ones); a block re-entered under a name that is already open (a timed
        method calling itself through ``super()``) is counted once, by the outermost block. The time
        is recorded also when the block raises."""
        _check_name(name)
        depth = self._open.get(name, 0)
        self._open[name] = depth + 1
        self._seconds.setdefault(name, 0.0)     # report order = order of first start
        self._calls.setdefault(name, 0)
        if depth == 0 and self._window:
            self._fold_peak(reset=True)
            self._stack.append([name, 0.0])
        start = self._clock()
        try:
            yield
        finally:
            self._open[name] = depth
            if depth == 0:
                self.add(name, self._clock() - start)
                if self._window:
                    self._fold_peak()
                    _, peak = self._stack.pop()
                    self._stage_peaks[name] = max(self._stage_peaks.get(name, 0.0), peak)

    def add(self, name, seconds, calls=1):
        """Add ``seconds`` measured elsewhere to stage ``name`` (e.g. a stage timed by the FVE loop)."""
        _check_name(name)
        seconds = float(seconds)
        if not seconds >= 0:
            raise ValueError(f"cost stage {name!r}: seconds must be >= 0, got {seconds!r}")
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds
        self._calls[name] = self._calls.get(name, 0) + int(calls)

    @contextmanager
    def timing(self, obj, method, name):
        """Inside the block, every call of ``obj.method`` is timed as stage ``name``. The wrapper is
        an instance attribute shadowing the bound method and is removed afterwards; an object without
        ``method`` is left alone (the stage then does not appear)."""
        _check_name(name)
        original = getattr(obj, method, None)
        if original is None:
            yield
            return
        own = method in vars(obj)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(obj, method, timed)
        try:
            yield
        finally:
            if own:
                setattr(obj, method, original)
            else:
                delattr(obj, method)

    def seconds(self, name):
        return self._seconds.get(name, 0.0)

    def calls(self, name):
        return self._calls.get(name, 0)

    # ---------------------------------------------------------------- memory
    def _fold_peak(self, reset=False):
        """Fold the current peak-RSS mark into the open stages and the run; then optionally reset it."""
        peak = peak_rss_mb()
        self._run_peak = max(self._run_peak, peak)
        for entry in self._stack:
            entry[1] = max(entry[1], peak)
        if reset and self.rss_scope == "run":
            reset_peak_rss()

    def start_memory(self):
        """Open the memory window: reset the process's peak-RSS mark (where the OS allows it) and
        the peak counters of every visible CUDA device; from now on stages record their peak RSS."""
        import torch

        self.rss_scope = "run" if reset_peak_rss() else "process"
        self._window, self._run_peak, self._stage_peaks = True, 0.0, {}
        # before CUDA's lazy initialisation there are no counters to reset (and resetting them raises
        # "Invalid device argument", seen on an H200); they start at zero when CUDA initialises
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for k in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(k)

    def memory(self, device=None):
        """Peak memory since :meth:`start_memory`: ``peak_rss_mb``, ``peak_rss_scope`` and, for a CUDA
        ``device``, ``peak_gpu_mb`` (allocated by tensors) and ``peak_gpu_reserved_mb`` (held by
        PyTorch's allocator, close to what nvidia-smi shows); ``None`` for a CPU run."""
        import torch

        gpu = _cuda_device(device)
        return {
            "peak_rss_mb": round(max(peak_rss_mb(), self._run_peak), 1),
            "peak_rss_scope": self.rss_scope,
            "peak_gpu_mb": None if gpu is None else round(torch.cuda.max_memory_allocated(gpu) / MB, 1),
            "peak_gpu_reserved_mb": None if gpu is None else round(torch.cuda.max_memory_reserved(gpu) / MB, 1),
        }

    # ---------------------------------------------------------------- report
    def report(self, device=None, **context):
        """JSON-ready dict: ``context`` (model, dataset, ...) and ``device``, ``<stage>_s`` per stage
        (ms precision), ``calls`` per stage, then :meth:`memory` for ``device``."""
        out = dict(context)
        if device is not None:
            out["device"] = str(device)
        out.update({f"{name}_s": round(s, 3) for name, s in self._seconds.items()})
        out["calls"] = dict(self._calls)
        out.update(self.memory(device))
        if self._window:
            out["peak_rss_mb_by_stage"] = {k: round(v, 1) for k, v in self._stage_peaks.items()}
        return out


def table7(report):
    """The report in the columns of the paper's Table 7: training time without FVE (``fit``: the
    backbone's training runs, all of them in an FVE loop), the FVE overhead (every ``fve_*`` stage),
    their total (hours), the test inference time of one pass over the test users (s) and the peak
    memory (GB: the GPU's reserved peak on a GPU run, else the RSS)."""
    fit = report.get("fit_s", 0.0)
    fve = sum(v for k, v in report.items() if k.startswith("fve_") and k.endswith("_s"))
    gpu = report.get("peak_gpu_reserved_mb")
    inference = report.get("test_inference_s")
    passes = max(1, report.get("calls", {}).get("test_inference", 1))
    return {"train_wo_fve_h": fit / 3600, "fve_h": fve / 3600, "total_h": (fit + fve) / 3600,
            "inference_s": None if inference is None else inference / passes,
            "memory_gb": (gpu if gpu is not None else report["peak_rss_mb"]) / 1024,
            "memory_of": "gpu" if gpu is not None else "rss"}


def format_cost(report, title="run cost"):
    """The report as a small text table: one row per stage (seconds, calls), then memory."""
    calls, peaks = report.get("calls", {}), report.get("peak_rss_mb_by_stage") or {}
    stages = [k[:-2] for k in report if k.endswith("_s") and isinstance(report[k], (int, float))]
    width = max([len(s) for s in stages] + [len("stage")])
    context = ", ".join(f"{k}={report[k]}" for k in report
                        if not k.endswith("_s") and k != "calls" and not k.startswith("peak_"))
    head = f"  {'stage':<{width}}  {'seconds':>10}  {'calls':>5}" + ("  peak RSS MiB" if peaks else "")
    lines = [title] + ([f"  {context}"] if context else []) + [head]
    lines += [f"  {s:<{width}}  {report[s + '_s']:>10.3f}  {calls.get(s, ''):>5}"
              + (f"  {peaks[s]:>12.1f}" if s in peaks else "") for s in stages]
    lines.append(f"  peak RSS {report['peak_rss_mb']:.1f} MiB ({report['peak_rss_scope']})")
    if report.get("peak_gpu_mb") is not None:
        lines.append(f"  peak GPU {report['peak_gpu_mb']:.1f} MiB allocated, "
                     f"{report['peak_gpu_reserved_mb']:.1f} MiB reserved")
    row = table7(report)
    inference = "-" if row["inference_s"] is None else f"{row['inference_s']:.1f} s"
    lines.append(f"  Table 7: training w/o FVE {row['train_wo_fve_h']:.4f} h, FVE {row['fve_h']:.4f} h, "
                 f"total {row['total_h']:.4f} h; inference {inference}; "
                 f"memory {row['memory_gb']:.2f} GB ({row['memory_of']})")
    return "\n".join(lines)


def cost_path(checkpoint_file):
    """Where a run's cost goes: beside its checkpoint, ``<name>.pth`` -> ``<name>.cost.json``."""
    root, ext = os.path.splitext(checkpoint_file)
    return (root if ext == ".pth" else checkpoint_file) + ".cost.json"


def write_cost(path, report):
    """Write ``report`` as JSON, atomically."""
    return write_json_atomic(path, report)
