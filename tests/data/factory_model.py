"""A factory for `trtcompile compile tests/data/factory_model.py:make` (a non-HF module)."""

import torch


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 32)
        self.out = torch.nn.Linear(32, 8)

    def forward(self, features, scale):
        return {"logits": self.out(torch.relu(self.proj(features))) * scale, "norm": features.norm(dim=-1)}


def make():
    torch.manual_seed(0)
    return TwoLayer().eval(), {"features": torch.randn(2, 5, 16), "scale": torch.ones(2, 1, 1)}
