"""One exception type for every problem the user can fix: the CLI prints its message as one line."""


class LvmError(Exception):
    """A user-facing error: bad input, missing file, incompatible artefacts.

    The message is a single line that says what was expected, what was found and what to do.
    Entry points print it and exit non-zero; nothing half-written is left behind.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
