"""Topic names, patterns, and `TopicTrie`: the index that matches one to the other.

Topics are dot-separated segments (``market.eu.ticks``). In a pattern, a ``*``
segment matches exactly one segment and a ``**`` segment matches any number of them,
zero included (``market.**`` matches ``market`` and ``market.eu.ticks``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["TopicTrie", "check_pattern", "check_topic"]

T = TypeVar("T")


def _segments(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise ValueError(f"a {what} must be a non-empty string, got {text!r}")
    segments = text.split(".")
    if any(not s or s != s.strip() for s in segments):
        raise ValueError(f"invalid {what} {text!r}: empty segment or surrounding spaces")
    return segments


def check_topic(topic: str) -> list[str]:
    """The segments of a topic to publish on; wildcards are refused."""
    segments = _segments(topic, "topic")
    if any("*" in s for s in segments):
        raise ValueError(f"cannot publish on {topic!r}: '*' belongs in patterns only")
    return segments


def check_pattern(pattern: str) -> list[str]:
    """The segments of a subscription pattern; ``*``/``**`` only as whole segments."""
    segments = _segments(pattern, "pattern")
    for s in segments:
        if "*" in s and s not in ("*", "**"):
            raise ValueError(f"invalid pattern {pattern!r}: use '*' or '**' as a whole segment")
    return segments


class _Node(Generic[T]):
    __slots__ = ("children", "globstar", "star", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.globstar: _Node[T] | None = None
        self.values: dict[int, T] = {}

    def empty(self) -> bool:
        return not (self.children or self.star or self.globstar or self.values)


class TopicTrie(Generic[T]):
    """Values stored under patterns; `match` finds those whose pattern matches a topic.

    A lookup walks only the branches the topic can follow (literal segment, ``*``,
    ``**``), so its cost grows with the number of matching patterns, not with the
    number stored. Values are returned in the order they were added.
    """

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, pattern: str, key: int, value: T) -> None:
        node = self._root
        for segment in check_pattern(pattern):
            node = self._child(node, segment)
        if key not in node.values:
            self._size += 1
        node.values[key] = value

    @staticmethod
    def _child(node: _Node[T], segment: str) -> _Node[T]:
        if segment == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        if segment == "**":
            if node.globstar is None:
                node.globstar = _Node()
            return node.globstar
        child = node.children.get(segment)
        if child is None:
            child = node.children[segment] = _Node()
        return child

    def remove(self, pattern: str, key: int) -> bool:
        """Remove one value; prune the branches left empty. True if it was there."""
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        for segment in check_pattern(pattern):
            assert node is not None
            path.append((node, segment))
            if segment == "*":
                node = node.star
            elif segment == "**":
                node = node.globstar
            else:
                node = node.children.get(segment)
            if node is None:
                return False
        if node is None or node.values.pop(key, None) is None:
            return False
        self._size -= 1
        for parent, segment in reversed(path):
            if not node.empty():
                break
            if segment == "*":
                parent.star = None
            elif segment == "**":
                parent.globstar = None
            else:
                del parent.children[segment]
            node = parent
        return True

    def match(self, topic: str) -> list[T]:
        """Values whose pattern matches ``topic``, each once, in insertion order."""
        found: dict[int, T] = {}
        self._walk(self._root, check_topic(topic), 0, found)
        return [found[k] for k in sorted(found)]

    def _walk(self, node: _Node[T], segments: list[str], i: int, found: dict[int, T]) -> None:
        globstar = node.globstar
        if globstar is not None:
            for j in range(i, len(segments) + 1):  # '**' eats zero or more segments
                self._walk(globstar, segments, j, found)
        if i == len(segments):
            found.update(node.values)
            return
        child = node.children.get(segments[i])
        if child is not None:
            self._walk(child, segments, i + 1, found)
        if node.star is not None:
            self._walk(node.star, segments, i + 1, found)

    def all(self) -> list[T]:
        """Every value stored."""
        found: list[T] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.extend(node.values.values())
            stack.extend(node.children.values())
            stack.extend(n for n in (node.star, node.globstar) if n is not None)
        return found

    def patterns(self) -> Iterator[str]:
        """Every pattern that holds at least one value."""
        yield from self._patterns(self._root, [])

    def _patterns(self, node: _Node[T], prefix: list[str]) -> Iterator[str]:
        if node.values:
            yield ".".join(prefix)
        for segment, child in node.children.items():
            yield from self._patterns(child, [*prefix, segment])
        if node.star is not None:
            yield from self._patterns(node.star, [*prefix, "*"])
        if node.globstar is not None:
            yield from self._patterns(node.globstar, [*prefix, "**"])
