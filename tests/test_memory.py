"""Recomputing stages in backward: same gradients, same batch-norm statistics, less kept for backward."""

import copy

import torch

from medtl.models.backbones import get_spec
from medtl.models.memory import recomputing


def _step(model, x, names):
    model.train()
    with recomputing(model, names) as done:
        model(x).logsumexp(1).sum().backward()
    return done


def _saved_bytes(model, x, names) -> int:
    seen = {}
    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with recomputing(model, names), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def test_recomputed_stage_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    spec = get_spec("efficientnet_lite0")
    plain = spec.builder()
    again = copy.deepcopy(plain)
    x = torch.randn(4, 3, 64, 64)
    assert _step(plain, x, ()) == []
    assert _step(again, x, spec.recompute) == list(spec.recompute)
    for (name, a), b in zip(plain.named_parameters(), again.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    for (name, a), b in zip(plain.named_buffers(), again.buffers()):
        assert torch.equal(a, b), name  # running statistics moved once, not twice
    assert "forward" not in again.get_submodule(spec.recompute[0]).__dict__  # restored on exit


def test_recomputing_keeps_less_for_backward_and_skips_frozen_stages():
    spec = get_spec("efficientnet_lite0")
    model = spec.builder().train()
    x = torch.randn(2, 3, 128, 128)
    full, lean = _saved_bytes(model, x, ()), _saved_bytes(model, x, spec.recompute)
    assert lean < 0.8 * full, (lean, full)
    for p in model.get_submodule(spec.recompute[0]).parameters():
        p.requires_grad = False
    with recomputing(model, spec.recompute) as done:
        assert done == [n for n in spec.recompute if n != spec.recompute[0]]


def test_auto_recomputes_on_cpus_only():
    from medtl.models.memory import recomputed
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert recomputed("efficientnet_lite0", "auto", cpu) == ("blocks.1",)
    assert recomputed("efficientnet_lite0", "auto", gpu) == ()
    assert recomputed("efficientnet_lite0", "on", gpu) == ("blocks.1",)
    assert recomputed("efficientnet_lite0", "off", cpu) == ()
    assert recomputed("resnet18", "on", cpu) == ()  # no stages measured for it
