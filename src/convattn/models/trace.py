"""Reading a CNN's structure off its own computation: one recorded dry forward pass.

``attach`` does not need to know a network's block classes. It runs the network once on a small input while a
``TorchFunctionMode`` records every tensor operation (its inputs, outputs and the modules running it) and global
module hooks record every module call. A tensor value is identified by ``(id(tensor), tensor._version)``, so in-place
operations (``out += shortcut``, ``ReLU(inplace=True)``) are new values. From that record:

* **Residual blocks**: an addition of two feature maps of one shape where one operand is computed from the other
  through at least one convolution (identity shortcut), or both are computed from the input of the module running
  the addition along paths that share nothing but that input (projection shortcut; the operand with more
  convolutions is the branch). The block is the module running the addition (or, for an addition written in a
  network's own ``forward``, the path between the two).
* **Split and dense shortcuts**: a concatenation inside a module where some operands are the module's input or
  computed from it without a convolution (a split, a pooling) and the others through convolutions: each of those
  is a branch, placed before the concatenation (one branch: the module is the block, as ShuffleNet's; several:
  each module that produced one is a block, as DenseNet's layers).
* **Multi-branch blocks without a shortcut** (Inception, SqueezeNet's Fire): a module that concatenates two or
  more branches computed from its input through convolutions; its output is the block output.
* **Blocks of the same class** as a block found above (a stage's first block often has no shortcut): the module at
  the same relative path is the branch output.
* **No block at all** (VGG, AlexNet): a stage is a run of layers at one output stride; its output is the last layer
  called at that stride.
* **Shared blocks** (one block module applied several times: in a loop of the network's forward, or registered
  under two names): one block, whose branch output is a module that runs once in each application; the module
  attached there runs at every application (shared weights). Applied at several output strides, the block cannot
  be one block of one stage: it gets no module, and a note says so.

The branch output of a block is the module whose output is the branch: from the branch value back through modules
that compute nothing in evaluation (identity, dropout, drop path) and per-element operations of one input (a layer
scale, an activation) to the outermost module below the block that returned it, followed down ``nn.Sequential``
containers to their last layer. Stages are blocks of one output stride.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..layers import AttentionModule

__all__ = ["Pass", "Call", "Op", "record_pass", "TraceError"]

Key = tuple[int, int]  # (id of a tensor, its version): one value of one tensor

ADD_OPS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
CAT_OPS = {"cat", "concat", "concatenate"}
_CONV = {"conv2d", "conv1d", "conv3d", "convolution", "_convolution", "conv_transpose2d"}
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class TraceError(ValueError):
    """The dry pass could not run, or read nothing usable."""


@dataclass
class Op:
    index: int
    name: str
    inputs: list[Key]  # tensor arguments that are feature values (derived from the network input)
    outputs: list[Key]
    call: int  # innermost module call running it (-1: none)
    out_shape: tuple[int, ...]
    conv: bool = False
    conv_module: int = -1  # the module call whose weight this convolution used (-1: unknown)


@dataclass
class Call:
    index: int
    module: nn.Module
    name: str | None  # None: a module not inside the network
    inputs: list[Key]
    parent: int  # enclosing call (-1: none)
    first_op: int
    last_op: int = -1  # ops [first_op, last_op) ran inside this call
    outputs: list[Key] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    in_shape: tuple[int, ...] = ()
    in_attention: bool = False


def _func_name(func: Any) -> str:
    return getattr(func, "__name__", "") or type(func).__name__


class _Recorder(TorchFunctionMode):
    """Records tensor operations and module calls of one forward pass."""

    def __init__(self, names: dict[int, str], weights: dict[int, nn.Module]) -> None:
        super().__init__()
        self.names, self.weights = names, weights
        self.ops: list[Op] = []
        self.calls: list[Call] = []
        self.stack: list[int] = []
        self.producer: dict[Key, int] = {}  # value -> op index
        self.data: set[Key] = set()  # values derived from the network input
        self.keep: list[torch.Tensor] = []  # keeps ids unique during the pass
        self.calls_of: dict[int, list[int]] = {}  # id(module) -> call indices
        self.shapes: dict[Key, tuple[int, ...]] = {}

    @staticmethod
    def key(t: torch.Tensor) -> Key:
        return id(t), t._version

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        in_keys = [self.key(t) for t in ins]
        out = func(*args, **kwargs)
        seen = set(in_keys)  # an op that returns its input unchanged (dropout in evaluation) computed nothing
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and self.key(o) not in seen]
        data_in = [k for k in in_keys if k in self.data]
        if outs and data_in:
            name = _func_name(func)
            op = Op(len(self.ops), name, data_in, [self.key(o) for o in outs], self.stack[-1] if self.stack else -1,
                    tuple(outs[0].shape), conv=name in _CONV)
            if op.conv:  # the convolution layer running it (its weight may be transformed first, e.g. standardised)
                top = self.calls[self.stack[-1]].module if self.stack else None
                w = ins[1] if len(ins) > 1 else None
                mod = top if isinstance(top, nn.Conv2d) else (self.weights.get(id(w)) if w is not None else None)
                if mod is not None:
                    op.conv_module = id(mod)
            for k, o in zip(op.outputs, outs):
                self.producer[k] = op.index
                self.data.add(k)
                self.shapes[k] = tuple(o.shape)
            for o in outs:  # an in-place op on a view changed its base too (x[:, :c] += shortcut)
                base = o._base
                if base is not None and id(o) in {id(t) for t in ins}:
                    bk = self.key(base)
                    self.producer[bk] = op.index
                    self.data.add(bk)
                    self.shapes[bk] = tuple(base.shape)
                    op.outputs.append(bk)
                    self.keep.append(base)
            self.ops.append(op)
            self.keep.extend(ins)
            self.keep.extend(outs)
        return out

    def pre_hook(self, module: nn.Module, args: Any) -> None:
        with torch._C.DisableTorchFunction():
            ts = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
            keys = [self.key(t) for t in ts if self.key(t) in self.data]
            parent = self.stack[-1] if self.stack else -1
            in_attn = isinstance(module, AttentionModule) or (parent >= 0 and self.calls[parent].in_attention)
            call = Call(len(self.calls), module, self.names.get(id(module)), keys, parent, len(self.ops),
                        in_shape=tuple(ts[0].shape) if ts else (), in_attention=in_attn)
            self.calls.append(call)
            self.calls_of.setdefault(id(module), []).append(call.index)
            self.stack.append(call.index)
            self.keep.extend(ts)

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        with torch._C.DisableTorchFunction():
            if not self.stack:
                return
            call = self.calls[self.stack.pop()]
            ts = [o for o in tree_flatten(output)[0] if isinstance(o, torch.Tensor)]
            call.outputs = [self.key(t) for t in ts]
            call.out_shape = tuple(ts[0].shape) if ts else ()
            call.last_op = len(self.ops)
            self.keep.extend(ts)


@dataclass
class Pass:
    """The record of one dry forward pass (see the module docstring)."""

    model: nn.Module
    size: int
    in_chans: int
    ops: list[Op]
    calls: list[Call]
    producer: dict[Key, int]
    calls_of: dict[int, list[int]]
    shapes: dict[Key, tuple[int, ...]]
    input_key: Key

    # --- queries ---

    def n_calls(self, module: nn.Module) -> int:
        return len(self.calls_of.get(id(module), ()))

    def call_of(self, module: nn.Module) -> Call | None:
        idx = self.calls_of.get(id(module))
        return self.calls[idx[0]] if idx else None

    def ancestors_call(self, call: int) -> list[int]:
        out = []
        while call >= 0:
            out.append(call)
            call = self.calls[call].parent
        return out

    def reach(self, sources: set[Key], start: int, stop: int, through_conv: bool = True) -> set[Key]:
        """Values computed from ``sources`` by the ops ``[start, stop)`` (without convolutions if not
        ``through_conv``); the sources included."""
        reach = set(sources)
        for op in self.ops[max(start, 0):stop]:
            if (through_conv or not op.conv) and any(k in reach for k in op.inputs):
                reach.update(op.outputs)
        return reach

    def back(self, key: Key, floor: int) -> set[Key]:
        """Values ``key`` was computed from, by ops at index >= ``floor`` (``key`` included)."""
        seen, todo = {key}, [key]
        while todo:
            k = todo.pop()
            p = self.producer.get(k)
            if p is None or p < floor:
                continue
            for i in self.ops[p].inputs:
                if i not in seen:
                    seen.add(i)
                    todo.append(i)
        return seen

    def convs_on(self, path: set[Key]) -> list[Op]:
        return [self.ops[self.producer[k]] for k in path if k in self.producer and self.ops[self.producer[k]].conv]

    def reduction(self, shape: tuple[int, ...]) -> int:
        return max(1, round(self.size / shape[-1])) if len(shape) == 4 and shape[-1] > 0 else 0


def record_pass(model: nn.Module, size: int, in_chans: int) -> Pass:
    """Run ``model`` once in eval mode without gradients on a (1, in_chans, size, size) input and record it."""
    names = {id(m): n for n, m in reversed(list(model.named_modules()))}  # first name wins
    weights = {id(m.weight): m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    rec = _Recorder(names, weights)
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    modes = [(m, m.training) for m in model.modules()]
    h1 = nn.modules.module.register_module_forward_pre_hook(rec.pre_hook)
    h2 = nn.modules.module.register_module_forward_hook(rec.post_hook)
    input_key = rec.key(x)
    rec.data.add(input_key)
    rec.shapes[input_key] = tuple(x.shape)
    model.eval()
    try:
        with torch.no_grad(), rec:
            model(x)
    except Exception as e:  # noqa: BLE001 - reported with where it stopped
        where = [rec.calls[c].name for c in rec.stack if rec.calls[c].name]
        at = f" in {where[-1]} ({type(rec.calls[rec.stack[-1]].module).__name__})" if where else ""
        raise TraceError(f"the dry forward pass on a (1, {in_chans}, {size}, {size}) input failed{at}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        h1.remove()
        h2.remove()
        for m, t in modes:
            m.training = t
    return Pass(model, size, in_chans, rec.ops, rec.calls, rec.producer, rec.calls_of, rec.shapes, input_key)
