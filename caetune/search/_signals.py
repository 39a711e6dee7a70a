"""Stop signals across the series of ``Tuner.fit`` calls one search session runs."""

from __future__ import annotations

import signal
import threading
from typing import Any

from ray.tune import Callback


class StopSignals(Callback):
    """Notes a stop signal (Ctrl-C's SIGINT, Tune's SIGUSR1) during and between the session's fits.

    Tune installs its own handlers at the start of each ``Tuner.fit`` and
    ends that fit on a signal. This callback's :meth:`setup` (each fit calls
    it after that) puts a handler that notes the signal in front of Tune's;
    between fits (:meth:`between_fits`) a signal is only noted, so the
    session starts no further fit. A second Ctrl-C raises
    ``KeyboardInterrupt`` as usual. Used as a context manager, it puts back
    the handlers it found: Tune leaves its own behind, which would swallow
    the first Ctrl-C after the search.
    """

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.received = False
        self._found: dict = {}

    def __enter__(self):
        if _in_main_thread():
            self._found = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
            self.between_fits()
        return self

    def __exit__(self, *exc):
        for sig, handler in self._found.items():
            signal.signal(sig, handler)

    def between_fits(self) -> None:
        if _in_main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, self._noting(None))

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        # Tune's arguments (the fit's stopper and sample counts) are not needed: only the moment.
        if _in_main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, self._noting(signal.getsignal(sig)))

    def _noting(self, tune_handler):
        def handler(sig, frame):
            again, self.received = self.received, True
            if callable(tune_handler):  # ends the fit
                tune_handler(sig, frame)
            elif again and sig == signal.SIGINT and callable(self._found.get(sig)):
                self._found[sig](sig, frame)  # Python's: KeyboardInterrupt

        return handler

    def __getstate__(self) -> dict:
        # Tuner pickles its RunConfig; the handlers stay here.
        return {"received": self.received, "_found": {}}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
