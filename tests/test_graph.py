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
    assert g.nodes["0"]["shape"] == (5, 3) and g.nodes["0"]["fx"] == "_0"  # named by module path


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.fc1 = torch.nn.Linear(3, 4), torch.nn.Linear(4, 4)
        self.fc2, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.fc2(torch.tanh(self.fc1(h))) + h)


def test_identity_vertices_are_nodes_of_the_levelled_fx_graph():
    from pccompile.frontend.level import pc_identity

    net = _Residual().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    pcm = pccompile.convert(net, x)
    gm = pcm.plan.gm
    ids = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is pc_identity]
    assert [n.meta["pc"].role for n in ids] == ["identity"] * 3
    assert [n.meta["pc"].level for n in ids] == [5, 4, 3]  # inp (6) -> add (2) padded
    assert [n.args[0].name for n in ids] == ["inp", "pc_identity", "pc_identity_1"]
    add = next(n for n in gm.graph.nodes if n.name == "add")
    assert add.args[1] is ids[-1]
    assert "pc_identity" in pcm.code  # the generated forward shows them too
    assert torch.equal(gm(x), net(x))
    # the networkx view is built from those nodes
    view = {v: d["fx"] for v, d in pcm.graph.nodes(data=True) if d["kind"] == "identity"}
    assert view == {
        "inp->add:1": "pc_identity",
        "inp->add:2": "pc_identity_1",
        "inp->add:3": "pc_identity_2",
    }  # named by the edge they pad, from its source
    # without levelling, no identity node and the skip edge spans 4 levels
    raw = pccompile.convert(net, x, level=False)
    assert not any(n.target is pc_identity for n in raw.plan.gm.graph.nodes)
    assert not raw.plan.leveled and pcm.plan.leveled


class _TupleSkip(torch.nn.Module):
    """A vertex with a tuple output read through getitem by two readers at different levels."""

    def __init__(self):
        super().__init__()
        self.inp, self.a, self.b = (
            torch.nn.Linear(3, 6),
            torch.nn.Linear(3, 3),
            torch.nn.Linear(3, 3),
        )

    def forward(self, x):
        left, right = torch.chunk(self.inp(x), 2, dim=-1)  # one vertex, a tuple of two
        deep = self.b(torch.tanh(self.a(left)))
        return deep * right + torch.sin(torch.cos(right))  # right: read at levels 2 and 3


def test_levelling_copies_data_movement_for_each_padded_reader():
    from pccompile.testing import train_against_bp

    net = _TupleSkip().double()
    batches = [((torch.randn(4, 3, dtype=torch.float64),), torch.randn(4, 3, dtype=torch.float64))]
    pcm = pccompile.convert(net, batches[0][0][0])
    getitems = [n for n in pcm.plan.gm.graph.nodes if n.meta["pc"].role == "struct"]
    padded = [n for n in getitems if n.args[0].meta["pc"].role == "identity"]
    readers = sorted(u.name for n in padded for u in n.users)
    assert readers == ["cos", "mul"]  # one copied getitem per reader, each after its identities
    for mode in ("efficient", "faithful"):
        rep = train_against_bp(net, batches, torch.nn.functional.mse_loss, "zil", mode=mode)
        assert rep.ok(1e-12), rep.problems(1e-12)
