"""The PC graph: levels, identity vertices where skips jump levels, and the leveled invariant."""

import networkx as nx
import torch
import torchvision.models as tvm

import pccompile


def test_resnet18_identity_vertices_sit_exactly_on_the_skip_connections():
    model = tvm.resnet18(weights=None, num_classes=10).eval()
    pcm = pccompile.convert(model, torch.randn(1, 3, 32, 32))
    g = pcm.graph
    # the same graph before levelling
    raw = pccompile.convert(model, torch.randn(1, 3, 32, 32), level=False).graph
    skipping = {
        (u, c)
        for u, c in raw.edges
        if raw.nodes[u]["kind"] != "input" and raw.nodes[u]["level"] - raw.nodes[c]["level"] > 1
    }
    ids = [v for v, d in g.nodes(data=True) if d["kind"] == "identity"]
    assert {(g.nodes[v]["source"], g.nodes[v]["target"]) for v in ids} == skipping
    # The 8 BasicBlocks: 5 plain skips x -> add jump 6 levels (5 identities each); 3 downsample
    # skips x -> downsample.0 jump 4 levels (3 identities each).
    targets = sorted(g.nodes[c]["op"] for _, c in skipping)
    assert targets.count("function:add") == 5
    assert sum(t.endswith("downsample.0") for t in targets) == 3
    assert len(ids) == 5 * 5 + 3 * 3
    for v in ids:
        assert g.nodes[v]["params"] == () and g.in_degree(v) == 1 and g.out_degree(v) == 1
    # Leveled: every vertex's children sit exactly one level below it.
    for v, d in g.nodes(data=True):
        if d["kind"] in ("op", "identity"):
            for c in g.successors(v):
                assert g.nodes[c]["level"] == d["level"] - 1, (v, c)
    assert g.nodes["output"]["level"] == 0 and nx.is_directed_acyclic_graph(g)
    assert pcm.plan.depth == max(d["level"] for _, d in g.nodes(data=True) if d["kind"] != "input")


def test_graph_attributes_and_parameter_uses():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    pcm = pccompile.convert(net, torch.randn(5, 4))
    g = pcm.graph
    kinds = {v: d["kind"] for v, d in g.nodes(data=True)}
    assert sorted(kinds.values()) == ["input", "op", "op", "op", "output"]
    levels = {d["op"]: d["level"] for _, d in g.nodes(data=True)}
    assert levels == {"placeholder": 4, "module:0": 3, "module:1": 2, "module:2": 1, "output": 0}
    params = {d["op"]: d["params"] for _, d in g.nodes(data=True) if d["kind"] == "op"}
    assert params["module:0"] == ("0.bias", "0.weight") and params["module:1"] == ()
    assert g.nodes["_0"]["shape"] == (5, 3)
