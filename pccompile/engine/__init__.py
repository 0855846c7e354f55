"""The engine: value nodes, error nodes, local VJPs and the energy; one engine under every rule.

``plan``      compile an annotated, levelled GraphModule into a :class:`Plan` (once per mode)
``evaluate``  the feed-forward pass and re-evaluations of a vertex (:func:`feed_forward`)
``vjp``       the local VJP of one vertex, the output's feedback
``grads``     per-use parameter contributions, written to ``p.grad`` like ``backward()``
``energy``    the PC energy as a plain module (what the ONNX ``energy`` export writes)

Notation: value node ``x_v`` (a tensor per float output of the vertex), prediction
``mu_v = g_v(x_par)``, error node ``eps_v = x_v - mu_v``, energy
``F = sum_v 1/2 ||eps_v||^2 + L(mu_out, y)``. Sign convention: the output's error is
``e_out = -dL/dmu_out``; a parameter use contributes ``-(dg/dtheta)^T eps`` to ``p.grad``
(= ``+dL/dtheta`` when the rule is exact).
"""

from .evaluate import FeedForward, VertexState, call_vertex, feed_forward, leafify, rebuild, walk
from .grads import Grads
from .plan import Plan, Vertex, compile_plan
from .vjp import add_to, loss_feedback, vjp

__all__ = [
    "FeedForward",
    "Grads",
    "Plan",
    "Vertex",
    "VertexState",
    "add_to",
    "call_vertex",
    "compile_plan",
    "feed_forward",
    "leafify",
    "loss_feedback",
    "rebuild",
    "vjp",
    "walk",
]
