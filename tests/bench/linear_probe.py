"""A supervised ceiling for zero-shot classification, used by ``bench_classify.py``'s zero_shot part.

How much of a task the encoder's sentence vectors carry at all: a logistic regression trained on labelled rows of
the same frozen vectors. No method that reads those vectors without labels (the zero-shot classifier does) can be
expected to beat it.
"""

from __future__ import annotations


def bench_linear_probe(split: dict[str, list[dict]], encoder: object) -> dict:
    """(b') how much polarity the encoder's sentence vectors carry at all: a *supervised* logistic regression on the
    frozen unit embeddings, trained on the 500 labelled dev rows, scored on the held-out rows. The best of a small
    grid (logit scale x L2) is reported, scored on the held-out rows themselves, so it is an optimistic ceiling for
    any method that reads these vectors without labels (the zero-shot classifier does)."""
    import torch
    import torch.nn.functional as F

    names = sorted({r["label"] for r in split["dev"] + split["test"]})

    def xy(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        x = encoder.embed([str(r["text"]) for r in rows]).clone()  # type: ignore[attr-defined]  # out of inference mode
        return x, torch.tensor([names.index(r["label"]) for r in rows])

    (xd, yd), (xt, yt) = xy(split["dev"]), xy(split["test"])
    grid = {}
    for scale in (5.0, 10.0, 20.0):
        for l2 in (1e-4, 1e-3, 1e-2):
            w = torch.zeros(xd.shape[1], len(names), requires_grad=True)
            b = torch.zeros(len(names), requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=300)

            def loss(w=w, b=b, opt=opt, scale=scale, l2=l2) -> torch.Tensor:
                opt.zero_grad()
                value = F.cross_entropy(xd @ w * scale + b, yd) + l2 * (w**2).sum()
                value.backward()
                return value

            opt.step(loss)
            with torch.no_grad():
                hits = (xt @ w * scale + b).argmax(1) == yt
                grid[f"scale {scale:g}, l2 {l2:g}"] = round(float(hits.float().mean()), 4)
    best = max(grid, key=grid.__getitem__)
    return {"train_rows": len(yd), "held_out_rows": len(yt), "best_accuracy": grid[best], "best": best, "grid": grid}
