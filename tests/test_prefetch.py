"""`lines.prefetch`: items made in a background thread, how many are alive at once, and early stops."""

import threading
import time

import pytest

from amplitude_assets.lines import prefetch


class Counted:
    """Items 0..n-1, recording how many were made before the caller took each one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.made = 0
        self.closed = False
        self.lock = threading.Lock()

    def __iter__(self):
        try:
            for i in range(self.n):
                with self.lock:
                    self.made += 1
                yield i
        finally:
            self.closed = True


def ahead_of_the_caller(handoff: bool) -> list[int]:
    """For each item the caller takes: how many items were made beyond it, after a pause."""
    items = Counted(6)
    ahead = []
    for i in prefetch(iter(items), handoff=handoff):
        time.sleep(0.3)  # the caller's work: the producer has all the time it wants
        with items.lock:
            ahead.append(items.made - (i + 1))
    return ahead


def test_with_handoff_the_producer_makes_only_the_next_item():
    assert ahead_of_the_caller(handoff=True) == [1, 1, 1, 1, 1, 0]


def test_without_handoff_a_further_item_waits_in_the_queue():
    assert ahead_of_the_caller(handoff=False) == [2, 2, 2, 2, 1, 0]


@pytest.mark.parametrize("handoff", [True, False])
def test_a_caller_that_stops_early_stops_the_producer(handoff):
    items = Counted(1000)
    for i in prefetch(iter(items), handoff=handoff):
        if i == 3:
            break
    deadline = time.monotonic() + 5
    while not items.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert items.closed and items.made <= 6


@pytest.mark.parametrize("handoff", [True, False])
def test_a_producer_error_reaches_the_caller(handoff):
    def failing():
        yield 1
        raise ValueError("the source broke")

    got = []
    with pytest.raises(ValueError, match="the source broke"):
        for item in prefetch(failing(), handoff=handoff):
            got.append(item)
    assert got == [1]
