"""Measured latency: warm-up, many timed calls, robust statistics. Milliseconds throughout."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from adaptive_jax.models.slimmable import WidthSubnet


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    min_ms: float
    cv: float          # coefficient of variation (std / mean) of the timed calls
    repeats: int


def measure_latency(fn: Callable, *args, warmup: int = 3, repeats: int = 20,
                    min_time_s: float = 0.0) -> LatencyStats:
    """Times `fn(*args)` to completion (`block_until_ready`) after `warmup` untimed calls.

    Runs at least `repeats` calls, and more until `min_time_s` has passed.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return LatencyStats(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()),
                        float(ms.std() / ms.mean()), len(ms))


def interleaved_batch1_ms(fns: tuple[Callable, ...], args: tuple, images, rounds: int = 3,
                          calls: int = 5) -> tuple[float, ...]:
    """Batch-1 ms of each of `fns(*args, image[None])` over `images` (each image its own input,
    e.g. its own plan): per image the median of `calls`, averaged over images; the functions
    alternate image by image, and the median over `rounds` is kept, so a machine that slows down
    mid-way shifts all alike."""
    samples = [[] for _ in fns]
    for _ in range(rounds):
        per_image = [[] for _ in fns]
        for image in images:
            for i, fn in enumerate(fns):
                per_image[i].append(measure_latency(fn, *args, image[None], warmup=2,
                                                    repeats=calls).median_ms)
        for i, values in enumerate(per_image):
            samples[i].append(np.mean(values))
    return tuple(float(np.median(s)) for s in samples)


