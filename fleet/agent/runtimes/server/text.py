"""Turning generated token ids into streamed text: incremental detokenization and stop strings."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """vLLM's incremental detokenization: decode a small window of recent tokens twice (without and with the
    newest ones) and emit the difference. Decoding each token on its own would lose the spaces that
    SentencePiece tokenizers attach to the following word, and would split multi-byte characters; a
    window whose text ends in U+FFFD waits for the rest of its character."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        text = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""


class StopScanner:
    """Holds back only the end of the text that could begin a stop string (so one spanning deltas is still
    found, and its text never emitted); everything before goes out at once."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.hold = max((len(stop) for stop in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The text that may be sent now; sets ``stopped`` when a stop string appeared."""
        if self.stopped or not delta:
            return ""
        start = max(0, len(self.text) - self.hold)
        self.text += delta
        found = [index for stop in self.stops if (index := self.text.find(stop, start)) >= 0]
        if found:
            self.stopped = True
            end = min(found)
        else:
            end = max(self.sent, len(self.text) - self._could_start_a_stop())
        out, self.sent = self.text[self.sent:end], end
        return out

    def _could_start_a_stop(self) -> int:
        """Length of the longest end of the text that is the beginning of a stop string."""
        for size in range(min(self.hold, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def flush(self) -> str:
        """What was held back, once generation ended without a stop string."""
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
