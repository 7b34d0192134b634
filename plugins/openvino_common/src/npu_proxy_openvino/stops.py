"""Caller stop strings, found in the streamed text rather than trusted to GenAI's output.

GenAI stops on ``stop_strings`` by itself, but with ``include_stop_str_in_output`` off
it drops the stop string from the text and its finish reason is ``STOP`` either way, so
nobody can tell which string (if any) ended the answer. The pipeline is therefore asked
to include the stop string, and :class:`StopStringFilter` cuts it off here: it streams
every piece that cannot be the start of a stop string, holds back the few characters
that might be, and on a match keeps the text before it and remembers the string.
"""

from __future__ import annotations


class StopStringFilter:
    """Streams text up to (never including) the first of ``stops`` that appears.

    Feed pieces in order with :meth:`feed`; once :attr:`hit` is set the answer is over
    and later pieces are ignored. :meth:`finish` releases what was held back when the
    generation ended without a match.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        #: The stop string that ended the text, once one has appeared.
        self.hit: str | None = None

    def feed(self, piece: str) -> str:
        """The text that is now safe to emit (possibly empty)."""
        if self.hit is not None:
            return ""
        text = self._held + piece
        found = [(text.find(stop), stop) for stop in self._stops if stop in text]
        if found:
            # The earliest match wins; on a tie, the longer string (it contains the other).
            at, stop = min(found, key=lambda item: (item[0], -len(item[1])))
            self.hit = stop
            self._held = ""
            return text[:at]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """What was held back, now known not to start a stop string."""
        held, self._held = self._held, ""
        return "" if self.hit is not None else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[len(text) - size :]):
                    longest = size
                    break
        return longest
