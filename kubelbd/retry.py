"""Exponential backoff: how every loop in kubelbd waits before trying again."""

from __future__ import annotations


class Backoff:
    """Exponential backoff with a ceiling; reset after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial
