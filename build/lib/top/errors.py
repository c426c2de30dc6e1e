"""The one exception type that the command line turns into a one-sentence error."""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown task, a bad flag.

    The message is one sentence that names the input and the fix; the command line
    prints it without a traceback and exits with status 2.
    """
