"""User-facing errors: each names the problem and what to do about it."""


class ECFusionError(Exception):
    """A problem with the user's input or set-up (bad file, unknown task, missing weights...).

    The command line prints the message without a traceback and exits with ``exit_code``.
    """

    exit_code = 2


class WeightsError(ECFusionError):
    """Missing, corrupt or mismatched network weights."""

    exit_code = 3


class CancelledError(ECFusionError):
    """The user cancelled a run; nothing was written."""

    exit_code = 130
