"""StopSignals: a stop signal during or between the Tuner.fit calls is noted and ends no process."""

from __future__ import annotations

import os
import signal

import pytest

from caetune.search._signals import StopSignals


def send(sig) -> None:
    os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode


def test_a_signal_between_fits_is_noted_and_the_handlers_are_put_back():
    found = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    with StopSignals() as signals:
        assert not signals.received
        send(signal.SIGUSR1)  # its default would end the process
        assert signals.received
    assert {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS} == found


def test_during_a_fit_the_signal_is_noted_and_reaches_tunes_handler():
    caught = []
    with StopSignals() as signals:
        # What Tuner.fit does before it calls its callbacks' setup.
        signal.signal(signal.SIGUSR1, lambda sig, frame: caught.append(sig))
        signals.setup()
        send(signal.SIGUSR1)
        assert caught == [signal.SIGUSR1] and signals.received
        signals.between_fits()  # after the fit: Tune's handler, left behind, is out of the way
        send(signal.SIGUSR1)
        assert caught == [signal.SIGUSR1]


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test: an earlier test's Tuner may have left Tune's."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, found)


def test_a_second_ctrl_c_raises_keyboard_interrupt(python_sigint):
    with StopSignals() as signals:
        send(signal.SIGINT)
        assert signals.received
        with pytest.raises(KeyboardInterrupt):
            send(signal.SIGINT)
