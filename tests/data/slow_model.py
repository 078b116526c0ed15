"""A factory whose forward takes 0.3 s, so a compile spends seconds in verification, after the
package directory is started: the window the interruption test needs."""

import time

import torch


class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        if not torch.compiler.is_compiling():  # tracing stays fast; real calls are slow
            time.sleep(0.3)
        return self.proj(x)


def make():
    torch.manual_seed(0)
    return Slow().eval(), {"x": torch.randn(2, 8)}
