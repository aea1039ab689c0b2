"""Topic patterns and the trie index, against a naive reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentmesh._private.pubsub.topics import TopicTrie, check_pattern, check_topic


def naive_match(pattern: list[str], topic: list[str]) -> bool:
    """Reference semantics: '*' is one segment, '**' any number (zero included)."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(naive_match(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and naive_match(rest, topic[1:])


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.**", "a", True),
        ("a.**", "a.b.c", True),
        ("**", "x.y", True),
        ("**.z", "z", True),
        ("**.z", "x.y.z", True),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b.c", False),
        ("*.*", "a", False),
    ],
)
def test_pattern_semantics(pattern: str, topic: str, expected: bool) -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, 1, pattern)
    assert (trie.match(topic) == [pattern]) is expected
    assert naive_match(pattern.split("."), topic.split(".")) is expected


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", " a", "a.b*"])
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_pattern(bad)


def test_topics_refuse_wildcards() -> None:
    with pytest.raises(ValueError, match="patterns only"):
        check_topic("a.*")
    assert check_topic("a.b") == ["a", "b"]


segment = st.sampled_from(["a", "b", "c"])
pattern_segment = st.sampled_from(["a", "b", "c", "*", "**"])
patterns = st.lists(pattern_segment, min_size=1, max_size=4).map(".".join)
topics = st.lists(segment, min_size=1, max_size=5).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=12, unique=True), topics)
def test_trie_matches_exactly_what_the_reference_matches(ps: list[str], topic: str) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for key, pattern in enumerate(ps):
        trie.add(pattern, key, pattern)
    expected = [p for p in ps if naive_match(p.split("."), topic.split("."))]
    assert trie.match(topic) == expected  # each once, in insertion order


@settings(max_examples=100, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=12, unique=True), st.data())
def test_removing_prunes_back_to_what_remains(ps: list[str], data: st.DataObject) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for key, pattern in enumerate(ps):
        trie.add(pattern, key, pattern)
    gone = data.draw(st.sets(st.sampled_from(range(len(ps)))))
    for key in gone:
        assert trie.remove(ps[key], key)
        assert not trie.remove(ps[key], key)
    left = {p for k, p in enumerate(ps) if k not in gone}
    assert set(trie.patterns()) == left
    assert len(trie) == len(left)
