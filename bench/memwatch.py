"""Anonymous resident memory of this process (RssAnon), for the benches: a mapped file's pages,
which the kernel can drop, are not in it, so it is what a load or a patch really costs."""

from __future__ import annotations

import threading
import time


def anon_bytes() -> int:
    """This process's RssAnon now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakAnon:
    """The highest `anon_bytes` while the block runs, sampled every millisecond."""

    def __enter__(self) -> PeakAnon:
        self.peak, self._stop = anon_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())
