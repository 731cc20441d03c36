"""Stopping a training run cleanly: SIGINT/SIGTERM become a flag the loop checks between steps."""

from __future__ import annotations

import signal


class SignalFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (never mid-update); a second signal
    raises KeyboardInterrupt at once, which `fit` turns into Interrupted."""

    def __init__(self):
        self.signum = None
        self.second = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.second = signum
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
