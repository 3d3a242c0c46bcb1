"""hack/bench heap's hook, loaded only by a process started with hack/heapprobe first on its
PYTHONPATH and KUBELBD_HEAP_PROBE naming a file: SIGUSR2 then runs that file in the main
thread (where kubelbd's event loop runs, so nothing else moves while it walks the heap).

A signal instead of gdb: gdb's call into the process needs ptrace to write the thread's
extended register state, which some kernels and sandboxes refuse ("Couldn't write extended
state status"), and its attach paused kubelbd for about 10 s.
"""

import os
import signal
import traceback

_PROBE = os.environ.get("KUBELBD_HEAP_PROBE")


def _run(signum: int, frame: object) -> None:
    assert _PROBE is not None
    try:
        with open(_PROBE) as f:
            exec(compile(f.read(), _PROBE, "exec"), {"__name__": "kubelbd_heap_probe"})
    except Exception:
        traceback.print_exc()


if _PROBE:
    signal.signal(signal.SIGUSR2, _run)
