"""Preemption: SIGTERM (what cloud schedulers send before they evict a job) asks the run to stop
at the next safe point, save a checkpoint and exit; rerunning the same command resumes.

Long loops call `check()` at points every process reaches in the same order (each train step,
each inversion chunk). With one process the signal handler's flag decides; with several,
`jax.experimental.multihost_utils.reached_preemption_sync_point` does, so that every process
stops at the same point and enters the (collective) checkpoint save together.
"""

from __future__ import annotations

import contextlib
import os
import signal

import jax

EXIT_CODE = 143  # 128 + SIGTERM: the shell's code for a job ended by SIGTERM
_state = {"requested": False, "points": 0, "armed": False, "trigger": 0}


class Preempted(Exception):
    """Raised at a safe point after a preemption request."""


def request(signum=None, frame=None) -> None:
    """Ask the run to stop at its next safe point (the SIGTERM handler)."""
    _state["requested"] = True


def check() -> None:
    """A safe point: raise `Preempted` if the run was asked to stop (only while armed).

    With `DFCL_PREEMPT_AT_POINT=k` set, the k-th safe point sends this process SIGTERM (tests)."""
    if not _state["armed"]:
        return
    _state["points"] += 1
    if _state["points"] == _state["trigger"]:
        os.kill(os.getpid(), signal.SIGTERM)  # the Python handler runs before the next line
    if jax.process_count() == 1:
        stop = _state["requested"]
    else:
        from jax.experimental import multihost_utils
        stop = multihost_utils.reached_preemption_sync_point(_state["points"])
    if stop:
        raise Preempted


@contextlib.contextmanager
def handle_sigterm():
    """Within: SIGTERM requests a stop at the next safe point instead of killing the process.

    With several processes JAX's own preemption notifier (set up by `jax.distributed.initialize`)
    receives SIGTERM, so no Python handler replaces it."""
    single = jax.process_count() == 1
    previous = signal.signal(signal.SIGTERM, request) if single else None
    _state.update(requested=False, points=0, armed=True,
                  trigger=int(os.environ.get("DFCL_PREEMPT_AT_POINT", "0") or 0))
    try:
        yield
    finally:
        _state.update(armed=False, trigger=0)
        if single:
            signal.signal(signal.SIGTERM, previous)
