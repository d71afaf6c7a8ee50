"""MXNet's symbol JSON (``*-symbol.json`` of ``save_checkpoint``), read as plain JSON, and the shape of the
pre-activation ResNet it describes.

A node is ``{"op", "name", "inputs", "attrs"}``; MXNet 0.x wrote the operator attributes under ``param`` / ``attr``
instead of ``attrs``, so all three are read. Only the graph's *structure* is taken from here (units per stage,
block type, filters, classes, output op); the weights' shapes are checked against it by the importer. MXNet itself
is never imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from openic.errors import ClientError, shown

# Everything SageMaker's (MXNet example's) resnet.py emits, plus the heads other MXNet versions write.
RESNET_OPS = frozenset({"null", "_copy", "BatchNorm", "Convolution", "Activation", "Pooling", "elemwise_add",
                        "_Plus", "_plus", "Flatten", "FullyConnected", "SoftmaxOutput", "Softmax", "softmax",
                        "LogisticRegressionOutput", "Dropout"})
REQUIRED_NODES = {"bn_data": "BatchNorm", "conv0": "Convolution", "bn1": "BatchNorm", "fc1": "FullyConnected"}
_UNIT_CONV = re.compile(r"stage(\d{1,6})_unit(\d{1,6})_conv(\d{1,6})")
_MAX_NODES = 1_000_000  # ResNet-200 has a few thousand


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    attrs: dict[str, str]


@dataclass(frozen=True)
class ResNetGraph:
    """What the symbol says about the network: enough to pick openic's depth-table row."""

    block: str  # "basic" or "bottleneck"
    units: tuple[int, ...]
    stem_width: int
    stem_kernel: int
    widths: tuple[int, ...]
    num_classes: int
    multi_label: bool  # the head is LogisticRegressionOutput (sigmoid) rather than a softmax


def parse_symbol(raw: Any, source: str) -> list[Node]:
    """The nodes of a parsed symbol JSON document, checked for the keys every MXNet version writes."""
    nodes = raw.get("nodes") if isinstance(raw, dict) else None
    if not isinstance(nodes, list) or not nodes or len(nodes) > _MAX_NODES:
        raise ClientError(f"{source}: not an MXNet symbol JSON (expected an object with a non-empty 'nodes' list, "
                          f"got {shown(raw if not isinstance(raw, dict) else sorted(raw))})")
    out = []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("op"), str) or not isinstance(node.get("name"), str):
            raise ClientError(f"{source}: node {i} is {shown(node)}; expected an object with string 'op' and 'name'")
        attrs: dict[str, str] = {}
        for key in ("attr", "param", "attrs"):  # 0.x: attr/param; 1.x: attrs (later keys win)
            value = node.get(key)
            if isinstance(value, dict):
                attrs.update({str(k): str(v) for k, v in value.items()})
        out.append(Node(node["op"], node["name"], attrs))
    return out


def _int_attr(node: Node, key: str, source: str) -> int:
    value = node.attrs.get(key, "")
    if not re.fullmatch(r"\s*[0-9]{1,9}\s*", value):
        raise ClientError(f"{source}: node {node.name!r} ({node.op}) has {key}={shown(value or '(none)')}; "
                          f"expected a positive integer")
    return int(value)


def _kernel(node: Node, source: str) -> int:
    dims = re.findall(r"-?\d{1,9}", node.attrs.get("kernel", "")[:100])
    if len(dims) != 2 or dims[0] != dims[1]:
        raise ClientError(f"{source}: node {node.name!r} has kernel={shown(node.attrs.get('kernel'))}; expected "
                          f"a square kernel such as (3, 3)")
    return int(dims[0])


def _check_family(nodes: list[Node], source: str) -> dict[str, Node]:
    by_name = {n.name: n for n in nodes if n.op != "null"}
    foreign = sorted({n.op for n in nodes} - RESNET_OPS)
    missing = [f"{name} ({op})" for name, op in REQUIRED_NODES.items() if getattr(by_name.get(name), "op", "") != op]
    if not any(_UNIT_CONV.fullmatch(n) for n in by_name):
        missing.append("stage1_unit1_conv1 (Convolution)")
    if foreign or missing:
        found = ", ".join(sorted({n.op for n in nodes} - {"null"}))
        details = "; ".join(part for part in (f"operators it never uses: {', '.join(foreign)}" if foreign else "",
                                              f"missing nodes: {', '.join(missing)}" if missing else "") if part)
        raise ClientError(f"{source}: this graph is not SageMaker's image-classification ResNet ({details}; "
                          f"operators found: {found}). Only that family (MXNet's symbols/resnet.py) can be imported")
    return by_name


