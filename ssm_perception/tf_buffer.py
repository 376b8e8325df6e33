"""A time-interpolating TF tree (ROS-free): the part of tf2 the node needs.

tf2 / tf2_ros are not installable from pip, so this module keeps its own buffer. Semantics follow
tf2 where it matters for a perception node:

* Each child frame has exactly one parent. Dynamic edges keep a history of stamped transforms;
  static edges (/tf_static) are valid at every time and survive :meth:`TfBuffer.clear`.
* ``lookup(target, source, stamp)`` returns ``T_target_source`` (maps points in ``source`` into
  ``target``), walking both frames up to their common ancestor. Each dynamic edge is interpolated
  at the stamp (linear translation, slerp rotation).
* A stamp of 0 means "the latest time every edge on the path has data for", as in tf2.
* Past the newest (or before the oldest) sample of an edge, a lookup may extrapolate up to
  ``extrapolation_limit_ns`` at the edge's last velocity (constant velocity); further is an error
  that says by how much and in which direction.
* History older than ``cache_s`` relative to the newest sample of each edge is dropped, so memory is
  bounded by (rate x cache_s) per edge.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from ssm_perception.geometry import (
    invert_transform,
    make_transform,
    matrix_to_quat_xyzw,
    slerp_xyzw,
)

NS = 1_000_000_000
_MIN_VELOCITY_BASE_NS = 1_000_000  # samples closer than 1 ms are too noisy to extrapolate from
_ROTATION_TOLERANCE = 1e-3  # max |R^T R - I| entry accepted for a 4x4 input


class TfError(Exception):
    """Base class of every TF buffer error."""


class TfLookupError(TfError, LookupError):
    """A lookup between frames that are unknown or not connected."""


class TfExtrapolationError(TfLookupError):
    """A lookup at a stamp further outside an edge's data than the extrapolation limit allows."""


class TfDataError(TfError, ValueError):
    """A transform that cannot be stored: non-finite values, bad quaternion, second parent, cycle."""


