"""Round 4, attach cases 1, 2 and 5: modes and frozen weights kept, one arm per canonical name."""
import pytest
import torch
import torchvision

from convattn import attach
from convattn.layers import AWConv2d
from convattn.models import canonical_variants
from convattn.profile import ProfileConfig


@pytest.mark.parametrize("attn", ["cbam", "coord"])
def test_inserted_modules_take_the_networks_mode(attn):
    """Case 1 (was silent): modules attached to a network in eval mode were in training mode, so their BatchNorm
    statistics moved during inference and outputs depended on the batch."""
    torch.manual_seed(0)
    net = attach(torchvision.models.resnet18(num_classes=4).eval(), attn)
    assert not any(m.training for m in net.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x[:2]), net(x)[:2], rtol=1e-5, atol=1e-5)
    stats = [b.running_mean.clone() for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    after = [b.running_mean for b in net.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    assert attach(torchvision.models.resnet18(num_classes=4), attn).training  # a training network: training


def test_frozen_convolutions_stay_frozen_and_the_report_says_so():
    """Case 2 (was silent): conv='aw' made every replaced frozen weight trainable again."""
    net = torchvision.models.resnet18(num_classes=4)
    for p in net.parameters():
        p.requires_grad_(False)
    attach(net, "se", conv="aw")
    aws = [m for m in net.modules() if isinstance(m, AWConv2d)]
    assert aws and not any(m.weight.requires_grad for m in aws)
    assert all(m.pw2.weight.requires_grad for m in aws)  # the new generator trains
    assert "frozen" in net.convattn_report.summary() + " ".join(net.convattn_report.notes)


def test_duplicate_arms_are_one_arm():
    """Case 5 (was silent): `--variants baseline,SE,none,se` trained 4 arms, `se+aw,aw+se` 2 identical ones."""
    assert [p.name for p in canonical_variants(["baseline", "SE", "none", "se"])] == ["none", "se"]
    assert [p.name for p in canonical_variants(["se+aw", "aw+se"])] == ["none", "se+aw"]
    assert ProfileConfig(models=["resnet20"], variants=["SE", "se", "aw+se", "se+aw"]).variants  # accepted
