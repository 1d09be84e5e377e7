"""Every status enum carries its badge colour through one base, ColouredChoices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.apps import apps
from django.db import models

from fleet.lib.choices import COLOURS, ColouredChoices

ROOT = Path(__file__).resolve().parents[2]


def subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_every_member_of_every_subclass_has_a_colour_with_a_badge():
    apps.get_models()  # every app's models (and so its status enums) imported
    enums = [cls for cls in subclasses(ColouredChoices) if cls.__module__.startswith("fleet.")]
    assert {"NodeStatus", "GpuState", "RuntimeState", "AlertSeverity", "FinishReason", "ApiKeyState",
            "RolloutStatus", "TargetStatus"} <= {cls.__name__ for cls in enums}
    css = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "static" / "fleet").glob("*.css"))
    badges = set(re.findall(r"\.badge-([a-z]+)\b", css))
    assert COLOURS <= badges, COLOURS - badges
    for cls in enums:
        for member in cls:
            assert member.colour in COLOURS, (cls.__name__, member)
        assert cls.choices == [(member.value, member.label) for member in cls]  # the colour is not stored


def test_no_status_enum_keeps_a_hand_written_colour_map():
    """A TextChoices that says colours does so through ColouredChoices, not a property of its own."""
    apps.get_models()
    hand_written = [cls.__qualname__ for cls in subclasses(models.TextChoices)
                    if cls.__module__.startswith("fleet.") and not issubclass(cls, ColouredChoices)
                    and "colour" in vars(cls)]
    assert hand_written == []


def test_a_member_without_a_colour_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"Broken\.B: write it as value, label, colour"):
        class Broken(ColouredChoices):
            A = "a", "A", "green"
            B = "b", "B"
    with pytest.raises(TypeError, match="one of amber, green, grey, purple, red"):
        class Pink(ColouredChoices):
            A = "a", "A", "pink"


def test_members_behave_as_text_choices():
    class Light(ColouredChoices):
        ON = "on", "Switched on", "green"
        OFF = "off", "Switched off", "grey"

    assert Light("on") is Light.ON and Light.ON == "on" and str(Light.OFF) == "off"
    assert Light.ON.label == "Switched on" and Light.ON.colour == "green" and Light.values == ["on", "off"]
