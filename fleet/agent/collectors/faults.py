"""Fault injection for the simulated collector: ``--fault lost:gpu=3@30s``, ``xid:79``, ``ecc``, ``overheat``.

Grammar: ``KIND[:PARAM[,PARAM...]][@DELAY]`` where PARAM is ``gpu=N`` or, for ``xid``, the XID code;
DELAY is seconds after the agent starts (``30``, ``30s``, ``2m``). Defaults: GPU 0, XID 79, at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("lost", "xid", "ecc", "overheat")
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)([sm]?)$")
OVERHEAT_C = 96.0


@dataclass(frozen=True)
class Fault:
    kind: str
    gpu: int = 0
    after: float = 0.0
    code: int = 79

    def active(self, elapsed: float) -> bool:
        return elapsed >= self.after


def parse_fault(text: str) -> Fault:
    """Parse one ``--fault`` value; ValueError names the part that is wrong and the accepted forms."""
    spec, _, delay_text = text.strip().partition("@")
    kind, _, params = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"fault {text!r}: kind must be one of {', '.join(KINDS)} (e.g. lost:gpu=3@30s)")
    after = 0.0
    if delay_text:
        match = _DELAY.match(delay_text)
        if not match:
            raise ValueError(f"fault {text!r}: delay {delay_text!r} must be seconds such as 30, 30s or 2m")
        after = float(match.group(1)) * (60 if match.group(2) == "m" else 1)
    gpu, code = 0, 79
    for param in filter(None, params.split(",")):
        key, sep, value = param.partition("=")
        if sep and key == "gpu" and value.isdigit() and int(value) < 1024:
            gpu = int(value)
        elif not sep and kind == "xid" and param.isdigit() and 0 < int(param) < 1000:
            code = int(param)
        else:
            raise ValueError(f"fault {text!r}: parameter {param!r} must be gpu=N" +
                             (" or an XID code such as 79" if kind == "xid" else ""))
    return Fault(kind=kind, gpu=gpu, after=after, code=code)
