"""The engine's torch.compile: inductor options chosen from the model (AW-convolutions on CPU keep the layout)."""
import pytest
import torch

from convattn.engine import compile_model
from convattn.models import create_model


def test_compile_model_turns_layout_optimisation_off_only_for_aw_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    for variant in (dict(conv="aw"), dict(attn="se", conv="aw"), dict(), dict(attn="steam")):
        compile_model(create_model("resnet20", **variant))
    assert calls == [{"options": {"layout_optimization": False}}] * 2 + [{}, {}]


@pytest.mark.slow
def test_compiled_aw_model_matches_eager():
    """With the engine's options the compiled AW network computes what the eager one does."""
    torch.manual_seed(0)
    m = create_model("resnet20", conv="aw", num_classes=10).eval()
    with torch.no_grad():
        m.layer1[0].conv1.pw2.weight.normal_(std=0.1)  # a modulation that is not the identity
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.testing.assert_close(compile_model(m)(x), m(x), atol=1e-4, rtol=1e-4)
    finally:
        torch._dynamo.reset()  # leave no compiled state (shapes seen) to later tests
