"""Each strategy freezes exactly what it claims, and frozen BatchNorm never moves."""

import pytest
import torch
from torch import nn

from medtl.models.backbones import get_spec
from medtl.core.config import ModelConfig
from medtl.core.errors import MedtlError
from medtl.core.config import STRATEGIES
from medtl.core.strategies import REGISTRY, get_strategy
from medtl.models.strategies import build_classifier, effective_weights, param_groups


def _trainable_modules(model, spec):
    """For each stage of the spec: True if all its params train, False if none, else 'mixed'."""
    out = []
    for stage in spec.stages:
        flags = [p.requires_grad for name in stage for p in model.backbone.get_submodule(name).parameters()]
        out.append(all(flags) if all(flags) or not any(flags) else "mixed")
    return out


def test_linear_freezes_whole_backbone_and_keeps_bn_in_eval():
    model = build_classifier(ModelConfig(backbone="resnet18", strategy="linear", weights="none"), 1)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert all(not m.training for m in model.backbone.modules())
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 32) * 5 + 3).sum().backward()
    opt.step()
    torch.testing.assert_close(bn.running_mean, before)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_partial_trains_exactly_the_top_n_stages(n):
    spec = get_spec("resnet18")
    model = build_classifier(ModelConfig(backbone="resnet18", strategy="partial", unfreeze_stages=n,
                                         weights="none"), 1)
    flags = _trainable_modules(model, spec)
    assert flags == [False] * (len(spec.stages) - n) + [True] * n
    model.train()
    assert not model.backbone.bn1.training and model.backbone.layer4[0].bn1.training
    groups = param_groups(model, 1e-3, 0.1)
    assert groups[1]["lr"] == pytest.approx(1e-4)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_partial_on_lite_trains_the_head_convolution_too():
    model = build_classifier(ModelConfig(backbone="efficientnet_lite0", strategy="partial", unfreeze_stages=1), 1)
    assert model.backbone.conv_head.weight.requires_grad and model.backbone.blocks[6][0].conv_pw.weight.requires_grad
    assert not model.backbone.blocks[5][0].conv_pw.weight.requires_grad


def test_full_and_scratch_train_everything_but_only_full_is_pretrained():
    full = build_classifier(ModelConfig(backbone="efficientnet_lite0", strategy="full"), 3)
    scratch = build_classifier(ModelConfig(backbone="efficientnet_lite0", strategy="scratch"), 3)
    pretrained = build_classifier(ModelConfig(backbone="efficientnet_lite0", strategy="linear"), 3)
    for model in (full, scratch):
        assert all(p.requires_grad for p in model.parameters())
    assert isinstance(full.head, nn.Linear) and full.head.out_features == 3
    torch.testing.assert_close(full.backbone.conv_stem.weight, pretrained.backbone.conv_stem.weight)
    assert not torch.allclose(scratch.backbone.conv_stem.weight, pretrained.backbone.conv_stem.weight)


def test_mlp_head_and_bad_choices():
    model = build_classifier(ModelConfig(backbone="resnet18", strategy="full", weights="none", head="mlp",
                                         hidden=16, dropout=0.3), 1)
    assert isinstance(model.head, nn.Sequential) and model.head[-1].in_features == 16
    with pytest.raises(MedtlError, match="valid: auto, scratch, linear, partial, full"):
        build_classifier(ModelConfig(backbone="resnet18", strategy="frozen"), 1)
    with pytest.raises(MedtlError, match="must be 1..4"):
        build_classifier(ModelConfig(backbone="resnet18", strategy="partial", unfreeze_stages=5, weights="none"), 1)
    with pytest.raises(MedtlError, match="drop --weights"):
        build_classifier(ModelConfig(backbone="resnet18", strategy="scratch", weights="imagenet"), 1)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v3_large", "inception_v3",
                                  "efficientnet_lite0"])
