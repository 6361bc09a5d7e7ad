"""The proxy loop written plainly, in the paper code's op order, for parity and rounding checks.

``paper_loop(..., dtype=torch.float32)`` is the paper's arithmetic (the golden vectors come from
it): ``G = X^T softmax(X W / tau_i) - X^T P``, halve the step when ``||G||`` grows, normalise the
columns. In float64 the same loop is a stand-in for exact arithmetic: its result moves by ~1e-6
at most when the float32 inputs are summed in another order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kpl.method.proxies import harden_labels


def paper_loop(x, plan, init, *, dtype=torch.float32, iters=2000, early_stop=True,
               tau_i=0.04, alpha=0.6, lr=10.0, tol=1e-6, patience=20) -> torch.Tensor:
    """(D, C) proxies of the straightforward loop; ``early_stop`` applies the stop rule of ARCHITECTURE 4."""
    x, init = torch.as_tensor(x).to(dtype), torch.as_tensor(init).to(dtype)
    target = x.T @ harden_labels(torch.as_tensor(plan), alpha).to(dtype)
    w, step, prev, quiet = init.clone(), lr, math.inf, 0
    for _ in range(iters):
        grad = x.T @ torch.softmax(x @ w / tau_i, dim=1) - target
        norm = float(torch.norm(grad))
        step = step / 2 if norm > prev else step
        prev = norm
        w_new = F.normalize(w - (step / (x.shape[0] * tau_i)) * grad, dim=0)
        quiet = quiet + 1 if float((w_new - w).abs().max()) < tol else 0
        w = w_new
        if early_stop and quiet >= patience:
            break
    return w
