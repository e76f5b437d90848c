"""The one exception type users see: a message that names the problem and the fix."""


class BonsaiError(ValueError):
    """Bad input (checkpoint, option, artifact). The CLI prints it on one line and exits with code 2."""
