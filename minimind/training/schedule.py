"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

Warmup keeps the first updates small while AdamW's second-moment estimates are still noise; the
cosine tail anneals to `min_lr_ratio * lr` rather than zero, so the last steps still learn.
The schedule is a pure function of the step, which is why a resumed run needs nothing but the
step counter to land on exactly the same learning rate.
"""

import math


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Factor applied to the peak learning rate at optimizer step `step` (0-based).

    Warmup steps 0..warmup_steps-1 ramp linearly from 1/warmup_steps to 1 (never 0, so no step
    is wasted); step `warmup_steps` is the peak; step `max_steps` reaches `min_lr_ratio`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine
