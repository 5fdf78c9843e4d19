"""One error type for bad input: the CLI prints its message as one line and exits non-zero."""

from contextlib import contextmanager


class SafetyLabError(ValueError):
    """A user-facing error. The message names the field and the problem, on one line."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def check(condition: bool, field: str, problem: str) -> None:
    """Raise SafetyLabError(field, problem) unless condition holds."""
    if not condition:
        raise SafetyLabError(field, problem)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (MLflow's `.message` where it has one; the type name when
    the message is empty), cut to ``limit``."""
    text = str(getattr(exc, "message", None) or exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


# ---------------------------------------------------------------- interrupts that survive a library's `except`
_INTERRUPTED: list[int] = []  # the signal numbers received; read by `raise_if_interrupted`


def note_interrupt(signum: int) -> None:
    """Record a Ctrl-C or SIGTERM (called by the CLI's signal handler, which then raises KeyboardInterrupt)."""
    _INTERRUPTED.append(signum)


_DEFERRED: list[bool] = []  # non-empty while a section that must not be cut in half runs


def interrupt_now() -> bool:
    """Whether a signal arriving now should raise at once (the CLI's handler asks): not inside `interrupts_deferred`."""
    return not _DEFERRED


@contextmanager
def interrupts_deferred():
    """A Ctrl-C or SIGTERM arriving inside is recorded and raised on leaving, once the section is done: closing an
    MLflow run is not cut in half, leaving it RUNNING (a launcher sends SIGTERM to every rank when one rank dies,
    often while the survivors are already closing their runs FAILED)."""
    before = len(_INTERRUPTED)
    _DEFERRED.append(True)
    try:
        yield
    finally:
        _DEFERRED.pop()
    if len(_INTERRUPTED) > before and interrupt_now():
        raise KeyboardInterrupt(f"signal {_INTERRUPTED[-1]}")


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt again if a signal arrived: a library that caught the first one (to clean up) and went
    on must not turn an interrupted study into a finished one. Called at every trial start and training step."""
    if _INTERRUPTED:
        raise KeyboardInterrupt(f"signal {_INTERRUPTED[-1]}")


def clear_interrupts() -> None:
    """Forget earlier signals (a new command in the same process starts uninterrupted)."""
    _INTERRUPTED.clear()