def interleaved_batch_ms(fns: dict[str, Callable], args: tuple, batches, rounds: int = 3) -> dict:
    """Median ms per call of each `fn(*args, batch)`, the functions taking turns batch by batch
    (after one compiling call each)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args, batches[0]))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for batch in batches:
            for name, fn in fns.items():
                times[name].append(measure_latency(fn, *args, batch, warmup=0, repeats=1).median_ms)
    return {name: float(np.median(t)) for name, t in times.items()}


def fastest_exact(fns: dict[str, Callable], args: tuple, batches, rounds: int = 3,
                  rtol: float = 1e-4, atol: float = 1e-4) -> tuple[str, dict]:
    """Of `fns(*args, batch)` that compute the same thing in different ways (e.g. one model's
    plans through the masked and the bucketed executor), the one that runs fastest *here*.

    Which is fastest depends on the device: on 2 CPU cores the bucketed executor saves most of
    the time of the blocks a batch's plans skip, on an H200 at CIFAR sizes it is slower than
    running every block masked (docs/design.md). So it is measured, not assumed: the outputs
    are first checked equal on `batches[0]` (a function that computes something else is an
    error naming both), then timed taking turns (`interleaved_batch_ms`). Returns (the fastest's
    name, {name: median ms per batch})."""
    if not fns:
        raise ValueError("fastest_exact needs at least one function to measure")
    reference_name, *others = fns
    reference = np.asarray(fns[reference_name](*args, batches[0]))
    for name in others:
        out = np.asarray(fns[name](*args, batches[0]))
        if out.shape != reference.shape or not np.allclose(out, reference, rtol=rtol, atol=atol):
            worst = (float(np.max(np.abs(out - reference))) if out.shape == reference.shape
                     else f"shape {out.shape} vs {reference.shape}")
            raise ValueError(f"{name!r} and {reference_name!r} give different outputs on the "
                             f"first batch (max difference {worst}); only exact alternatives can "
                             f"be chosen by speed: compare ways of running the same model and plans")
    ms = interleaved_batch_ms(fns, args, batches, rounds)
    return min(ms, key=ms.get), ms


class LatencyTableWarning(UserWarning):
    """A latency table measured on another device or software stack than this one."""


def device_signature() -> dict:
    """What a latency table is only valid for: the device, the host CPU, the versions."""
    import platform

    import flax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "host_cpu": cpu, "jax": jax.__version__, "flax": flax.__version__}


@dataclasses.dataclass
class LatencyTable:
    """Measured latency of named operating points per batch size, on one device.

    entries[name][batch] = LatencyStats. `save` writes JSON atomically; `load` warns
    (`LatencyTableWarning`) when the table was made on another device or stack, since its
    milliseconds then say little about this one.
    """

    signature: dict
    entries: dict[str, dict[int, LatencyStats]]
    created: str = ""

    def median_ms(self, name: str, batch_size: int = 1) -> float:
        if name not in self.entries:
            raise KeyError(f"no latency measured for {name!r}; the table has {sorted(self.entries)}")
        if batch_size not in self.entries[name]:
            raise KeyError(f"no latency for {name!r} at batch {batch_size}; "
                           f"measured batches: {sorted(self.entries[name])}")
        return self.entries[name][batch_size].median_ms

    def to_json(self) -> dict:
        return {"signature": self.signature, "created": self.created,
                "entries": {n: {str(b): dataclasses.asdict(s) for b, s in per.items()}
                            for n, per in self.entries.items()}}

    def save(self, path: str) -> None:
        import json
        import os
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        os.replace(tmp, path)  # readers never see a half-written table

    @classmethod
    def load(cls, path: str, check_device: bool = True) -> "LatencyTable":
        import json
        import warnings
        try:
            with open(path) as f:
                raw = json.load(f)
            entries = {n: {int(b): LatencyStats(**s) for b, s in per.items()}
                       for n, per in raw["entries"].items()}
            table = cls(raw["signature"], entries, raw.get("created", ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a latency table ({type(e).__name__}: {e})") from e
        if check_device:
            here = device_signature()
            differ = {k: (table.signature.get(k), v) for k, v in here.items()
                      if table.signature.get(k) != v}
            if differ:
                detail = ", ".join(f"{k}: table {a!r}, here {b!r}" for k, (a, b) in differ.items())
                warnings.warn(f"latency table {path} was measured elsewhere ({detail}); "
                              "re-measure it on this device", LatencyTableWarning, stacklevel=2)
        return table


def measure_table(calls: dict[str, Callable[[int], Callable[[], object]]],
                  batch_sizes=(1,), warmup: int = 3, repeats: int = 20,
                  rounds: int = 3) -> LatencyTable:
    """Times every point at every batch size. calls[name](batch) prepares inputs and returns a
    zero-argument function running one inference. The points take turns, `repeats / rounds`
    calls each per round, and each point's statistics pool its calls of every round, so a
    machine that slows down mid-way shifts every point alike."""
    import datetime
    runs = {(n, b): make(b) for n, make in calls.items() for b in batch_sizes}
    for fn in runs.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict = {key: [] for key in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            for _ in range(max(1, repeats // rounds)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times[key].append(time.perf_counter() - t0)
    entries: dict[str, dict[int, LatencyStats]] = {}
    for (name, batch), ts in times.items():
        ms = np.asarray(ts) * 1e3
        entries.setdefault(name, {})[batch] = LatencyStats(
            float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()),
            float(ms.std() / ms.mean()), len(ms))
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return LatencyTable(device_signature(), entries, created)


def subnet_latency_table(executor, widths, batch_sizes=(1,), image_shape=(32, 32, 3),
                         warmup: int = 3, repeats: int = 30, rounds: int = 3):
    """Measures every sub-net of a `SubnetExecutor` at every batch size from its executable
    (compiled first, not timed); entries are named by `WidthSubnet.name` (`measure_table`)."""
    subnets = [WidthSubnet.of(w) for w in widths]
    executor.warm_up(subnets, batch_sizes, image_shape)

    def calls(subnet):
        def at_batch(batch):
            images = np.zeros((batch, *image_shape), np.float32)
            return lambda: executor(images, subnet)
        return at_batch

    return measure_table({s.name: calls(s) for s in subnets}, batch_sizes=tuple(batch_sizes),
                         warmup=warmup, repeats=repeats, rounds=rounds)


def fastest_int8_kernels(backbone, batch: int, rounds: int = 3, calls: int = 10):
    """Which kernel runs each conv of `backbone` fastest at 8 bits, measured here: per conv shape
    (in, out, stride) at its feature size, `quantized.quantized_conv` (quantise the input,
    convolve, dequantise; the kernel quantised beforehand, as `DFSNet.prepare_weights` leaves it
    for inference) in "float" and by the integer kernels "xla" and "patches", interleaved rounds.
    Returns (kernels for `Bitwidths(kernels=...)`: the shapes whose fastest is an integer
    kernel, {shape: {kernel: median ms}})."""
    from adaptive_jax.models import quantized

    x = backbone.stem(jax.numpy.zeros((batch, 32, 32, backbone.spec.in_channels)))
    convs = {}
    for block in backbone.units():  # one input of each conv shape, at its size
        h = jax.nn.relu(jax.random.normal(jax.random.key(0), x.shape))
        convs.setdefault(quantized.conv_key(block.conv1), (block.conv1, h))
        y = jax.nn.relu(block.conv1(h))
        convs.setdefault(quantized.conv_key(block.conv2), (block.conv2, y))
        x = block(x)
    ms: dict = {}
    for shape, (conv, h) in convs.items():
        top, prepared = jax.numpy.max(h), quantized.prepare_kernel(conv.kernel[...], 8)
        fns = {kernel: jax.jit(lambda h, prepared, kernel=kernel, conv=conv: quantized.quantized_conv(
            conv, h, 8, top, kernel, prepared)) for kernel in ("float", "xla", "patches")}
        for fn in fns.values():
            jax.block_until_ready(fn(h, prepared))
        times = {kernel: [] for kernel in fns}
        for _ in range(rounds):
            for kernel, fn in fns.items():
                times[kernel].append(measure_latency(fn, h, prepared, warmup=0,
                                                     repeats=calls).median_ms)
        ms[shape] = {kernel: float(np.median(t)) for kernel, t in times.items()}
    kernels = tuple((shape, min(t, key=t.get)) for shape, t in ms.items()
                    if min(t, key=t.get) != "float")
    return kernels, ms
