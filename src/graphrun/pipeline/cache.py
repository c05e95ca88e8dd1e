"""A stage's output cache: a bounded LRU map from a caller's key (an observation id) to stage outputs.

The prefix of a policy depends on the observation only, so a caller that acts twice on one observation
(or retries) skips the prefix stage. Entries hold copies, never the runner's outputs themselves: those
alias static buffers that the next replay overwrites. The bound is a count of entries (every entry of one
stage has the same size), so memory is max_entries times one output.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from graphrun.errors import ConfigError


@dataclass(slots=True)
class CacheStats:
    """Plain counters, read by the metrics collector at scrape time."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0


class OutputCache:
    """Least-recently-used outputs by key, at most `max_entries`; hits, misses and evictions counted."""

    def __init__(self, max_entries: int) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"a stage cache needs max_entries >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, fits: Callable[[Any], bool] | None = None) -> Any | None:
        """The outputs stored under `key` (now the most recent), or None; counts a hit or a miss.
        fits: a stored value it refuses is a miss (a batch of another size stored under the same key)."""
        value = self._entries.get(key)
        if value is None or (fits is not None and not fits(value)):
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store `value` under `key`, evicting the least recently used entry beyond the bound."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)

    def clear(self) -> None:
        """Drop every entry (counters stay)."""
        self._entries.clear()
        self.stats.entries = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
