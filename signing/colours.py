"""Status colours and the one-letter form the `st` claim of a status token carries.

The names are the service's colours everywhere (rules, statuses, answers, load tests); the letters keep
the QR code small. Both live here so that signing, the application and the load tests share one list.
"""

from __future__ import annotations

from typing import Final, Literal

Colour = Literal["green", "yellow", "red"]

# In order of severity: a person's colour is the most severe of every reason that applies.
COLOURS: Final = ("green", "yellow", "red")
COLOUR_LETTER: Final[dict[str, str]] = {"green": "G", "yellow": "Y", "red": "R"}
# What the `st` claim may hold.
STATUS_LETTERS: Final = frozenset(COLOUR_LETTER.values())
