"""What the command-line tools share: errors for people, on one line."""

from __future__ import annotations

import re
from collections.abc import Sequence


def one_line(text: str) -> str:
    """Collapse whitespace so an error stays on one line."""
    return " ".join(str(text).split())


def flag_error(err: BaseException, argv: Sequence[str]) -> str:
    """One line for a command-line flag that absl or ml_collections refused.

    A mistyped config field (ml_collections raises KeyError/AttributeError whose text holds
    "Did you mean ...") names the flag as typed and the suggestion; other errors are their
    message on one line.
    """
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.replace("\\n", "\n").replace("\\'", "'").strip("'\"")
    unknown = re.match(r"""['"]?([A-Za-z0-9_]+)['"]?\s*\n?""", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    if isinstance(err, (KeyError, AttributeError)) and unknown:
        field = unknown.group(1)
        flag = next(
            (a.split("=", 1)[0] for a in argv if re.search(rf"\.{re.escape(field)}(=|$)", a)),
            None,
        )
        where = f"{flag}: " if flag else ""
        hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
        return f"{where}no config field {field!r}{hint}"
    return one_line(text)
