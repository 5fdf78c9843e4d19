"""One error type for bad input: the CLI prints its message as one line and exits non-zero."""


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
    """The first line of an exception's message (its type name when the message is empty), cut to ``limit``."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
