"""Where a piecewise graph is cut: the registry, the predicate, and marked module types under torch.export."""

import pytest
import torch
from prometheus_client import CollectorRegistry
from torch import nn

from graphrun import GraphRunner, mark_uncapturable, unmark_uncapturable
from graphrun.errors import ConfigError


def piecewise(model, args, **options):
    return GraphRunner(
        model, args, sizes=[1, 2, 4], backend="sim", mode="piecewise", registry=CollectorRegistry(), **options
    )


def test_a_predicate_splits_the_nodes_it_picks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).eval()
    run = piecewise(model, (torch.randn(4, 8),), split_predicate=lambda node: node.target == "1")
    assert run.status().splits == ("_1 (predicate: 1)",)
    assert all(r.captured for r in run.status())
    with torch.no_grad():
        x = torch.randn(3, 8)
        torch.testing.assert_close(run(x), model(x))
    assert run.stats.num_replayed == 1


@pytest.mark.parametrize("target", [3, int, "relu"])
def test_mark_refuses_what_is_not_an_op_or_a_module_type(target):
    with pytest.raises(ConfigError, match="mark_uncapturable takes"):
        mark_uncapturable(target)


def test_a_marked_module_type_splits_an_export_trace():
    """BERT cannot be traced by fx; export inlines its modules, and nn_module_stack still names them."""
    from piecewise_models import HFEncoder
    from transformers.models.bert.modeling_bert import BertSelfAttention

    torch.manual_seed(0)
    model = HFEncoder()
    ids, mask = torch.randint(0, 64, (4, 8)), torch.ones(4, 8, dtype=torch.long)
    mark_uncapturable(BertSelfAttention)
    try:
        run = piecewise(model, (ids, mask))
    finally:
        unmark_uncapturable(BertSelfAttention)
    marked = [s for s in run.status().splits if "(marked" in s]
    assert any("scaled_dot_product_attention" in s for s in marked), marked
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():
        torch.testing.assert_close(run(ids[:3], mask[:3]), model(ids[:3], mask[:3]))
