"""The soak's usage check: one row per AI answer that must have one, matched by request id."""

from __future__ import annotations

from collections import Counter

from tests.soak import Tally, row_problems


def tally(*answers: tuple[str, str, int]) -> Tally:
    counted = Tally()
    for request_id, kind, status in answers:
        counted.count(kind, status, request_id)
    return counted


def test_every_answer_with_its_row_passes_and_a_revoked_keys_401_needs_none() -> None:
    answers = tally(("soak-1", "chat", 200), ("soak-2", "embeddings", 400), ("soak-3", "chat", 401))
    assert row_problems(answers, Counter({"soak-1": 1, "soak-2": 1})) == []


def test_a_missing_row_is_named_with_its_kind_and_status() -> None:
    answers = tally(("soak-1", "chat", 200), ("soak-2", "stream dropped mid-way", 200))
    (problem,) = row_problems(answers, Counter({"soak-1": 1}))
    assert problem == "1 AI answers have no usage row: soak-2 (stream dropped mid-way, 200)"


def test_a_doubled_row_and_a_row_for_a_refused_answer_are_reported() -> None:
    answers = tally(("soak-1", "chat", 200), ("soak-3", "chat", 401))
    problems = row_problems(answers, Counter({"soak-1": 2, "soak-3": 1}))
    assert problems == [
        "1 requests have more than one usage row: soak-1",
        "1 usage rows match no AI answer that should have one: soak-3",
    ]
