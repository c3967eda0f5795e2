"""Reading a fairseq command line and a launcher's environment, and the error both raise.

:class:`LaunchError` is what every launch decision raises for settings that
cannot work.  The flag readers follow argparse: ``--name V`` and ``--name=V``
are the same, the last occurrence wins, and ``--device-id`` is also spelled
``--local_rank`` (fairseq's alias).  The recipes' launcher
(``examples/recipe_launch.py``) reads its command line with the same helpers.
"""

from typing import Mapping, Optional, Sequence


class LaunchError(ValueError):
    """A command line that cannot work; the message says why and what to do."""


def _names(name: str) -> Sequence[str]:
    aliases = {"--device-id": ("--device-id", "--local_rank")}
    return aliases.get(name, (name,))


def has_flag(argv: Sequence[str], name: str) -> bool:
    return any(a in _names(name) or a.split("=", 1)[0] in _names(name) for a in argv)


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of the last ``--name V`` / ``--name=V`` in ``argv`` (argparse: last wins)."""
    value = None
    for i, arg in enumerate(argv):
        key, eq, inline = arg.partition("=")
        if key in _names(name):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
    return value


def int_flag(argv: Sequence[str], name: str) -> Optional[int]:
    """:func:`flag_value` as an integer; None when the flag is absent."""
    value = flag_value(argv, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name} expects an integer, got {value!r}") from None


def env_int(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    """The integer in environment variable ``name``; ``default`` when it is unset or empty."""
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None
