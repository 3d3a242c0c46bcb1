"""hack/bench heap: what a running kubelbd's live heap is, by the object that holds it.

RSS says how much; this says what. The process must have been started with the hook in
hack/heapprobe (it says how if not); SIGUSR2 then runs `PROBE` in its main thread:
pymalloc's own statistics (live blocks against the arenas they keep, the gap being
fragmentation), then a walk from every instance of a kubelbd class, attributing what each of
its attributes reaches (not descending into other kubelbd instances, which are counted as
their own holders; dataclass records are counted inline), and the contents of every
`functools.lru_cache`. An object reached from two holders counts for the first. kubelbd
freezes its start-up objects (`gc.freeze`), which hides them from the walk: the probe
unfreezes, walks and freezes again. The event loop stops for the walk (seconds at 10,000
routes); nothing in it changes.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from kubefleet.fleet import proc_rss_kib

PROBE = r"""
import collections, functools, gc, os, sys, types

def _kubelbd_heap(out_dir):
    saved = os.dup(2)
    fd = os.open(os.path.join(out_dir, "pymalloc"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(fd, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    stop = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType, types.FrameType, types.CoroutineType, types.GeneratorType,
            types.AsyncGeneratorType, types.CodeType)

    def ours(o):
        m = getattr(type(o), "__module__", "")
        return isinstance(m, str) and m.startswith("kubelbd") and not isinstance(o, stop)

    def holder(o):
        return ours(o) and hasattr(o, "__dict__") and not hasattr(type(o), "__dataclass_fields__")

    seen = set()

    def reach(roots):
        total, stack = 0, list(roots)
        while stack:
            o = stack.pop()
            if id(o) in seen or isinstance(o, stop) or holder(o):
                continue
            seen.add(id(o))
            total += sys.getsizeof(o)
            try:
                stack.extend(gc.get_referents(o))
            except Exception:
                pass
        return total

    objs = gc.get_objects()
    holders = [o for o in objs if holder(o)]
    for o in holders:
        seen.update((id(o), id(o.__dict__)))
    by_class, by_attr, count = collections.Counter(), collections.Counter(), collections.Counter()
    for o in holders:
        name = type(o).__module__ + "." + type(o).__qualname__
        count[name] += 1
        for a, v in vars(o).items():
            size = reach([v])
            by_class[name] += size
            by_attr[name + "." + a] += size
    caches = collections.Counter()
    for o in objs:
        if isinstance(o, functools._lru_cache_wrapper):
            name = getattr(o, "__module__", "?") + "." + getattr(o, "__qualname__", "?")
            caches[name] += reach([r for r in gc.get_referents(o) if isinstance(r, dict)])
    with open(os.path.join(out_dir, "holders.part"), "w") as f:
        for title, table in (("holder", by_class), ("attribute", by_attr), ("lru_cache", caches)):
            for k, size in table.most_common(25 if title == "holder" else 30):
                if size >= 1 << 18:
                    f.write(f"{title}\t{k}\t{size}\t{count.get(k, '')}\n")
    os.rename(os.path.join(out_dir, "holders.part"), os.path.join(out_dir, "holders"))

gc.unfreeze()
try:
    _kubelbd_heap(OUT_DIR)
finally:
    gc.freeze()
    del _kubelbd_heap
"""


def run(pid: int) -> None:
    probe = _probe_path(pid)
    out = Path(tempfile.mkdtemp(prefix="kubelbd-heap-"))
    try:
        probe.write_text(f"OUT_DIR = {str(out)!r}\n" + PROBE)
        probe.chmod(0o600)
        rss_before = proc_rss_kib(pid) * 1024
        os.kill(pid, signal.SIGUSR2)
        holders = out / "holders"
        deadline = time.monotonic() + 600
        while not holders.exists():  # written last, whole: the walk takes seconds
            if time.monotonic() > deadline:
                raise SystemExit("no answer from the probe in 600 s: see kubelbd's log")
            time.sleep(0.5)
        _report(pid, rss_before, (out / "pymalloc").read_text(), holders.read_text())
    finally:
        probe.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


def _probe_path(pid: int) -> Path:
    """Where the process takes its probe from: it must have been started with the hook."""
    env = dict(
        kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv
    )
    if "KUBELBD_HEAP_PROBE" not in env or "heapprobe" not in env.get("PYTHONPATH", ""):
        raise SystemExit(
            f"kubelbd (pid {pid}) was started without the heap probe's hook: restart it with\n"
            "  KUBELBD_HEAP_PROBE=$PWD/.fleet/heap-probe.py "
            "PYTHONPATH=$PWD/hack/heapprobe hack/fleet restart kubelbd"
        )
    return Path(env["KUBELBD_HEAP_PROBE"])


def _report(pid: int, rss: int, pymalloc: str, holders: str) -> None:
    stats = {}
    for line in pymalloc.splitlines():
        if line.startswith("# arenas allocated current"):
            stats["arenas"] = int(line.split("=")[1].replace(",", "")) << 20
        elif line.startswith("# bytes in allocated blocks"):
            stats["live"] = int(line.split("=")[1].replace(",", ""))
    mib = 1 << 20
    arenas, live = stats.get("arenas", 0) / mib, stats.get("live", 0) / mib
    print(f"kubelbd pid {pid}: RSS {rss / mib:.0f} MiB; pymalloc arenas {arenas:.0f} MiB, "
          f"live blocks {live:.0f} MiB")  # fmt: skip
    print("\n| held by | what | MiB | instances |\n|---|---|---|---|")
    for line in holders.splitlines():
        what, name, size, n = line.split("\t")
        print(f"| {what} | `{name.removeprefix('kubelbd.')}` | {int(size) / mib:.1f} | {n} |")
