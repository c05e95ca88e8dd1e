"""Piecewise graphs: capture the segments of a callable between ops that cannot be captured.

registry.py marks ops and module types; trace.py turns a callable into an fx graph; analysis.py finds
the split points (marked, or proven uncapturable); split.py cuts the graph; segment.py and backend.py
capture and replay the segments; plan.py puts them together for a GraphRunner in mode "piecewise".
"""

from graphrun.graphs.piecewise.plan import PiecewisePlan, build_plan
from graphrun.graphs.piecewise.registry import mark_uncapturable, unmark_uncapturable
from graphrun.graphs.piecewise.trace import Untraceable

__all__ = ["PiecewisePlan", "Untraceable", "build_plan", "mark_uncapturable", "unmark_uncapturable"]
