"""The one error a bad tensor raises: it names the tensor and the rule it broke (HTTP 400)."""

from __future__ import annotations

from typing import Any

from graphrun.errors import GraphrunError

# the rules, as the `code` of the 400 answer
RULES = (
    "invalid_body",  # not a JSON object of the shape the endpoint takes
    "encoding",  # mixed encodings, or bytes that do not decode
    "unknown_name",  # a tensor the model does not take
    "missing",  # a tensor the model takes is not there
    "dtype",
    "rank",
    "static_dim",  # a dimension the model fixes differs
    "batch",  # the tensors disagree on the batch size, or it is 0
    "dynamic_dim",  # the tensors disagree on a declared dynamic dim (a length), or it is 0
    "too_large",  # over the rows or elements limit, or a dynamic dim above its top rung
    "nan",  # NaN or infinity in a tensor the model declares finite
    "range",  # a value outside the range the model declares (a token id beyond the vocabulary)
)


class TensorError(GraphrunError, ValueError):
    """A request's tensor breaks `rule` (one of RULES); `name` is the tensor ("" for the whole body)."""

    def __init__(self, name: str, rule: str, message: str) -> None:
        assert rule in RULES, rule
        super().__init__(f"{name}: {message}" if name else message)
        self.name, self.rule = name, rule

    def __reduce__(self) -> tuple[Any, ...]:
        message = str(self).removeprefix(f"{self.name}: ") if self.name else str(self)
        return (type(self), (self.name, self.rule, message))
