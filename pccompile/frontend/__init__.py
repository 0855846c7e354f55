"""The front end: an ``nn.Module`` becomes an annotated, levelled ``fx.GraphModule``.

Each pass is one module with a Reads/Writes/Invariants header, run in this order by
:func:`pccompile.api.build_plan`:

``capture``        torch.fx trace with pccompile's leaf policy (calls ``functionalize``)
``functionalize``  in-place ops out of place; buffer updates as ``assign_buffer`` nodes
``unroll``         nn.RNN/LSTM/GRU calls become one cell vertex per time step
``annotate``       ``node.meta["pc"]``: each node's role and op rule; ``check_trace`` compares
                   the traced graph with eager
``level``          levels per vertex, identity vertices inserted as FX nodes on skip edges
"""