@dataclass
class _Edge:
    """History of one parent -> child transform (``T_parent_child``)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)  # sorted, unique
    trans: list[np.ndarray] = field(default_factory=list)  # [3] each
    quats: list[np.ndarray] = field(default_factory=list)  # [4] (x, y, z, w), unit, each

    def insert(self, stamp_ns: int, t: np.ndarray, q: np.ndarray) -> None:
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:  # same stamp: the newer message wins
            self.trans[i], self.quats[i] = t, q
            return
        self.stamps.insert(i, stamp_ns)
        self.trans.insert(i, t)
        self.quats.insert(i, q)

    def prune(self, cache_ns: int) -> None:
        k = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if k:
            del self.stamps[:k], self.trans[:k], self.quats[:k]


def _pose(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    return make_transform(t, q)


def _interp(t0, q0, t1, q1, alpha: float) -> np.ndarray:
    # alpha outside [0, 1] extrapolates along the same line / great circle (constant velocity)
    return _pose((1.0 - alpha) * t0 + alpha * t1, slerp_xyzw(q0, q1, alpha))


def _fmt_s(ns: int) -> str:
    return f"{ns / NS:.3f} s"


class TfBuffer:
    """TF tree with time-interpolated lookups and bounded memory.

    Args:
        cache_s: seconds of history kept per dynamic edge (relative to its newest sample).
        extrapolation_limit_s: default for :meth:`lookup` when no per-call limit is given.
    """

    def __init__(self, cache_s: float = 10.0, extrapolation_limit_s: float = 0.0):
        if not (cache_s > 0 and math.isfinite(cache_s)):
            raise ValueError(f"cache_s must be a positive number, got {cache_s!r}")
        if not (extrapolation_limit_s >= 0 and math.isfinite(extrapolation_limit_s)):
            raise ValueError(f"extrapolation_limit_s must be >= 0, got {extrapolation_limit_s!r}")
        self.cache_ns = int(cache_s * NS)
        self.extrapolation_limit_ns = int(extrapolation_limit_s * NS)
        self._edges: dict[str, _Edge] = {}  # child -> edge to its parent

    # ------------------------------------------------------------------ writing
    def set_transform(self, T, parent: str, child: str, stamp_ns: int, static: bool = False) -> bool:
        """Store ``T_parent_child`` at ``stamp_ns``. Returns False if it was older than the cache."""
        parent, child = _frame_id(parent, "parent"), _frame_id(child, "child")
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise TfDataError(f"{parent} -> {child}: transform must be 4x4, got shape {T.shape}")
        if not np.all(np.isfinite(T)):
            raise TfDataError(f"{parent} -> {child}: transform has non-finite values")
        r = T[:3, :3]
        if np.max(np.abs(r.T @ r - np.eye(3))) > _ROTATION_TOLERANCE or np.linalg.det(r) <= 0:
            raise TfDataError(f"{parent} -> {child}: rotation part is not a proper rotation matrix")
        return self._store(parent, child, stamp_ns, T[:3, 3].copy(), matrix_to_quat_xyzw(r), static)

    def set_translation_quat(self, translation, quat_xyzw, parent: str, child: str, stamp_ns: int,
                             static: bool = False) -> bool:
        """Store a transform given as translation + (x, y, z, w) quaternion (normalized here)."""
        parent, child = _frame_id(parent, "parent"), _frame_id(child, "child")
        t = np.asarray(translation, dtype=np.float64).reshape(-1)
        q = np.asarray(quat_xyzw, dtype=np.float64).reshape(-1)
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise TfDataError(f"{parent} -> {child}: translation must be 3 finite numbers, got {t.tolist()}")
        if q.shape != (4,) or not np.all(np.isfinite(q)):
            raise TfDataError(f"{parent} -> {child}: quaternion must be 4 finite numbers, got {q.tolist()}")
        with np.errstate(over="ignore"):  # an overflowing norm is rejected just below
            n = float(np.linalg.norm(q))
        if not (1e-6 < n < 1e6):  # beyond these a unit quaternion cannot be recovered reliably
            raise TfDataError(f"{parent} -> {child}: quaternion {q.tolist()} has norm {n:.3g}, cannot normalize")
        return self._store(parent, child, stamp_ns, t, q / n, static)

    def set_from_message(self, msg, static: bool = False) -> bool:
        """Store a geometry_msgs/TransformStamped (rclpy or rosbags message, or any look-alike)."""
        from ssm_perception.io.ros_convert import StampError, stamp_to_ns

        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except StampError as exc:
            raise TfDataError(f"{msg.header.frame_id} -> {msg.child_frame_id}: {exc}") from exc
        tr, rot = msg.transform.translation, msg.transform.rotation
        return self.set_translation_quat(
            (tr.x, tr.y, tr.z), (rot.x, rot.y, rot.z, rot.w), msg.header.frame_id, msg.child_frame_id,
            stamp_ns, static,
        )

    def _store(self, parent: str, child: str, stamp_ns, t, q, static: bool) -> bool:
        stamp_ns = _stamp(stamp_ns, f"{parent} -> {child}")
        if parent == child:
            raise TfDataError(f"transform from {child!r} to itself")
        edge = self._edges.get(child)
        if edge is not None and edge.parent != parent:
            raise TfDataError(
                f"frame {child!r} already has parent {edge.parent!r}; refusing second parent {parent!r}"
            )
        if edge is None:
            # A new edge must not make the child its own ancestor.
            anc = parent
            while anc in self._edges:
                anc = self._edges[anc].parent
                if anc == child:
                    raise TfDataError(f"{parent} -> {child} would close a cycle ({child!r} is an ancestor of {parent!r})")
            edge = self._edges[child] = _Edge(parent=parent, static=static)
        if static:
            # A static edge has a single, time-less value; it replaces any dynamic history.
            edge.static = True
            edge.stamps, edge.trans, edge.quats = [0], [t], [q]
            return True
        if edge.static:
            raise TfDataError(f"{parent} -> {child} is static (from /tf_static) and cannot also be dynamic")
        if edge.stamps and stamp_ns < edge.stamps[-1] - self.cache_ns:
            return False  # older than the cache window: tf2 drops it too
        edge.insert(stamp_ns, t, q)
        edge.prune(self.cache_ns)
        return True

    def clear(self) -> None:
        """Forget all dynamic history (e.g. after time jumped backwards); static edges stay."""
        self._edges = {c: e for c, e in self._edges.items() if e.static}

    # ------------------------------------------------------------------ reading
    def frames(self) -> list[str]:
        names = set(self._edges)
        names.update(e.parent for e in self._edges.values())
        return sorted(names)

    def parent_of(self, frame: str) -> str | None:
        edge = self._edges.get(frame)
        return edge.parent if edge else None

    def can_transform(self, target: str, source: str, stamp_ns: int = 0,
                      extrapolation_limit_ns: int | None = None) -> bool:
        try:
            self.lookup(target, source, stamp_ns, extrapolation_limit_ns)
        except TfLookupError:
            return False
        return True

    def lookup(self, target: str, source: str, stamp_ns: int = 0,
               extrapolation_limit_ns: int | None = None) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns`` (0 = latest common time) as a 4x4 float64 array."""
        target, source = _frame_id(target, "target"), _frame_id(source, "source")
        stamp_ns = _stamp(stamp_ns, f"lookup {target} <- {source}", exc=TfLookupError)
        limit = self.extrapolation_limit_ns if extrapolation_limit_ns is None else int(extrapolation_limit_ns)
        if target == source:
            return np.eye(4)
        src_chain, tgt_chain = self._chain(source), self._chain(target)
        common = set(tgt_chain)
        ancestor = next((f for f in src_chain if f in common), None)
        if ancestor is None:
            raise TfLookupError(
                f"cannot transform {source!r} into {target!r}: "
                f"{self._describe(source)}, {self._describe(target)}, and they share no common root; "
                f"known frames: {self.frames()}"
            )
        src_path = src_chain[: src_chain.index(ancestor)]  # frames whose edge leads up to the ancestor
        tgt_path = tgt_chain[: tgt_chain.index(ancestor)]
        if stamp_ns == 0:
            stamp_ns = self._latest_common(src_path + tgt_path)
        T_anc_src = self._compose(src_path, stamp_ns, limit)
        T_anc_tgt = self._compose(tgt_path, stamp_ns, limit)
        return invert_transform(T_anc_tgt) @ T_anc_src

    # ------------------------------------------------------------------ internals
    def _chain(self, frame: str) -> list[str]:
        """[frame, parent, grandparent, ..., root]; a frame nobody mentions is its own root."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _describe(self, frame: str) -> str:
        if frame not in self._edges and frame not in {e.parent for e in self._edges.values()}:
            return f"frame {frame!r} is unknown"
        return f"{frame!r} has root {self._chain(frame)[-1]!r}"

    def _latest_common(self, path: list[str]) -> int:
        newest = [self._edges[c].stamps[-1] for c in path if not self._edges[c].static]
        return min(newest) if newest else 0

    def _compose(self, path: list[str], stamp_ns: int, limit_ns: int) -> np.ndarray:
        """``T_ancestor_path[0]`` = product of the edges from path[0] up to the ancestor."""
        T = np.eye(4)
        for child in path:
            T = self._edge_at(child, stamp_ns, limit_ns) @ T
        return T

    def _edge_at(self, child: str, stamp_ns: int, limit_ns: int) -> np.ndarray:
        e = self._edges[child]
        if e.static:
            return _pose(e.trans[0], e.quats[0])
        s = e.stamps
        i = bisect.bisect_left(s, stamp_ns)
        if i < len(s) and s[i] == stamp_ns:
            return _pose(e.trans[i], e.quats[i])
        if 0 < i < len(s):  # inside the data: interpolate
            alpha = (stamp_ns - s[i - 1]) / (s[i] - s[i - 1])
            return _interp(e.trans[i - 1], e.quats[i - 1], e.trans[i], e.quats[i], alpha)
        # Outside the data: extrapolate within the limit.
        future = i == len(s)
        gap = stamp_ns - s[-1] if future else s[0] - stamp_ns
        if gap > limit_ns:
            when = "into the future" if future else "into the past"
            edge_span = f"data for {e.parent} -> {child} spans [{_fmt_s(s[0])}, {_fmt_s(s[-1])}]"
            raise TfExtrapolationError(
                f"lookup at {_fmt_s(stamp_ns)} would require extrapolation {_fmt_s(gap)} {when} "
                f"({edge_span}; limit {_fmt_s(limit_ns)})"
            )
        a, b = (len(s) - 2, len(s) - 1) if future else (0, 1)
        if len(s) < 2 or s[b] - s[a] < _MIN_VELOCITY_BASE_NS:
            k = len(s) - 1 if future else 0
            return _pose(e.trans[k], e.quats[k])  # one sample: hold it
        alpha = (stamp_ns - s[a]) / (s[b] - s[a])
        return _interp(e.trans[a], e.quats[a], e.trans[b], e.quats[b], alpha)


def _frame_id(name, role: str) -> str:
    if not isinstance(name, str):
        raise TfDataError(f"{role} frame id must be a string, got {type(name).__name__}")
    stripped = name.lstrip("/")  # tf2 ignores a leading slash (ROS 1 habit)
    if not stripped or stripped.strip() != stripped:
        raise TfDataError(f"{role} frame id {name!r} is empty or has surrounding whitespace")
    return stripped


def _stamp(stamp_ns, what: str, exc: type[Exception] = TfDataError) -> int:
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
        raise exc(f"{what}: stamp must be integer nanoseconds, got {stamp_ns!r}")
    if stamp_ns < 0:
        raise exc(f"{what}: negative stamp {int(stamp_ns)} ns")
    return int(stamp_ns)
