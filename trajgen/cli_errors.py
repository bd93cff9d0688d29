"""How every command of the project reports bad input: one line on stderr, exit code 2, no
traceback. Shared by the ``trajgen`` and ``invwnn`` command groups."""
from __future__ import annotations

import errno
import functools
import sys

import click


# Failed writes the user can fix (permissions, a full disk or quota, a read-only file system): one
# line, not a traceback. Any other OSError is a bug or a broken machine and keeps its traceback.
FIXABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class UserError(click.ClickException):
    """Bad input: printed as one line, exit code 2 like click's own usage errors."""

    exit_code = 2


def user_errors(*types: type[BaseException]):
    """Decorator turning the library's input errors ``types`` into :class:`UserError`."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except types as err:
                raise UserError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
            except OSError as err:
                if err.errno not in FIXABLE_ERRNOS:
                    raise
                where = f": {err.filename}" if err.filename else ""
                raise UserError(f"{(err.strerror or str(err)).lower()}{where}") from None
        return wrapper
    return decorate


class OneLineGroup(click.Group):
    """A click group whose usage errors are one line ("Error: ...") instead of click's three-line
    usage block, so scripts and users see the same short message for every bad input."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)
