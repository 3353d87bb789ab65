"""Blocks and stages of any CNN, read off one recorded forward pass (rules: :mod:`convattn.models.trace`).

:func:`find_blocks` returns each block with the module whose output is its branch output (where block-output
attention goes), its channels, output stride, stage and position. :data:`BLOCK_RULES` / :func:`register_block`
override what the pass reads for a block class (the attribute whose output is the branch output), for
networks whose computation hides it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .trace import ADD_OPS, CAT_OPS, CONTAINERS, Call, Key, Pass

__all__ = ["Block", "find_blocks", "assign_stages", "BLOCK_RULES", "register_block", "block_rule"]

#: Overrides: block type (``module.Class``, subclasses match too) -> attribute whose output is the branch output.
BLOCK_RULES: dict[str, str] = {}


def register_block(block_type: type | str, attribute: str) -> None:
    """Tell ``attach`` where a block type's branch output is (``attribute``: the submodule whose output it is),
    for blocks whose computation the dry pass cannot read (e.g. the addition happens outside the block)."""
    key = block_type if isinstance(block_type, str) else f"{block_type.__module__}.{block_type.__qualname__}"
    if not isinstance(attribute, str) or not attribute:
        raise ValueError(f"register_block: attribute must be a submodule name, got {attribute!r}")
    BLOCK_RULES[key] = attribute


def block_rule(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        rule = BLOCK_RULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is not None:
            return rule
    return None


@dataclass
class Block:
    """A block: ``name``/``module`` (``module`` None for a residual path written in a network's own forward),
    ``target`` (the module whose output is the branch output), its ``channels`` and output stride
    (``reduction``), the ``kind`` of rule that found it, and its ``stage``/``index`` (0-based)."""

    name: str
    module: nn.Module | None
    target_name: str
    target: nn.Module
    channels: int
    reduction: int
    kind: str
    order: int = 0  # call index of the target: forward order
    convs: set[int] = field(default_factory=set)  # ids of conv modules on the branch path (module None)
    consumers: int = 1  # ops reading the branch output (1: only the addition/concatenation)
    stage: int = -1
    index: int = -1


def _depth(p: Pass, c: int) -> int:
    return len(p.ancestors_call(c))


def _below(p: Pass, c: int, scope: int) -> bool:
    """Call ``c`` runs inside call ``scope`` (not ``scope`` itself)."""
    return c != scope and scope in p.ancestors_call(c)


def _usable(p: Pass, c: Call, scope: int = -1) -> bool:
    """A named module outside attention modules that runs once in the pass, or, below call ``scope`` of a block
    applied several times (a shared block), once in each application of that block: an attention after it runs
    once per application."""
    if c.name is None or c.name == "" or c.in_attention:
        return False
    n = p.n_calls(c.module)
    return n == 1 or (scope >= 0 and _once_per_application(p, c.module, p.calls[scope].module))


def _once_per_application(p: Pass, module: nn.Module, block: nn.Module) -> bool:
    """``module`` runs exactly once inside each call of ``block`` and nowhere else."""
    calls, blocks = p.calls_of.get(id(module), []), p.calls_of.get(id(block), [])
    if module is block or len(calls) != len(blocks):
        return False
    owners = set()
    for c in calls:
        owner = next((a for a in p.ancestors_call(c)[1:] if p.calls[a].module is block), None)
        if owner is None:
            return False
        owners.add(owner)
    return len(owners) == len(blocks)


def _block_call(p: Pass, c: Call) -> bool:
    """A module that can be a block: named, outside attention modules, possibly applied several times (a shared
    block: one module, which its attention follows at every application), never inside itself."""
    return bool(c.name) and not c.in_attention and \
        not any(p.calls[a].module is c.module for a in p.ancestors_call(c.index)[1:])


def _aliases(p: Pass, module: nn.Module) -> list[str]:
    return [n for n, m in p.model.named_modules(remove_duplicate=False) if m is module and n]


def _attachable(c: Call) -> bool:
    """An output attention can run after this module: one tensor out, and not a container (a child added to a
    Sequential, ModuleList or ModuleDict would become one of its layers)."""
    return len(c.outputs) == 1 and len(c.out_shape) == 4 and not isinstance(c.module, CONTAINERS)


def _descend(p: Pass, c: Call, key: Key, scope: int = -1) -> Call:
    """Follow an ``nn.Sequential`` target down to the last layer that returned the same value."""
    while isinstance(c.module, nn.Sequential) and len(c.module) > 0:
        last = next((p.calls[i] for i in p.calls_of.get(id(c.module[-1]), []) if p.calls[i].parent == c.index), None)
        if last is None or key not in last.outputs or not _usable(p, last, scope):
            break
        c = last
    return c


def _branch_target(p: Pass, key: Key, scope: int) -> Call | None:
    """The module below call ``scope`` whose output is the branch value ``key`` (see the module docstring)."""
    passthrough: Call | None = None
    for _ in range(10_000):
        returning = [c for c in p.calls if key in c.outputs and _below(p, c.index, scope)]
        real = [c for c in returning if key not in c.inputs]
        for c in returning:
            if key in c.inputs and _usable(p, c, scope) and _attachable(c) and passthrough is None:
                passthrough = c  # identity / dropout / drop path in evaluation
        for c in sorted((c for c in real if _usable(p, c, scope)), key=lambda c: _depth(p, c.index)):
            c = _descend(p, c, key, scope)
            if _attachable(c):
                return c
        prod = p.producer.get(key)
        if prod is None:
            break
        op = p.ops[prod]
        ins = list(dict.fromkeys(op.inputs))
        if len(ins) == 1 and p.shapes.get(ins[0]) == p.shapes.get(key) and op.name not in ADD_OPS | CAT_OPS:
            key = ins[0]  # a per-element operation of one feature map (scale, activation)
            continue
        break
    return passthrough


def _consumers(p: Pass, key: Key) -> int:
    return sum(1 for op in p.ops if key in op.inputs)


def _residual(p: Pass, op_index: int) -> tuple[Key, Key, int, set[Key]] | None:
    """(source, branch, shortcut convolutions, branch path) of a residual addition, or None."""
    op = p.ops[op_index]
    ins = list(dict.fromkeys(op.inputs))
    if len(ins) != 2 or any(len(p.shapes.get(k, ())) != 4 for k in ins) or p.shapes[ins[0]] != p.shapes[ins[1]]:
        return None
    a, b = ins
    for s, r in ((a, b), (b, a)):  # identity shortcut: r computed from s
        floor = p.producer.get(s, -1) + 1
        anc = p.back(r, floor)
        if s in anc:
            path = p.reach({s}, floor, op_index) & anc
            if p.convs_on(path - {s}):
                return s, r, 0, path - {s}
            return None
    call = p.calls[op.call] if op.call >= 0 else None
    if call is None:
        return None
    start = call.first_op
    for x in call.inputs:  # projection shortcut: both from the input of the module running the addition
        reach = p.reach({x}, start, op_index)
        if a not in reach or b not in reach:
            continue
        pa, pb = reach & p.back(a, start), reach & p.back(b, start)
        if pa & pb != {x}:
            continue
        ca, cb = len(p.convs_on(pa - {x})), len(p.convs_on(pb - {x}))
        if max(ca, cb) == 0:
            continue
        if ca > cb or (ca == cb and len(pa) >= len(pb)):
            return x, a, cb, pa - {x}
        return x, b, ca, pb - {x}
    return None


def _make(p: Pass, name: str, module: nn.Module | None, target: Call, key: Key, kind: str,
          convs: set[int] | None = None) -> Block:
    shape = p.shapes.get(key) or target.out_shape
    return Block(name, module, target.name or "", target.module, shape[1], p.reduction(shape), kind, target.index,
                 convs or set(), _consumers(p, key))


def _conv_modules(p: Pass, path: set[Key]) -> set[int]:
    return {op.conv_module for op in p.convs_on(path) if op.conv_module != -1}


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def find_blocks(p: Pass) -> tuple[list[Block], list[str]]:
    """The blocks of the recorded network in forward order, and notes on what was read but not usable."""
    notes: list[str] = []
    root = 0 if p.calls and p.calls[0].module is p.model else -1
    found: dict[object, Block] = {}

    # overrides first: a registered block type's attribute is its branch output
    registered: list[str] = []
    for c in p.calls:
        rule = block_rule(c.module) if c.name else None
        if rule is None or c.in_attention or any(_inside(c.name, r) for r in registered):
            continue
        tname = f"{c.name}.{rule}"
        try:
            tmod = p.model.get_submodule(tname)
        except AttributeError:
            raise ValueError(f"{type(c.module).__name__} has no submodule {rule!r} (its register_block rule)") from None
        while isinstance(tmod, nn.Sequential) and len(tmod) > 0:
            tname, tmod = f"{tname}.{len(tmod) - 1}", tmod[-1]
        tc = p.call_of(tmod)
        if tc is None or len(tc.out_shape) != 4:
            notes.append(f"{c.name}: the registered branch output {tname} did not run or is not a feature map")
            continue
        registered.append(c.name)
        found[id(c.module)] = _make(p, c.name, c.module, tc, tc.outputs[0], "registered")

    def covered(name: str) -> bool:
        return any(_inside(name, r) for r in registered)

    residual: dict[object, tuple[int, int, Block]] = {}  # block key -> (shortcut convs, op index, block)
    multi: list[Block] = []
    for op in p.ops:
        if op.call < 0 or p.calls[op.call].in_attention:
            continue
        call = p.calls[op.call]
        if call.name is not None and covered(call.name) and call.index != root:
            continue
        if op.name in ADD_OPS:
            res = _residual(p, op.index)
            if res is None:
                continue
            source, branch, short_convs, path = res
            module_block = call.index != root and source in call.inputs and _block_call(p, call)
            scope = call.index
            target = _branch_target(p, branch, scope)
            if target is None:
                notes.append(_no_target(p, call, branch))
                continue
            if module_block:
                blk = _make(p, call.name, call.module, target, branch, "residual")
                bkey: object = id(call.module)
            else:
                blk = _make(p, target.name or "", None, target, branch, "residual", _conv_modules(p, path))
                bkey = ("path", id(target.module))  # one block however often the path runs (a loop in forward)
            prev = residual.get(bkey)
            if prev is None or (short_convs, -op.index) <= (prev[0], -prev[1]):
                residual[bkey] = (short_convs, op.index, blk)
        elif op.name in CAT_OPS and len(set(op.inputs)) >= 2 \
                and len(p.shapes.get(op.outputs[0], ())) == 4 and all(len(p.shapes.get(k, ())) == 4 for k in op.inputs):
            ins = list(dict.fromkeys(op.inputs))
            at_root = call.index == root
            if at_root:  # a concatenation in the network's own forward: its sources are operands the others grew from
                sources = {k for k in ins if any(k in p.back(o, p.producer.get(k, -1) + 1) for o in ins if o != k)}
                start = min((p.producer.get(k, -1) + 1 for k in sources), default=op.index)
            else:
                sources, start = set(call.inputs), call.first_op
            free = p.reach(sources, start, op.index, through_conv=False)
            full = p.reach(sources, start, op.index)
            short = [k for k in ins if k in free]
            branches = [k for k in ins if k in full and k not in free]
            if not branches:
                continue
            if short and len(branches) == 1 and _usable(p, call) and not at_root:  # split shortcut (ShuffleNet)
                target = _branch_target(p, branches[0], call.index)
                if target is not None:
                    residual.setdefault(id(call.module), (1, op.index, _make(p, call.name, call.module, target,
                                                                              branches[0], "split")))
            elif short:  # dense connections: each layer that produced a branch is a block (DenseNet)
                for k in branches:
                    kids = [c for c in p.calls if k in c.outputs and c.parent == call.index and _usable(p, c)]
                    if not kids:
                        continue
                    kid = kids[0]
                    target = _branch_target(p, k, kid.index) or (kid if _attachable(kid) else None)
                    if target is None:
                        continue
                    residual.setdefault(id(kid.module), (1, op.index, _make(p, kid.name, kid.module, target, k,
                                                                             "dense")))
            elif len(branches) >= 2 and _usable(p, call) and _attachable(call) and not at_root:  # Inception, Fire
                multi.append(_make(p, call.name, call.module, call, call.outputs[0] if call.outputs else op.outputs[0],
                                   "multi_branch"))
    blocks = [b for _, _, b in residual.values()] + [b for b in found.values()]
    # innermost wins: a block that contains another block's module is dropped (registered ones stay)
    named = [b for b in blocks if b.module is not None]
    blocks = [b for b in blocks if b.kind == "registered" or b.module is None
              or not any(o is not b and o.module is not None and _inside(o.name, b.name) and o.name != b.name
                         for o in named)]
    taken = [b.name for b in blocks if b.module is not None]
    blocks += _siblings(p, blocks, taken)
    for b in multi:  # outermost-only blocks without a shortcut, where no other block is
        if id(b.module) in {id(x.module) for x in blocks}:
            continue
        if any(_inside(b.name, t) or _inside(t, b.name) for t in taken):
            continue
        blocks.append(b)
        taken.append(b.name)
    blocks = _shared(p, blocks, notes)
    blocks.sort(key=lambda b: b.order)
    return blocks, list(dict.fromkeys(notes))


def _no_target(p: Pass, call: Call, branch: Key) -> str:
    """Why the residual branch ``branch`` of ``call`` has no module to attach to."""
    where = call.name or type(call.module).__name__
    shared = [c for c in p.calls if branch in c.outputs and _below(p, c.index, call.index) and c.name
              and not c.in_attention and p.n_calls(c.module) > 1]
    if shared:
        c = shared[0]
        return (f"{where}: its residual branch ends in {c.name}, one module that runs {p.n_calls(c.module)} times "
                "outside one block module (e.g. a loop in the network's forward): no module attached there, as it "
                "would run at every call; make the repeated part a module of its own (it then gets one module, run "
                "at each application) or give each application its own layers")
    return f"{where}: a residual branch ends in a function, not a module (nothing to attach its output attention to)"


def _shared(p: Pass, blocks: list[Block], notes: list[str]) -> list[Block]:
    """Blocks whose branch output module runs more than once (a block applied in a loop, or registered under
    several names): kept, placed at their first application, with a note, when every application is at one
    output stride; otherwise left without a module, with a note saying why."""
    out = []
    for b in blocks:
        calls = p.calls_of.get(id(b.target), [])
        if len(calls) <= 1:
            out.append(b)
            continue
        what = b.module if b.module is not None else b.target
        names = _aliases(p, what)
        also = f", registered as {', '.join(names)}" if len(names) > 1 else ""
        label = "block" if b.module is not None else "residual path"
        strides = sorted({p.reduction(p.calls[i].out_shape) for i in calls})
        channels = sorted({p.calls[i].out_shape[1] for i in calls if len(p.calls[i].out_shape) > 1})
        if len(strides) > 1 or len(channels) > 1:
            what, vals = ("output strides", strides) if len(strides) > 1 else ("channel counts", channels)
            notes.append(f"{b.name}: one {label} module applied {len(calls)} times{also}, at {what} "
                         f"{', '.join(map(str, vals[:-1]))} and {vals[-1]}: no module attached to it (one module "
                         "cannot sit in two stages); give each application its own block to attach to each")
            continue
        b.order = calls[0]
        notes.append(f"{b.name}: one {label} module applied {len(calls)} times{also}: it counts as one block and "
                     f"its module after {b.target_name} runs at each application (shared weights)")
        out.append(b)
    return out


def _relative(block: Block) -> list[str]:
    rel = block.target_name[len(block.name) + 1:] if block.name else block.target_name
    return rel.split(".") if rel else []


def _resolve(module: nn.Module, parts: list[str], template: nn.Module) -> tuple[str, nn.Module] | None:
    """``parts`` (a path in ``template``) resolved in ``module``; an index that was the last layer of a
    Sequential in the template is the last layer of the module's Sequential."""
    cur, tcur, names = module, template, []
    for part in parts:
        if part.isdigit() and isinstance(tcur, nn.Sequential) and isinstance(cur, nn.Sequential):
            i = len(cur) - 1 if int(part) == len(tcur) - 1 else int(part)
            if not 0 <= i < len(cur):
                return None
            cur, tcur, part = cur[i], tcur[int(part)], str(i)
        else:
            nxt = cur._modules.get(part)
            if nxt is None:
                return None
            cur, tcur = nxt, tcur._modules.get(part) or nxt
        names.append(part)
    return ".".join(names), cur


def _siblings(p: Pass, blocks: list[Block], taken: list[str]) -> list[Block]:
    """Modules of the same class as a found block (that class's first block often has no shortcut)."""
    out: list[Block] = []
    templates = {}
    for b in blocks:
        if b.module is not None and b.kind in ("residual", "split") and not isinstance(b.module, CONTAINERS):
            templates.setdefault(type(b.module), b)
    if not templates:
        return out
    for c in p.calls:
        t = templates.get(type(c.module))
        if t is None or not _usable(p, c) or any(_inside(c.name, n) or _inside(n, c.name) for n in taken):
            continue
        rel = _relative(t)
        hit = _resolve(c.module, rel, t.module) if rel else None
        if hit is None:
            continue
        tname, tmod = hit
        tc = p.call_of(tmod)
        if tc is None or not _usable(p, tc) or not _attachable(tc) or not _below(p, tc.index, c.index):
            continue
        out.append(_make(p, c.name, c.module, tc, tc.outputs[0], "sibling"))
        taken.append(c.name)
    # the same family: classes of the block classes' Python module, placed beside the found blocks (timm's
    # EfficientNet opens with a depthwise-separable block and closes with a conv block, neither with a shortcut)
    found = [b for b in blocks + out if b.module is not None and b.kind in ("residual", "split", "sibling")]
    families = {type(b.module).__module__ for b in found}
    parents = {b.name.rpartition(".")[0] for b in found}
    grandparents = {n.rpartition(".")[0] for n in parents if n}
    for c in p.calls:
        if c.index == 0 or type(c.module).__module__ not in families or isinstance(c.module, CONTAINERS) \
                or not _usable(p, c) or len(c.out_shape) != 4 or not c.outputs:
            continue
        parent = c.name.rpartition(".")[0]
        if parent not in parents and (not parent or parent.rpartition(".")[0] not in grandparents):
            continue
        if any(_inside(c.name, n) or _inside(n, c.name) for n in taken):
            continue
        if not any(op.conv for op in p.ops[c.first_op:c.last_op]):
            continue
        target = _branch_target(p, c.outputs[0], c.index)
        if target is None:
            continue
        out.append(_make(p, c.name, c.module, target, c.outputs[0], "family"))
        taken.append(c.name)
    return out


def stage_outputs(p: Pass) -> list[Block]:
    """Networks without blocks (VGG-like): per output stride with a convolution, the last layer called at it."""
    out: list[Block] = []
    convs = [op for op in p.ops if op.conv and len(op.out_shape) == 4  # not heads after global pooling
             and min(p.shapes.get(op.inputs[0], (0, 0, 2, 2))[-2:]) > 1]
    if not convs:
        return out
    by_red: dict[int, int] = {}  # reduction -> index of the last conv op at it
    for op in convs:
        by_red[p.reduction(op.out_shape)] = op.index
    for red, last_conv in sorted(by_red.items()):
        channels = p.ops[last_conv].out_shape[1]
        best = None
        for c in p.calls:
            if not _usable(p, c) or c.index == 0 or list(c.module.children()) or not _attachable(c):
                continue
            if c.last_op <= last_conv or len(c.out_shape) != 4 or c.out_shape[1] != channels \
                    or p.reduction(c.out_shape) != red:
                continue
            if best is None or c.last_op >= best.last_op:
                best = c
        if best is None:
            conv_call = next((c for c in p.calls if c.first_op <= last_conv < c.last_op and not list(c.module.children())
                              and _usable(p, c)), None)
            best = conv_call
        if best is not None and best.outputs:
            out.append(_make(p, best.name, None, best, best.outputs[0], "stage"))
    return out


def assign_stages(blocks: list[Block]) -> list[int]:
    """Stage and index of every block (blocks of one output stride form a stage); returns blocks per stage."""
    reductions = sorted({b.reduction for b in blocks})
    counts = [0] * len(reductions)
    for b in blocks:
        b.stage = reductions.index(b.reduction)
        b.index = counts[b.stage]
        counts[b.stage] += 1
    return counts
