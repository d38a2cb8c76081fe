"""How a caption actor on CPUs runs the two calls Ray Data gives it at once.

Two ways, both committing the same captions:

- ``serial``: one call at a time reads its videos, prepares their model inputs (JPEG decoding,
  prompts, the processor) and generates; the model has all of the actor's CPUs.
- ``overlap``: one call prepares while the other generates; the model has one CPU less, which
  the preparing call uses.

Which is faster depends on the model and the machine. Overlapping hides the preparing (about
8 ms a clip here) and frees the model from sharing its cores in lockstep, but costs the model a
CPU: with a small model (generation a few times the preparing) it wins, with a real-sized one
on CPUs (seconds a clip against milliseconds) it loses nearly that CPU's share. So an actor
left to choose (``resources.caption.calls_per_actor: auto`` on CPUs) measures: the model's
completed clips per second over a few generations in each way, alternating, then keeps the
faster. Where preparing is a negligible share of generating, it keeps ``serial`` after the
first measurements without trying the other way.

A rate is taken between the ends of consecutive generations of calls that both started in the
same way, so a generation that changed ways (and the first, which loads the model) is left out.
"""

from __future__ import annotations

import time

SERIAL, OVERLAP = "serial", "overlap"


class CallPlan:
    """The way (``serial`` or ``overlap``) for each call an actor starts, and the model's CPU
    threads in it. ``fixed``: always that way (no measuring). Not thread-safe on its own:
    ``generated`` is called under the actor's model lock; ``mode`` is read at a call's start."""

    def __init__(self, cpus: int, fixed: str | None = None, *, intervals: int = 2, rounds: int = 2,
                 negligible: float = 0.05, clock=time.perf_counter):
        if fixed not in (None, SERIAL, OVERLAP):
            raise ValueError(f"unknown way: {fixed}")
        self.cpus = cpus
        self.mode = fixed or SERIAL
        self.decided = fixed is not None
        self._clock = clock
        self._intervals, self._negligible = intervals, negligible
        self._schedule = [SERIAL, OVERLAP] * rounds  # blocks of ``intervals`` clean intervals each
        self._in_block = 0
        self._last: tuple[str, float] | None = None  # (way, end) of the previous generation
        self.measured = {SERIAL: [0, 0.0], OVERLAP: [0, 0.0]}  # clips, seconds between generation ends
        self._serial_costs = [0.0, 0.0]  # preparing, generating seconds of the serial calls measured

    def threads(self, mode: str) -> int:
        """The model's CPU threads in a call of this way."""
        return self.cpus if mode == SERIAL else max(1, self.cpus - 1)

    def rate(self, mode: str) -> float | None:
        """Measured clips per second of the model in this way (None before any)."""
        clips, seconds = self.measured[mode]
        return clips / seconds if seconds > 0 else None

    def generated(self, mode: str, clips: int, prepare_s: float, generate_s: float) -> None:
        """A call that started in ``mode`` finished generating ``clips`` items now, after
        ``prepare_s`` seconds preparing them and ``generate_s`` generating."""
        now = self._clock()
        last, self._last = self._last, (mode, now)
        if self.decided or last is None or last[0] != mode or mode != self._schedule[0]:
            return
        self.measured[mode][0] += clips
        self.measured[mode][1] += now - last[1]
        if mode == SERIAL:
            self._serial_costs[0] += prepare_s
            self._serial_costs[1] += generate_s
            if self._serial_costs[1] > 0 and self._serial_costs[0] / self._serial_costs[1] < self._negligible:
                self._decide(SERIAL)  # overlapping would hide next to nothing and cost the model a CPU
                return
        self._in_block += 1
        if self._in_block < self._intervals:
            return
        self._schedule.pop(0)
        self._in_block = 0
        if self._schedule:
            self.mode = self._schedule[0]
        else:
            self._decide(OVERLAP if (self.rate(OVERLAP) or 0) > (self.rate(SERIAL) or 0) else SERIAL)

    def _decide(self, mode: str) -> None:
        self.mode, self.decided = mode, True

    def summary(self) -> dict:
        """What was measured and chosen (for logs and benchmarks)."""
        return {"mode": self.mode, "decided": self.decided,
                "serial_clips_per_s": _round(self.rate(SERIAL)), "overlap_clips_per_s": _round(self.rate(OVERLAP))}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
