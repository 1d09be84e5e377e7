"""Statuses that carry their badge colour: ``ONLINE = "online", "Online", "green"``.

A ``ColouredChoices`` member is written as value, label, colour; the colour is kept off the stored value
(the database and the migrations see plain ``TextChoices``) and read as ``member.colour``. A member
without a colour, or with one the stylesheets have no badge for, fails when the class is defined.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.enums import ChoicesType

# The badge-<colour> classes of static/fleet/*.css.
COLOURS = frozenset({"green", "amber", "red", "grey", "purple"})


class ColouredChoicesType(ChoicesType):
    def __new__(metacls, classname: str, bases: tuple[type, ...], classdict: Any, **kwds: Any):
        colours: dict[str, str] = {}
        for key in classdict._member_names:
            value = classdict[key]
            if not (isinstance(value, tuple) and len(value) == 3 and value[2] in COLOURS):
                raise TypeError(f"{classname}.{key}: write it as value, label, colour (one of "
                                f"{', '.join(sorted(COLOURS))}), not {value!r}")
            colours[key] = value[2]
            dict.__setitem__(classdict, key, value[:2])  # as TextChoices expects (bypasses Enum's re-use check)
        cls = super().__new__(metacls, classname, bases, classdict, **kwds)
        for key, member in cls.__members__.items():
            member._colour_ = colours[key]
        return cls


class ColouredChoices(models.TextChoices, metaclass=ColouredChoicesType):
    """A status enum whose members carry the colour of their badge."""

    @property
    def colour(self) -> str:
        return self._colour_