def test_frozen_prefix_split_reproduces_the_backbone(name):
    from medtl.models.strategies import Prefix, split_frozen_prefix

    model = build_classifier(ModelConfig(backbone=name, strategy="partial", unfreeze_stages=1, weights="none"), 1)
    x = torch.randn(2, 3, 75, 75)
    boundary, top, shape = split_frozen_prefix(model, x)
    assert boundary in model.frozen
    with torch.no_grad():
        act = Prefix(model.backbone.eval(), boundary)(x)
        torch.testing.assert_close(top.eval()(act.view(2, *shape)), model.backbone(x), atol=1e-4, rtol=1e-3)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable <= set(dict(top.named_parameters()))  # every trainable weight lives in the top


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_lp_ft_starts_fine_tuning_from_the_probed_head(image_tree, cache_dir, tmp_path, monkeypatch, head_init):
    """LP-FT: the head that fine-tuning starts from is the linear probe's best head, not a random one."""
    import medtl
    from medtl.training import cached, train as train_module

    probed, started = [], []
    probe_fit, ft_fit = cached.fit, train_module.fit

    def probe(model, *a, **k):
        out = probe_fit(model, *a, **k)
        probed.append({k: v.clone() for k, v in model.state_dict().items()})  # the probe's best head
        return out

    def fine_tune(model, *a, **k):
        started.append({k: v.clone() for k, v in model.head.state_dict().items()})
        return ft_fit(model, *a, **k)
    monkeypatch.setattr(cached, "fit", probe)
    monkeypatch.setattr(train_module, "fit", fine_tune)
    medtl.train(image_tree, "efficientnet_lite0", "full", epochs=1, image_size=32, out=tmp_path / "runs",
                head_init=head_init, probe_epochs=3, feature_views=0)
    assert len(started) == 1
    if head_init == "random":
        assert probed == []
        return
    assert len(probed) == 1 and probed[0].keys() == started[0].keys()
    assert all(torch.equal(probed[0][k], started[0][k]) for k in probed[0])


def test_label_smoothing_moves_the_training_targets_towards_uniform():
    from medtl.training.loop import make_loss
    logits, y = torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0])
    smoothed = make_loss(True, None, 0.2)(logits, y)
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], torch.tensor([0.9, 0.1]))
    assert smoothed == pytest.approx(expected.item()) and smoothed > make_loss(True, None)(logits, y)
    multi = torch.tensor([[3.0, 0.0, -1.0]])
    assert make_loss(False, None, 0.3)(multi, torch.tensor([0])) == pytest.approx(
        nn.functional.cross_entropy(multi, torch.tensor([0]), label_smoothing=0.3).item())


FITTING = [s for s in REGISTRY.values() if not s.chooses]  # every registered strategy that builds a model


@pytest.mark.parametrize("strategy", FITTING, ids=lambda s: s.name)
def test_every_registered_strategy_keeps_its_record(strategy):
    """The contract of a strategy record: one training step moves exactly what its record says trains, the
    modules it freezes keep their BatchNorm statistics, the head always trains, and a strategy that caches
    features trains no backbone weight."""
    torch.manual_seed(0)
    assert strategy.summary and strategy.name in STRATEGIES and 0 < strategy.step_cost <= 1
    model = build_classifier(ModelConfig(backbone="resnet18", strategy=strategy.name, weights="none"), 1)
    assert all(p.requires_grad for p in model.head.parameters())
    if strategy.cached == "features":
        assert model.frozen == ("",) and not any(p.requires_grad for p in model.backbone.parameters())
    if strategy.cached is not None or not strategy.fine_tunes:
        assert model.frozen  # what is cached is a frozen part
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: m.running_mean.clone() for n, m in model.backbone.named_modules() if n in model.frozen
             and isinstance(m, nn.BatchNorm2d)}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(4, 3, 32, 32) * 3 + 1).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == p.requires_grad or (p.requires_grad and p.grad is not None and not p.grad.any()), name
    for name, mean in stats.items():
        torch.testing.assert_close(model.backbone.get_submodule(name).running_mean, mean)
    weights = effective_weights(ModelConfig(backbone="resnet18", strategy=strategy.name))
    assert (weights == "none") == (not strategy.pretrained)


def test_auto_is_a_strategy_that_builds_no_model_and_names_are_checked():
    assert get_strategy("auto").chooses
    with pytest.raises(MedtlError, match="strategy auto builds no model of its own"):
        build_classifier(ModelConfig(backbone="resnet18", strategy="auto", weights="none"), 1)
    with pytest.raises(MedtlError, match="unknown strategy 'lora'; valid: auto, scratch"):
        get_strategy("lora")
