"""ROS 2 parameters of the perception node, generated from the one configuration schema.

Every dotted field of `PerceptionConfig` gets its own `ParameterDescriptor`: the parameter's name,
its ROS type (from the field's annotation), the field's description (and, for choices, the allowed
values), a range from the field's numeric bounds, and ``read_only`` unless the value is read live at
every frame (`RUNTIME`). ``ros2 param describe`` and ``describe_parameters`` therefore show the
schema, and ``ros2 param set`` of a read-only parameter is refused by rclpy before it reaches us.

Runtime changes of the other parameters are validated like the parameter file: the whole
configuration with the new values goes through the schema, and the first problem (naming the
field) is the refusal reason.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)

from ssm_perception.config import ConfigError, PerceptionConfig

# Read at every frame from the live configuration (tracker, detection selection, diagnostics): these
# change while the node runs. Everything else shapes what is built at start-up (model, grid, topics,
# subscriptions, timers) and needs a restart, so it is declared read-only.
RUNTIME_PREFIXES = ("tracking.",)
RUNTIME = frozenset({"diagnostics.latency_warn_ms", "diagnostics.latency_error_ms", "diagnostics.hardware_id"})

_INT64_MAX = 2**63 - 1


def is_runtime(name: str) -> bool:
    return name in RUNTIME or name.startswith(RUNTIME_PREFIXES)


def _leaf_fields(model: type[BaseModel], prefix: str = "", context: str = ""):
    """(dotted name, FieldInfo, annotation, description) of every scalar field, nested sections
    flattened; a field of a per-class section is described as "<section's description>: <class>"."""
    for name, info in model.model_fields.items():
        ann = info.annotation
        text = (info.description or "").strip()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_fields(ann, f"{prefix}{name}.", text)
        else:
            yield f"{prefix}{name}", info, ann, f"{context}: {text}" if context and text else text


def _ros_type(ann: Any) -> tuple[int, tuple]:
    """(ParameterType, allowed values for a Literal) of a field annotation."""
    origin = typing.get_origin(ann)
    if origin is Literal:
        choices = typing.get_args(ann)
        return _ros_type(type(choices[0]))[0], choices
    if origin in (typing.Union, types.UnionType):  # Optional[X]: X
        (inner,) = [a for a in typing.get_args(ann) if a is not type(None)]
        return _ros_type(inner)
    if ann is bool:
        return ParameterType.PARAMETER_BOOL, ()
    if ann is int:
        return ParameterType.PARAMETER_INTEGER, ()
    if ann is float:
        return ParameterType.PARAMETER_DOUBLE, ()
    if ann is str:
        return ParameterType.PARAMETER_STRING, ()
    raise TypeError(f"no ROS parameter type for annotation {ann!r}")


def _bounds(info) -> tuple[float | None, float | None, str, bool, bool]:
    """Lower and upper bound of a field (pydantic's gt/ge/lt/le metadata; None where unbounded) and
    their text. ROS ranges are inclusive: an exclusive bound (gt=0) becomes the closed range's end,
    and the schema still refuses the end value itself."""
    lo = hi = None
    lo_open = hi_open = False
    text = []
    for m in info.metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is None:
                continue
            if attr in ("gt", "ge"):
                lo, lo_open = float(v), attr == "gt"
            else:
                hi, hi_open = float(v), attr == "lt"
            text.append(f"{op} {float(v):g}")
    return lo, hi, " and ".join(text), lo_open, hi_open


def descriptors(schema: type[BaseModel] = PerceptionConfig) -> dict[str, ParameterDescriptor]:
    """One new ParameterDescriptor per parameter (never shared: rclpy writes the name into it)."""
    out = {}
    for name, info, ann, text in _leaf_fields(schema):
        ptype, choices = _ros_type(ann)
        if not text:
            raise ValueError(f"{name}: the schema field has no description (config.py)")
        lo, hi, bounds, lo_open, hi_open = _bounds(info)
        constraints = []
        if choices:
            constraints.append("one of: " + ", ".join(str(c) for c in choices))
        if bounds:
            constraints.append(bounds)
        pattern = next((m.pattern for m in info.metadata if getattr(m, "pattern", None)), None)
        if pattern:
            constraints.append(f"matches {pattern}")
        d = ParameterDescriptor(
            name=name, type=ptype, description=text, additional_constraints="; ".join(constraints),
            read_only=not is_runtime(name),
        )
        if ptype == ParameterType.PARAMETER_DOUBLE and bounds:
            d.floating_point_range = [FloatingPointRange(
                from_value=-math.inf if lo is None else lo, to_value=math.inf if hi is None else hi, step=0.0)]
        elif ptype == ParameterType.PARAMETER_INTEGER and bounds:
            d.integer_range = [IntegerRange(
                from_value=-_INT64_MAX if lo is None else math.floor(lo) + 1 if lo_open else math.ceil(lo),
                to_value=_INT64_MAX if hi is None else math.ceil(hi) - 1 if hi_open else math.floor(hi), step=0)]
        out[name] = d
    return out


def declare(node) -> PerceptionConfig:
    """Declare every parameter on ``node`` with its descriptor; return the validated configuration.

    A parameter file may write ``100`` for a float field: such integer overrides are turned into
    doubles before declaring (a statically typed DOUBLE parameter would refuse them), so the
    descriptor's type is the schema's, not the file's."""
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
    )
    from rclpy.parameter import Parameter

    descs = descriptors()
    defaults = PerceptionConfig().to_ros_parameters()
    overrides = node._parameter_overrides  # rclpy's parsed --params-file / parameter_overrides
    for name, d in descs.items():
        p = overrides.get(name)
        if d.type == ParameterType.PARAMETER_DOUBLE and p is not None and p.type_ == Parameter.Type.INTEGER:
            overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(p.value))
    # The schema first: its one-line error names the field and the rule (rclpy's would not).
    PerceptionConfig.from_ros_parameters(
        {**defaults, **{n: overrides[n].value for n in descs if n in overrides}})
    try:
        node.declare_parameters("", [(name, defaults[name], descs[name]) for name in descs])
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        raise ConfigError(str(exc)) from None
    return PerceptionConfig.from_ros_parameters({name: node.get_parameter(name).value for name in descs})


def validate_change(node, params) -> tuple[SetParametersResult, PerceptionConfig | None]:
    """The configuration with ``params`` applied, validated by the schema like the parameter file."""
    names = set(descriptors())
    current = {name: node.get_parameter(name).value for name in names}
    for p in params:
        if p.name in names:
            current[p.name] = p.value
    try:
        cfg = PerceptionConfig.from_ros_parameters(current)
    except ConfigError as exc:
        return SetParametersResult(successful=False, reason=str(exc)), None
    return SetParametersResult(successful=True), cfg


def apply_live(target: PerceptionConfig, new: PerceptionConfig, names) -> None:
    """Copy the runtime fields ``names`` from ``new`` into the live ``target`` (in place: the tracker
    and the diagnostics hold references to its sections)."""
    for name in names:
        *path, leaf = name.split(".")
        src, dst = new, target
        for part in path:
            src, dst = getattr(src, part), getattr(dst, part)
        setattr(dst, leaf, getattr(src, leaf))
