"""User-facing errors.

Anything a user can cause (bad data, bad config, bad command line) raises `AigcError`; the CLI
prints its message and exits with status 2, never a traceback. Programming errors stay ordinary
exceptions so that they are visible."""


class AigcError(Exception):
    """An error whose message is meant for the user, with a hint on how to fix it."""


def did_you_mean(name: str, valid) -> str:
    """'unknown X' helper: list the valid names, the closest first."""
    import difflib

    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; valid: {', '.join(valid)}"


def check_choice(name: str, value, choices, where: str = "") -> None:
    """Raise "NAME must be 'a', 'b' or 'c'WHERE, got 'value'" unless value is one of `choices`."""
    if value not in choices:
        quoted = [f"'{c}'" for c in choices]
        listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        raise AigcError(f"{name} must be {listed}{where}, got '{value}'")


class NonFiniteLoss(AigcError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class Cancelled(AigcError):
    """A generation stopped on request (its client went away, or pressed stop)."""


class Interrupted(AigcError):
    """SIGINT/SIGTERM during training; a checkpoint was saved (exit status 130)."""
