"""Bucketed sliding windows: at most ``limit`` units in any ``window_s`` seconds, in O(1).

**The algorithm.** Time (integer microseconds) is cut into buckets of width
``w = ceil(window_s * 1e6 / 60)`` (1 s for the usual 60-second window); a charge recorded at
time ``t`` goes into bucket ``b(t) = t // w``. A check at time ``t`` counts the :data:`SPAN`
= 61 buckets ``b(t) - 60 ... b(t)`` and admits a charge of ``a`` units iff
``sum + a <= limit``. The sum is kept running: when the newest bucket moves on, the buckets
that leave the span are subtracted, so a check never adds 61 numbers; memory is 61 counters
per quota. :class:`BucketWindow` is the in-process form; ``lua/ratelimit_*.lua`` do the same
in one Redis HASH per quota.

**Never more than ``limit`` in any window of ``window_s`` seconds.** The span at time ``t``
starts at ``(b(t) - 60) * w <= t - 60 * w <= t - window_s`` (as ``b(t) * w <= t`` and
``60 * w >= window_s``): it always reaches back at least ``window_s`` (and less than
``window_s + w``). Take any window ``[s, s + window_s]`` and the last charge admitted in it,
at time ``t``. Every charge admitted in the window before it was recorded at or after
``s >= t - window_s``, so inside the span at ``t``, and counted: the window holds at most
``sum + a <= limit``. Units leave the count only by ageing out of the span, or when their own
request is refunded or reconciled (a reconcile up to the real usage adds the request's true
cost after the fact, as it would with any limiter that reserves an estimate).

**At least ``limit * 60 / 61`` per window in steady state.** With demand that always wants
more, a refusal in bucket ``b`` means buckets ``b - 60 ... b`` already hold more than
``limit - a`` units; so once demand saturates, every 61 consecutive buckets hold at least
``limit - a + 1`` (``limit`` for requests: ``a = 1``). Over ``n * 61`` buckets at least
``n * limit`` pass: on average ``limit / 61`` per bucket, ``limit * 60 / 61`` per
``window_s``. The price of bucketing is that a charge counts for between ``window_s`` and
``window_s + w`` seconds instead of exactly ``window_s``.

**Settling.** A reservation's stamp is the time its charges were recorded; reconciling or
refunding it adds to bucket ``stamp // w`` while that bucket is still in the span (after
that the charge has aged out as reserved), never taking a bucket below 0.
"""

from __future__ import annotations

__all__ = ["SPAN", "BucketWindow", "bucket_width_us"]

SPAN = 61  # buckets a check counts: the current one and the 60 before it


def bucket_width_us(window_s: float) -> int:
    """Bucket width in microseconds: ``window_s / 60``, rounded up (so 60 buckets cover at
    least the whole window: rounding down would let a check see less than ``window_s``)."""
    return max(1, -(-round(window_s * 1_000_000) // (SPAN - 1)))


class BucketWindow:
    """One quota's 61 buckets in a ring (bucket ``k`` in slot ``k % 61``) and their sum.

    ``head`` is the newest bucket the ring has moved to; ``total`` is the sum of buckets
    ``head - 60 ... head``. Every counter is ``>= 0``.
    """

    __slots__ = ("counts", "head", "total", "width")

    def __init__(self, width: int, now_us: int) -> None:
        self.width = width
        self.head = now_us // width
        self.counts = [0] * SPAN
        self.total = 0

    def advance(self, bucket: int) -> None:
        """Move the head to ``bucket``: the buckets that leave the span leave the sum."""
        head = self.head
        if bucket <= head:
            return  # the same bucket (or a clock that stepped back: keep the later one)
        self.head = bucket
        if not self.total:
            return  # every counter is 0 already
        if bucket - head >= SPAN:
            self.counts = [0] * SPAN
            self.total = 0
            return
        counts = self.counts
        for k in range(head + 1, bucket + 1):
            slot = k % SPAN  # held bucket k - 61, which has just left
            self.total -= counts[slot]
            counts[slot] = 0

    def add(self, amount: int) -> None:
        """Record ``amount`` units in the head bucket."""
        self.counts[self.head % SPAN] += amount
        self.total += amount

    def adjust(self, stamp_us: int, now_us: int, delta: int) -> None:
        """Add ``delta`` to the bucket of ``stamp_us`` if it is still in the span at
        ``now_us`` (floored at 0); otherwise nothing."""
        bucket = stamp_us // self.width
        if not max(now_us // self.width, self.head) - SPAN < bucket <= self.head:
            return
        slot = bucket % SPAN
        old = self.counts[slot]
        new = max(0, old + delta)
        self.counts[slot] = new
        self.total += new - old

    def retry_after_us(self, need: int, now_us: int) -> int:
        """Microseconds until the oldest buckets free ``need`` units by leaving the span."""
        counts, width = self.counts, self.width
        freed = 0
        for k in range(self.head - SPAN + 1, self.head + 1):
            freed += counts[k % SPAN]
            if freed >= need:
                return max(0, (k + SPAN) * width - now_us)  # bucket k leaves then
        return max(0, (self.head + SPAN) * width - now_us)  # unreachable while total >= need

    def reset_us(self, now_us: int) -> int:
        """Microseconds until every bucket that holds units now has left the span."""
        if not self.total:
            return 0
        counts = self.counts
        for k in range(self.head, self.head - SPAN, -1):
            if counts[k % SPAN]:
                return max(0, (k + SPAN) * self.width - now_us)
        return 0
