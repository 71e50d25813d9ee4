"""Do the Defender's and the Attacker's gradients depend on torch's thread count?

Run (after `dvc repro source_data`): `.venv/bin/python benchmarks/probe_thread_invariance.py`.
One pretraining batch of 32 through the initial Defender (`bench_pretrain_step.load_inputs`,
the `base` catalog) and one cold-start batch of 64 random crops through a fresh Attacker UNet
(`build_box_edit_pipeline`), forward and backward with 1, 2, 1 and 2 threads. Prints whether the
loss and every gradient element are identical between the thread counts. This is what decides
whether a training node may run on one thread beside another without changing its weights
(`results/parallel_stages.md`); nothing is written.
"""

import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from aot.attacker.editing import flow_matching_loss
from aot.attacker.pipeline import build_box_edit_pipeline
from bench_pretrain_step import load_inputs, model_batch


def gradients(
    model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]
) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = loss_of()
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return float(loss), torch.cat(grads).clone()


def compare(name: str, model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> None:
    seen: dict[int, tuple[float, torch.Tensor]] = {}
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        loss, grads = gradients(model, loss_of)
        if threads in seen:
            repeat = torch.equal(seen[threads][1], grads)
            print(f"{name}: {threads} thread(s) again, gradients identical: {repeat}")
        seen[threads] = (loss, grads)
    (l1, g1), (l2, g2) = seen[1], seen[2]
    print(
        f"{name}: loss {l1!r} / {l2!r}; gradients identical 1 vs 2 threads: {torch.equal(g1, g2)}"
        f" (largest difference {float((g1 - g2).abs().max()):.3g})",
        flush=True,
    )


def main() -> None:
    defender, examples, _ = load_inputs()
    random.seed(0)
    batch = model_batch(defender, random.sample(examples, 32))
    model = defender.model.train()
    compare("Defender", model, lambda: model(**batch).loss)

    unet = build_box_edit_pipeline(seed=0).unet.train()
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(0)
    x0, src = (torch.rand(64, 3, size, size, generator=gen) * 2 - 1 for _ in range(2))
    mask = (torch.rand(64, 1, size, size, generator=gen) > 0.5).float()
    classes = torch.randint(0, 8, (64,), generator=gen)

    def unet_loss() -> torch.Tensor:
        noise = torch.Generator().manual_seed(1)
        return flow_matching_loss(unet, x0, src, mask, classes, generator=noise)

    compare("Attacker UNet", unet, unet_loss)


if __name__ == "__main__":
    main()
