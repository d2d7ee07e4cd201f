"""What the benchmarks share: timing training steps and beam search, peak memory growth, fresh processes,
and medians with their spread."""
import functools
import multiprocessing as mp
import os
import statistics
import time

import torch


def status_mb(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak resident set size
        f.write("5")


def set_threads():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))


def training_step(model, batch, before_step=None):
    """A training step of `model` on `batch` (forward, cross-entropy against the decoder input, backward, Adam
    on the trainable parameters), as a function; `before_step()`, if given, starts every step."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = batch["prev_output_tokens"]

    def step():
        if before_step is not None:
            before_step()
        logits = model(**batch)[0]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_steps(model, batch, steps, before_step=None):
    """Median time and peak RSS growth of `steps` training_step()s after a warm-up one (`before_step` timed
    with each)."""
    step = training_step(model, batch, before_step)
    step()  # warm-up: optimizer state allocated, caches built
    reset_peak_rss()
    before = status_mb("VmRSS")
    times, cpu = timed(step, steps)
    peak = status_mb("VmHWM")
    params = list(model.parameters())  # tied weights once
    return dict(step_ms=times, step_cpu_ms=cpu, mem_growth_mb=peak - before, peak_rss_mb=peak,
                trainable=sum(p.numel() for p in params if p.requires_grad), total=sum(p.numel() for p in params))


def timed(fn, calls):
    """Median wall-clock and CPU milliseconds of `calls` calls of fn(). The CPU time (all the process's threads)
    is the figure a loaded machine disturbs least: with one thread it is the work itself, wherever it waited."""
    wall, cpu = [], []
    for _ in range(calls):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


@torch.no_grad()
def timed_beam(generate, steps) -> dict:
    """Median wall-clock and CPU milliseconds of `generate()` over `steps` calls after a warm-up one."""
    generate()
    wall, cpu = timed(generate, steps)
    return dict(beam5_ms=wall, beam5_cpu_ms=cpu)


def reports_errors(worker):
    """A worker for run(): an exception is also put on its queue (its last argument) as {"error": ...}, so that
    the parent stops with the message instead of waiting for a result."""
    @functools.wraps(worker)
    def wrapped(*args):
        try:
            return worker(*args)
        except BaseException as e:  # noqa: BLE001
            args[-1].put(dict(error=f"{type(e).__name__}: {e}"))
            raise
    return wrapped


def run(fn, *args):
    """fn(*args, queue) in a fresh spawned process; its result, or SystemExit with the worker's error."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise SystemExit(f"{fn.__name__} failed: {out['error']}")
    return out


def median(values):
    return statistics.median(values), min(values), max(values)


def shown(values, digits=0):
    m, lo, hi = median(values)
    return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def ratio(a, b):
    """Median of the paired ratios a_i / b_i, with their range."""
    r = [x / y for x, y in zip(a, b)]
    m, lo, hi = median(r)
    return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"
