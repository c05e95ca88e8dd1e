"""`graphrun serve --exported model.pt2`: a torch.export archive as a ModelSource, its dynamic dims found.

The program's user inputs name the inputs and its saved example inputs are the example. Dim 0 of every
input must be dynamic (the batch). Any other dynamic axis is served in buckets (dims.py): axes that
share one symbol in the export (the same `torch.export.Dim`) are one dim. The export keeps no Dim
names, so a dim is named after its first input and axis, e.g. "input_ids:1", and `--dim-rungs
input_ids:1=16,32,64,128` gives its rungs. A dim given no rungs takes powers of two from 16 up to the
export's upper bound (`Dim("seq", max=512)`: 16, 32, .., 512); with no bound, start-up stops and names
the flag. Padded positions hold 0; `--mask-input NAME` names the input that marks real positions (1)
and padding (0), which must carry one of the dims. Without a mask a model whose outputs change under
padding fails its padded-size verification, and those buckets run eager (never a wrong answer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from graphrun.errors import ConfigError
from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.source import ModelSource

log = logging.getLogger(__name__)

DEFAULT_LOWEST_RUNG = 16
MAX_DEFAULT_TOP = 8192  # a bound above this gets no default ladder: the flag must give one


def load_exported(
    path: Path,
    device: torch.device,
    dim_rungs: Mapping[tuple[str, int], Sequence[int]] | None = None,
    mask: str | None = None,
) -> ModelSource:
    """A torch.export archive (.pt2) as a ModelSource on `device`.

    dim_rungs: (input name, axis) -> rungs of the dim that axis carries; mask: the mask input's name."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds on a file that is not an archive
        raise ConfigError(
            f"--exported {path}: not a torch.export archive ({type(exc).__name__}: {exc})"
        ) from exc
    if program.example_inputs is None:
        raise ConfigError(f"--exported {path}: the archive has no example inputs; export with example args")
    args, kwargs = program.example_inputs
    if kwargs:
        raise ConfigError(f"--exported {path}: keyword inputs are not served; export with positional inputs")
    names = list(program.graph_signature.user_inputs)
    shapes = _placeholder_shapes(program, names)
    _check_batch_dynamic(shapes, path)
    dims = _dynamic_dims(program, shapes, dict(dim_rungs or {}), path)
    if mask is not None and not any(mask in dim.axes for dim in dims):
        carried = {dim.name: sorted(dim.axes) for dim in dims} or "none but the batch"
        raise ConfigError(
            f"--mask-input {mask!r} must be an input that carries a dynamic dim; the program's inputs are "
            f"{names}, its dynamic dims (inputs) {carried}"
        )
    fn = program.module().to(device)
    example = tuple((name, tensor.to(device)) for name, tensor in zip(names, args, strict=True))
    log.info(
        "loaded %s: inputs %s on %s; dynamic dims %s",
        path,
        names,
        device,
        {dim.name: list(dim.ladder) for dim in dims} or "none but the batch",
    )
    return ModelSource(fn, example, name=path.stem, dims=dims, mask=mask)


def _placeholder_shapes(program: torch.export.ExportedProgram, names: list[str]) -> dict[str, torch.Size]:
    shapes = {node.name: node.meta["val"].shape for node in program.graph.nodes if node.op == "placeholder"}
    return {name: shapes[name] for name in names if name in shapes}


def _check_batch_dynamic(shapes: Mapping[str, torch.Size], path: Path) -> None:
    for name, shape in shapes.items():
        if len(shape) == 0 or not isinstance(shape[0], torch.SymInt):
            raise ConfigError(
                f"--exported {path}: input {name!r} has a fixed batch (shape {list(shape)}); export with "
                "dynamic_shapes marking dim 0, e.g. {0: torch.export.Dim('batch')}"
            )


def _dynamic_dims(
    program: torch.export.ExportedProgram,
    shapes: Mapping[str, torch.Size],
    rungs: dict[tuple[str, int], Sequence[int]],
    path: Path,
) -> tuple[DynamicDim, ...]:
    """One DynamicDim per symbol on a non-batch axis, in input order; every --dim-rungs entry used."""
    batch_symbols = {str(shape[0]) for shape in shapes.values()}
    axes_of: dict[str, dict[str, int]] = {}  # symbol -> {input: axis}, first seen first
    for name, shape in shapes.items():
        for axis, size in enumerate(shape):
            if axis == 0 or not isinstance(size, torch.SymInt):
                continue
            symbol = str(size)
            if symbol in batch_symbols or not symbol.isidentifier():
                raise ConfigError(
                    f"--exported {path}: input {name!r} axis {axis} is {symbol}, tied to the batch or "
                    "computed from another dim; export each dynamic axis as its own Dim"
                )
            axes_of.setdefault(symbol, {}).setdefault(name, axis)
    dims = []
    used: set[tuple[str, int]] = set()
    for symbol, axes in axes_of.items():
        keys = [key for key in rungs if axes.get(key[0]) == key[1]]
        if len(keys) > 1:
            raise ConfigError(f"--dim-rungs gives {keys}, which the export ties to one dim: give one")
        first = next(iter(axes.items()))
        name = f"{first[0]}:{first[1]}"
        low, high = _bounds(program, symbol)
        ladder = tuple(rungs[keys[0]]) if keys else _default_rungs(name, low, high, path)
        bad = [r for r in ladder if r < low or (high is not None and r > high)]
        if bad:
            raise ConfigError(
                f"--dim-rungs {name}: rungs {bad} are outside the export's range [{low}, {high or 'inf'}]"
            )
        used.update(keys)
        dims.append(DynamicDim(name, axes, ladder))
    unknown = sorted(set(rungs) - used)
    if unknown:
        found = [f"{d.name} (inputs {dict(d.axes)})" for d in dims] or ["none but the batch"]
        raise ConfigError(
            f"--dim-rungs {', '.join(f'{n}:{a}' for n, a in unknown)}: no such dynamic axis in the export; "
            f"its dynamic dims: {', '.join(found)}"
        )
    return tuple(dims)


def _bounds(program: torch.export.ExportedProgram, symbol: str) -> tuple[int, int | None]:
    """The export's [lower, upper] for `symbol` (upper None: unbounded)."""
    for key, value_range in program.range_constraints.items():
        if str(key) == symbol:
            upper = value_range.upper  # a sympy Integer, or torch's int_oo (unbounded: it says is_finite)
            return max(1, int(value_range.lower)), int(upper) if upper.is_Integer else None
    return 1, None


def _default_rungs(name: str, low: int, high: int | None, path: Path) -> tuple[int, ...]:
    if high is None or high > MAX_DEFAULT_TOP:
        bound = "no upper bound" if high is None else f"an upper bound of {high}"
        raise ConfigError(
            f"--exported {path}: dim {name} is dynamic with {bound}; give its rungs, e.g. "
            f"--dim-rungs {name}=16,32,64,128 (or export it with Dim(..., max=N) for a default ladder)"
        )
    ladder = []
    size = DEFAULT_LOWEST_RUNG
    while size < high:
        if size >= low:
            ladder.append(size)
        size *= 2
    return (*ladder, high)
