"""The project's one error type for bad user input."""


class InputError(ValueError):
    """Bad user input (model file, data folder, flags): reported as one line, exit code 2."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of ``err``'s message (its type's name when it has none), at most ``limit``
    characters: a foreign library's error as part of a one-line :class:`InputError`."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
