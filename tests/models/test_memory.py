"""Memory levers: recomputing stages in backward (same gradients and batch-norm statistics, less kept) and
micro-batches (the same update as the whole batch)."""

import copy

import pytest
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


def test_micro_batches_give_the_whole_batchs_update():
    """Chunks of 3 rows, gradients summed with each chunk's mean loss weighted by its share: the same step as
    one pass over the 8 rows (class-weighted BCE, no batch norm), and the same mean loss."""
    from medtl.core.config import TrainConfig
    from medtl.training.loop import Events, FitPlan, FitState, _train_epoch, make_loss, make_optimizer

    def one_step(micro):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        opt = make_optimizer([{"params": net.parameters()}], TrainConfig(optimizer="sgd", lr=0.5))
        x, y = torch.randn(8, 3, 2, 2), torch.tensor([0, 1, 1, 0, 1, 1, 1, 0])
        sizes = []
        net.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
        plan = FitPlan(TrainConfig(), make_loss(True, torch.tensor([2.0, 0.5])), torch.device("cpu"), micro=micro)
        loss = _train_epoch(net, [(x, y)], lambda t: t, opt, plan, Events(), FitState())
        assert sizes == {None: [8], 3: [3, 3, 2], 7: [4, 4]}[micro]  # the fewest equal chunks, never 7 + 1
        return loss, [p.detach().clone() for p in net.parameters()]
    whole = one_step(None)
    for micro in (3, 7):
        chunked = one_step(micro)
        assert chunked[0] == pytest.approx(whole[0], rel=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole[1], chunked[1]))
    torch.manual_seed(0)
    assert not torch.allclose(whole[1][0], torch.nn.Linear(12, 4).weight)  # the step moved the weights


def test_micro_batch_rule():
    from medtl.core.config import RuntimeConfig
    from medtl.training.loop import micro_batch
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert micro_batch(RuntimeConfig(), 224, cpu) == 16 and micro_batch(RuntimeConfig(), 112, cpu) == 64
    assert micro_batch(RuntimeConfig(), 224, gpu) is None and micro_batch(RuntimeConfig(micro_batch=5), 224, gpu) == 5
