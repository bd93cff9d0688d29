"""The project's one error type for bad user input."""


class InputError(ValueError):
    """Bad user input (model file, data folder, flags): reported as one line, exit code 2."""
