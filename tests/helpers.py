"""Helpers for the tests: a tiny on-disk dataset and the pipeline run_recbole_reveal builds."""

import os

import numpy as np

import recbole_reveal  # noqa: F401  (applies the RecBole compatibility fixes first)
from recbole_reveal.data.feature_store import save_item_features

TINY_ITEMS = 40
TINY_USERS = 120


def write_tiny_dataset(root, name="tiny", n_users=TINY_USERS, n_items=TINY_ITEMS, seed=0,
                       text_dim=16, vision_dim=24):
    """Users walk a noisy item chain (i -> i+3), so item IDs carry real sequential signal.

    Feature sets are written in a shuffled row order to exercise the token alignment.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(n_users):
            item = int(rng.integers(n_items))
            for t in range(int(rng.integers(6, 12))):
                f.write(f"u{u}\ti{item}\t{1000 * u + t}\n")
                item = (item + 3 + int(rng.random() < 0.2)) % n_items
    tokens = [f"i{i}" for i in range(n_items)]
    order = rng.permutation(n_items)
    features_dir = os.path.join(folder, "features")
    text = rng.normal(size=(n_items, text_dim)).astype(np.float32)
    vision = rng.normal(size=(n_items, vision_dim)).astype(np.float32)
    save_item_features(features_dir, "text_minilm", [tokens[i] for i in order], text[order])
    save_item_features(features_dir, "vision_efficientnet_lite0", [tokens[i] for i in order], vision[order])
    return folder, tokens, text, vision


def build_pipeline(model, config_dict, dataset="tiny"):
    """Config, data loaders, model and trainer exactly as run_recbole_reveal builds them."""
    from recbole_reveal.config import build_config
    from recbole_reveal.training import prepare_run

    return prepare_run(build_config(model, dataset, config_dict=config_dict))


def first_batch(train_data):
    return next(iter(train_data))


def seeded_gradients(model, batch, seed=7):
    """The gradients of one seeded backward of the model's own loss (no AVL), left cleared."""
    import torch

    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    model.calculate_loss(batch).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def gradients_at_step(trainer):
    """Every gradient as the optimizer sees it, filled at each step (hooks run in registration order, so
    this one runs after AVL's)."""
    seen = {}

    def capture(optimizer, args, kwargs):
        seen.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    return seen


def assert_full_sort_matches_predict(model, batch, tol=1e-4):
    """``full_sort_predict`` equals ``predict`` for every item (item 0 is padding); returns the full scores.
    ``batch`` is modified (its item column ends up holding the last item)."""
    import torch

    n = len(batch)
    with torch.no_grad():
        full = model.full_sort_predict(batch).view(n, -1)   # general models return it flattened
        assert full.shape == (n, model.n_items)
        for item in range(1, model.n_items):
            batch.interaction[model.ITEM_ID] = torch.full((n,), item, dtype=torch.long)
            torch.testing.assert_close(model.predict(batch), full[:, item], rtol=tol, atol=tol)
    return full


DEMO_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset_atomic",
                           "synthetic-demo", "images")


def demo_images(folder, sizes):
    """The demo's item images i0000, i0001, ... saved as RGB PNGs at ``sizes`` under ``folder``; their paths."""
    from PIL import Image

    paths = []
    for k, size in enumerate(sizes):
        path = str(folder / f"i{k}.png")
        Image.open(os.path.join(DEMO_IMAGES, f"i{k:04d}.png")).convert("RGB").resize(size).save(path)
        paths.append(path)
    return paths


def item_requests(paths, prompts):
    """One FVE encoder request per (image, prompt), items i0, i1, ..."""
    from recbole_reveal.fve.encoding.encoder import ItemRequest

    return [ItemRequest(f"i{k}", p, q) for k, (p, q) in enumerate(zip(paths, prompts))]
