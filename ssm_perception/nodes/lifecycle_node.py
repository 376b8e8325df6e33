"""The perception node as a managed (lifecycle) node, brought up the way nav2 and Autoware do it.

`ManagedPerceptionNode` is `PerceptionNode` (same parameters, pipeline, frame step, outputs) on
rclpy's `LifecycleNode`; only what happens when is different:

    unconfigured --configure--> inactive: pipeline (model loaded), publishers, subscriptions,
                                          ~/reset, worker thread; nothing processed or published
    inactive     --activate-->  active:   LiDAR frames processed, outputs and /diagnostics published
    active       --deactivate-> inactive: frames dropped on arrival (counted), publishing stops
    inactive     --cleanup-->   unconfigured: everything of `configure` destroyed (model freed)
    any          --shutdown-->  finalized

Drive it with ``ros2 lifecycle set /ssm_perception configure`` (the ~/change_state service).
Console script: ``perception_lifecycle_node`` (same arguments as ``perception_node``).
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ssm_perception.nodes.perception_node import PerceptionNode
from ssm_perception.nodes.perception_node import main as _node_main


class ManagedPerceptionNode(PerceptionNode, LifecycleNode):
    """PerceptionNode with configure / activate / deactivate / cleanup / shutdown transitions."""

    def __init__(self, **kwargs) -> None:
        self._active = False
        self._configured = False
        self._configuring = False
        self._entities: list = []  # subscriptions, services, timers made by setup(): destroyed on cleanup
        self.frames_dropped_inactive = 0
        super().__init__(defer_setup=True, **kwargs)

    # ---------------------------------------------------------------- what setup() creates
    # Publishers become lifecycle publishers (silent unless active); the rest is recorded so that
    # cleanup can destroy it.
    def create_publisher(self, msg_type, topic, qos_profile, **kwargs):
        if not self._configuring:  # rclpy's own (/parameter_events, /rosout, transition events)
            return super().create_publisher(msg_type, topic, qos_profile, **kwargs)
        return self._record(self.create_lifecycle_publisher(msg_type, topic, qos_profile, **kwargs))

    def _record(self, entity):
        if self._configuring:  # not rclpy's own (parameter services, /clock, lifecycle services)
            self._entities.append(entity)
        return entity

    def create_subscription(self, *args, **kwargs):
        return self._record(super().create_subscription(*args, **kwargs))

    def create_service(self, *args, **kwargs):
        return self._record(super().create_service(*args, **kwargs))

    def create_timer(self, *args, **kwargs):
        return self._record(super().create_timer(*args, **kwargs))

    # ---------------------------------------------------------------- transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._configuring = True
        try:
            self.setup()
        except Exception as exc:  # noqa: BLE001 - a failed configure is reported, the node stays unconfigured
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        finally:
            self._configuring = False
        self._diag_timer.cancel()  # diagnostics only while active
        self._configured = True
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self._active = True
        self._diag_timer.reset()
        self.get_logger().info("active: processing LiDAR frames")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._diag_timer.cancel()
        with self._wake:
            self._queue.clear()  # frames waiting for TF or the worker are not processed any more
        self.get_logger().info("inactive: LiDAR frames are dropped until activated again")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._teardown()
        return super().on_shutdown(state)

    def _teardown(self) -> None:
        """Undo setup(): stop the worker, destroy publishers, subscriptions, timers, ~/reset, pipeline."""
        self._active = False
        if hasattr(self, "_worker"):
            with self._wake:
                self._stop = True
                self._wake.notify()
            self._worker.join(timeout=5.0)
            del self._worker
        if hasattr(self, "_jump_handle"):
            self._jump_handle.unregister()
            del self._jump_handle
        for entity in self._entities:
            destroy = {"LifecyclePublisher": self.destroy_lifecycle_publisher,
                       "Subscription": self.destroy_subscription, "Service": self.destroy_service,
                       "Timer": self.destroy_timer}[type(entity).__name__]
            destroy(entity)
        self._entities.clear()
        for name in [n for n in self.__dict__ if n.startswith("pub_")] + ["pipeline", "tf", "assembler",
                                                                           "_diag_timer"]:
            self.__dict__.pop(name, None)
        self._configured = False

    # ---------------------------------------------------------------- gating
    def _on_lidar(self, msg, info=None) -> None:
        if not self._active:
            self.frames_dropped_inactive += 1
            return
        super()._on_lidar(msg, info)

    def summary(self) -> str:
        if not self._configured:
            return f"not configured; {self.frames_dropped_inactive} frames dropped while inactive"
        return f"{super().summary()}; {self.frames_dropped_inactive} frames dropped while inactive"

    def destroy_node(self) -> None:
        self._teardown()
        LifecycleNode.destroy_node(self)


def main(argv: list[str] | None = None) -> int:
    """Console script `perception_lifecycle_node`: starts unconfigured; configure and activate it
    with ``ros2 lifecycle set /ssm_perception configure`` / ``activate`` (or a lifecycle manager)."""
    return _node_main(argv, node_class=ManagedPerceptionNode)


if __name__ == "__main__":
    sys.exit(main())
