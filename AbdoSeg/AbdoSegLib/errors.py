"""The one exception type whose message is shown to a user as it is."""


class AbdoSegError(Exception):
    """A problem the user can act on (bad input, missing model, unwritable output).

    The message is one sentence that says what is wrong and where; the command line prints
    it without a traceback and exits with a non-zero code.
    """
