"""Timeouts without a timer per connection.

Each kind of deadline (head, connect, linger, retire) has one fixed timeout, so
a dict in insertion order is also in deadline order: a sweep stops at the first
entry not yet due, and adding or removing an entry is a dict operation, cheaper
than creating and cancelling a ``TimerHandle`` for every connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Deadlines(Generic[T]):
    def __init__(self, timeout: float, on_expire: Callable[[T], None]) -> None:
        self.timeout = timeout
        self._due: dict[T, float] = {}
        self._on_expire = on_expire

    def set_timeout(self, timeout: float) -> None:
        """Change the timeout (a reload); a shorter one re-sorts what is waiting."""
        if timeout < self.timeout:
            self._due = dict(sorted(self._due.items(), key=lambda kv: kv[1]))
        self.timeout = timeout

    # ``in`` then ``del``, not ``pop(item, None)``: compiled, those two are C calls, where
    # ``pop`` with a default is a method call by name

    def add(self, item: T, now: float) -> None:
        """(Re)start ``item``'s deadline; re-adding moves it to the end."""
        due = self._due
        if item in due:
            del due[item]
        due[item] = now + self.timeout

    def discard(self, item: T) -> None:
        due = self._due
        if item in due:
            del due[item]

    def __contains__(self, item: T) -> bool:
        return item in self._due

    def __len__(self) -> int:
        return len(self._due)

    def sweep(self, now: float) -> None:
        expired = []
        for item, due in self._due.items():
            if due > now:
                break
            expired.append(item)
        for item in expired:
            del self._due[item]
            self._on_expire(item)