# What symbols/resnet.py sets, where another value would make the imported network compute something else.
_EXPECTED_ATTRS = {"Activation": {"act_type": ("relu",)}, "Pooling": {"pool_type": ("avg", "max")}}


def _check_attrs(nodes: list[Node], source: str) -> None:
    """Activations are ReLU, pools max (stem) or global average (head), BatchNorm eps 2e-5 with fixed gamma only
    on ``bn_data``, convolution strides 1 or 2: anything else would import and predict wrongly."""
    problems = []
    for n in nodes:
        for key, allowed in _EXPECTED_ATTRS.get(n.op, {}).items():
            if n.attrs.get(key, allowed[0]).strip().lower() not in allowed:
                problems.append(f"{n.name} {key}={n.attrs[key]}")
        if n.op == "Pooling" and n.name != "pooling0" and n.attrs.get("global_pool", "False") != "True":
            problems.append(f"{n.name} is not a global pool")
        if n.op == "BatchNorm":
            eps = n.attrs.get("eps", "0.001")
            fix = n.attrs.get("fix_gamma", "True") == "True"
            if not re.fullmatch(r"\s*(2e-0?5|2\.0*e-0?5|0\.00002)\s*", eps):
                problems.append(f"{n.name} eps={eps}")
            if fix != (n.name == "bn_data"):
                problems.append(f"{n.name} fix_gamma={n.attrs.get('fix_gamma', 'True (default)')}")
        if n.op == "Convolution" and n.attrs.get("stride", "(1, 1)").replace(" ", "") not in ("(1,1)", "(2,2)"):
            problems.append(f"{n.name} stride={n.attrs['stride']}")
    if problems:
        raise ClientError(f"{source}: the graph has SageMaker's ResNet layout but other settings, so it would not "
                          f"predict the same: {', '.join(problems[:5])}{', ...' if len(problems) > 5 else ''}")


def resnet_graph(nodes: list[Node], source: str) -> ResNetGraph:
    """The ResNet layout of a SageMaker image-classification symbol.

    Raises:
        ClientError: the graph belongs to another family (other operators, no ``bn_data``/``conv0``/``stage*``/
            ``fc1``), or its stages are not numbered 1..S with units 1..U.
    """
    by_name = _check_family(nodes, source)
    _check_attrs(nodes, source)
    convs: dict[int, dict[int, dict[int, Node]]] = {}
    for name, node in by_name.items():
        m = _UNIT_CONV.fullmatch(name)
        if m and node.op == "Convolution":
            s, u, k = (int(g) for g in m.groups())
            convs.setdefault(s, {}).setdefault(u, {})[k] = node
    if sorted(convs) != list(range(1, len(convs) + 1)) or any(
            sorted(units) != list(range(1, len(units) + 1)) for units in convs.values()):
        layout = {s: sorted(units) for s, units in sorted(convs.items())}
        raise ClientError(f"{source}: residual units are not numbered stage1..S / unit1..U ({shown(layout)})")
    kinds = {tuple(sorted(c)) for units in convs.values() for c in units.values()}
    if kinds not in ({(1, 2)}, {(1, 2, 3)}):
        raise ClientError(f"{source}: residual units mix or lack convolutions (conv numbers per unit: "
                          f"{sorted(kinds)}); expected conv1-conv2 (basic) or conv1-conv3 (bottleneck) in every unit")
    last = 3 if kinds == {(1, 2, 3)} else 2
    return ResNetGraph(
        block="bottleneck" if last == 3 else "basic",
        units=tuple(len(convs[s]) for s in sorted(convs)),
        stem_width=_int_attr(by_name["conv0"], "num_filter", source),
        stem_kernel=_kernel(by_name["conv0"], source),
        widths=tuple(_int_attr(convs[s][1][last], "num_filter", source) for s in sorted(convs)),
        num_classes=_int_attr(by_name["fc1"], "num_hidden", source),
        multi_label=any(n.op == "LogisticRegressionOutput" for n in nodes),
    )
