"""The one exception type that the command line turns into a one-sentence error, and how it quotes a value
or an error's message."""

import reprlib


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown task, a bad flag.

    The message is one sentence that names the input and the fix; the command line
    prints it without a traceback and exits with status 2.
    """


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 3
_BRIEF.maxstring = 60
_BRIEF.maxother = 60
_BRIEF.maxlong = 40


def brief(value) -> str:
    """A short ``repr`` of a value read from a file, for a message: bounded in length and depth, so a
    list nested 50,000 deep or a 5,000-digit number is quoted in a few characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a whole number of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _BRIEF.repr(value)
    except Exception:  # noqa: BLE001 - a hostile object's own repr may fail in any way
        return f"an object of type {type(value).__name__}"


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "…" where it was cut, so a
    message quoting a library's long error never ends mid-word."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 1)]
    if not text[len(cut)].isspace():  # the cut falls inside a word: drop that word's start
        space = cut.rfind(" ")
        if space > 0:
            cut = cut[:space]
    return cut.rstrip(" ,;:.(") + "…"


def error_detail(error: BaseException, limit: int = 200) -> str:
    """The line of an exception's message that says what went wrong, without a library's boilerplate."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {clip(lines[0], limit)}" if lines else type(error).__name__


# This project's distribution (PyPI's `top` is an unrelated package), installed from a clone.
DISTRIBUTION = "top-pruning"


def install_hint(extra: str = "") -> str:
    """How to install this project with an extra, for a message: `pip install -e '.[onnx]'` in a clone."""
    target = f".[{extra}]" if extra else "."
    return f"pip install -e '{target}' in a clone of this project ({DISTRIBUTION})"
