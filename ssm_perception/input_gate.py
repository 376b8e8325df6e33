"""Input gates (ROS-free): which publisher may feed a topic or a TF edge, and which TF steps are plausible.

Plain DDS authenticates nobody (SROS2 is not available with the pip wheels, see README), so anyone on
the domain can publish a cloud or a transform. These gates cannot stop a forger that is the only
publisher, but they stop the cases a running vehicle meets: a second node (a forgotten replay, a test
tool, an attacker) publishing next to the real driver or localization, and a single glitched pose.

* `SourceLock`: a topic (or TF edge) belongs to the first publisher seen; another publisher's messages
  are rejected while the owner is alive, and take over once the owner has been silent for
  ``handover_s`` (a restarted driver comes back with a new DDS identity).
* `TfEdgeGate`: per dynamic TF edge, a step beyond ``max_speed * dt + jump_m`` (or a rotation beyond
  ``jump_yaw_rad``) since the last accepted sample is held back; it is accepted only when
  ``confirm`` consecutive samples agree with each other (a real relocalization persists, a glitch
  or a forged sample interleaved with the real stream does not). Static edges may be redefined
  only by their owner.

Written by hand: tf2 has no notion of who published a transform, and no library does this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NS = 1_000_000_000


class SourceLock:
    """The first publisher of a stream owns it; others are refused until it has been silent ``handover_s``."""

    def __init__(self, handover_s: float):
        self.handover_s = float(handover_s)
        self.owner = None
        self._last_s = -math.inf
        self.handovers = 0

    def check(self, publisher, now_s: float) -> bool:
        """True: accept (and note the owner alive); False: a second publisher while the owner is alive.
        ``publisher`` None (identity unknown) is always accepted."""
        if publisher is None:
            return True
        if self.owner is None or publisher == self.owner:
            self.owner, self._last_s = publisher, now_s
            return True
        if now_s - self._last_s > self.handover_s:
            self.owner, self._last_s = publisher, now_s
            self.handovers += 1
            return True
        return False


def _angle_between(q0: np.ndarray, q1: np.ndarray) -> float:
    """Rotation angle [rad] between two unit quaternions."""
    d = min(1.0, abs(float(np.dot(q0, q1))))
    return 2.0 * math.acos(d)


@dataclass
class GateResult:
    accept: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (stamp, t, q) to store
    flag: str | None = None  # flag name for the node's diagnostics, None when all is well
    text: str = ""


@dataclass
class _EdgeState:
    lock: SourceLock
    last: tuple[int, np.ndarray, np.ndarray] | None = None  # last accepted (stamp, t, q)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # held-back jump


class TfEdgeGate:
    """Publisher and plausibility gate for transforms, per child frame (each child has one parent)."""

    def __init__(self, max_speed_mps: float, jump_m: float, jump_yaw_rad: float, confirm: int, handover_s: float):
        self.max_speed_mps, self.jump_m, self.jump_yaw_rad = float(max_speed_mps), float(jump_m), float(jump_yaw_rad)
        self.confirm, self.handover_s = int(confirm), float(handover_s)
        self._edges: dict[tuple[str, bool], _EdgeState] = {}

    def clear(self) -> None:
        """Forget the dynamic history (time went backwards); publishers of static edges are kept."""
        self._edges = {k: v for k, v in self._edges.items() if k[1]}

    def _plausible(self, a, b) -> tuple[bool, float, float, float]:
        dt = abs(b[0] - a[0]) / NS
        dist = float(np.linalg.norm(b[1] - a[1]))
        ang = _angle_between(a[2], b[2])
        ok = dist <= self.max_speed_mps * dt + self.jump_m and ang <= self.jump_yaw_rad
        return ok, dist, ang, dt

    def check(self, parent: str, child: str, stamp_ns: int, t, q, publisher, now_s: float,
              static: bool = False, current: tuple[np.ndarray, np.ndarray] | None = None) -> GateResult:
        """Decide on one transform ``parent -> child``. ``current``: the static edge's stored value
        (a new publisher may re-send the same value: a restarted static publisher)."""
        t = np.asarray(t, dtype=np.float64)
        q = np.asarray(q, dtype=np.float64)
        edge = self._edges.setdefault((child, static), _EdgeState(SourceLock(self.handover_s)))
        name = f"{parent} -> {child}"
        if static:
            same = current is not None and np.allclose(current[0], t, atol=1e-6) and \
                _angle_between(current[1], q) < 1e-6
            if publisher is not None and edge.lock.owner is not None and publisher != edge.lock.owner and not same:
                return GateResult(flag="tf_second_publisher",
                                  text=f"/tf_static {name} from a second publisher changes the static transform; ignored")
            edge.lock.owner = publisher if publisher is not None else edge.lock.owner
            return GateResult(accept=[(stamp_ns, t, q)])
        if not edge.lock.check(publisher, now_s):
            return GateResult(flag="tf_second_publisher",
                              text=f"/tf {name} from a second publisher while the first is alive; ignored")
        sample = (int(stamp_ns), t, q)
        if edge.last is None:
            edge.last = sample
            return GateResult(accept=[sample])
        ok, dist, ang, dt = self._plausible(edge.last, sample)
        if ok:
            edge.pending = []  # a glitch that did not persist is forgotten
            if sample[0] >= edge.last[0]:
                edge.last = sample
            return GateResult(accept=[sample])
        # Implausible step: hold it back until `confirm` consecutive samples agree with each other.
        if edge.pending and self._plausible(edge.pending[-1], sample)[0]:
            edge.pending.append(sample)
        else:
            edge.pending = [sample]
        if len(edge.pending) >= self.confirm:
            accepted, edge.pending = edge.pending, []
            edge.last = max(accepted, key=lambda s: s[0])
            return GateResult(accept=accepted, flag="tf_jump_confirmed",
                              text=f"/tf {name} jumped {dist:.2f} m / {ang:.2f} rad in {dt:.3f} s and the jump "
                                   f"persisted for {len(accepted)} messages: accepted")
        return GateResult(flag="tf_jump", text=f"/tf {name} jumped {dist:.2f} m / {ang:.2f} rad in {dt:.3f} s "
                          f"(allowed {self.max_speed_mps * dt + self.jump_m:.2f} m / {self.jump_yaw_rad} rad); held "
                          f"back until {self.confirm} consecutive messages confirm it")
