"""FVE initial prompts: keyword extraction, evaluation-review hold-out, templates, prompt files."""

import json
import os

import pytest

from recbole_reveal.commands.fve_prompts import main
from recbole_reveal.fve.prompts.keywords import (
    ENGLISH_STOP_WORDS, evaluation_holdout, extract_keywords, load_stop_words, tokenize_review,
)
from recbole_reveal.fve.prompts.records import ItemMeta, read_items, read_prompts, write_prompts
from recbole_reveal.fve.prompts.templates import (
    DEFAULT_TEMPLATES, build_initial_prompts, initial_prompt, load_templates, render,
)
from recbole_reveal.infra.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PATH = os.path.join(ROOT, "dataset_atomic")


def test_tokenize_lowercases_strips_punctuation_and_stop_words():
    text = "I LOVE the Blue-striped strap!! Doesn't fit my 2 bags, though; 10/10 would buy_again."
    assert tokenize_review(text) == ["love", "blue", "striped", "strap", "fit", "bags", "buy"]
    # apostrophes vanish inside words, so contractions meet the stop list as one token
    assert tokenize_review("It's great, isn't it? Don’t care.") == ["great", "care"]


def test_keywords_by_frequency_with_alphabetical_ties():
    reviews = ["red mug, red handle", "Handle is sturdy. Red!", "sturdy glaze; glossy", "zesty"]
    # red 3, handle 2, sturdy 2, then glaze/glossy/zesty 1 each: ties alphabetical
    assert extract_keywords(reviews, top_k=5) == ["red", "handle", "sturdy", "glaze", "glossy"]
    assert extract_keywords(reviews, top_k=2) == ["red", "handle"]
    assert extract_keywords(list(reversed(reviews)), top_k=5) == extract_keywords(reviews, top_k=5)
    assert extract_keywords(["the and of", "!!!"]) == []


def test_stop_word_file_replaces_builtin_list(tmp_path):
    path = tmp_path / "stop.txt"
    path.write_text("# mine\nred\nHANDLE\n", encoding="utf-8")
    words = load_stop_words(str(path))
    assert words == {"red", "handle"}
    assert extract_keywords(["red handle the mug"], stop_words=words) == ["mug", "the"]
    assert "the" in ENGLISH_STOP_WORDS and "dont" in ENGLISH_STOP_WORDS and "love" not in ENGLISH_STOP_WORDS
    with pytest.raises(ConfigError, match="missing.txt"):
        load_stop_words(str(tmp_path / "missing.txt"))


def _write_dataset(root, name="toy", with_review=True):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    with open(os.path.join(folder, f"{name}.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\timage:token\n")
        f.write("a\tAcme tent_pro X1\tSports_&_Outdoors Camping Tents\tAcme_Co\timages/a.png\n")
        f.write("b\tLumen mug\tHome_Kitchen Mugs\tLumen\timages/b.png\n")
        f.write("c\t\t\t\t\n")
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        # u1: a(1) b(2) a(3) c(4) -> held out: a@3, c@4 ; u2: b(5) a(6) -> both held out
        for row in [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u1", "c", 4), ("u2", "b", 5), ("u2", "a", 6)]:
            f.write("\t".join(map(str, row)) + "\n")
    if with_review:
        with open(os.path.join(folder, f"{name}.review"), "w", encoding="utf-8") as f:
            f.write("user_id:token\titem_id:token\ttimestamp:float\treview:token\n")
            f.write("u1\ta\t1\tGreen canvas, green poles. Sturdy.\n")
            f.write("u1\tb\t2\tGlossy red mug.\n")
            f.write("u1\ta\t3\tLEAKED leaked leaked words\n")
            f.write("u1\tc\t4\tleaked\n")
            f.write("u2\tb\t5\tleaked leaked\n")
            f.write("u2\ta\t6\tleaked\n")
    return folder


def test_evaluation_reviews_are_held_out(tmp_path):
    _write_dataset(str(tmp_path))
    held = evaluation_holdout(str(tmp_path / "toy" / "toy.inter"))
    assert held == {("u1", "a", 3.0), ("u1", "c", 4.0), ("u2", "b", 5.0), ("u2", "a", 6.0)}
    records = build_initial_prompts("toy", str(tmp_path))
    by_item = {r["item_id"]: r for r in records}
    assert by_item["a"]["keywords"] == ["green", "canvas", "poles", "sturdy"]
    assert by_item["b"]["keywords"] == ["glossy", "mug", "red"]
    assert by_item["c"]["keywords"] == []
    everything = {r["item_id"]: r for r in build_initial_prompts("toy", str(tmp_path), reviews="all")}
    assert everything["a"]["keywords"][0] == "leaked" and everything["c"]["keywords"] == ["leaked"]


def test_prompts_follow_the_paper_template(tmp_path):
    _write_dataset(str(tmp_path))
    records = build_initial_prompts("toy", str(tmp_path))
    assert [r["item_id"] for r in records] == ["a", "b", "c"]
    assert records[0]["prompt"] == (
        "An item image of a Tents. Item name: Acme tent pro X1. Users often mention: green, canvas, "
        "poles, sturdy. Focus on the overall appearance of the item.")
    # no keywords -> the no-keyword template; empty title/category -> the empty_field texts
    assert records[2]["prompt"] == ("An item image of a product. Item name: unnamed item. "
                                    "Focus on the overall appearance of the item.")
    items = read_items(str(tmp_path / "toy" / "toy.item"))
    assert items[0] == ItemMeta("a", "Acme tent pro X1", ("Sports & Outdoors", "Camping", "Tents"), "Acme Co",
                                "images/a.png")


def test_missing_review_file_gives_prompts_without_keywords(tmp_path, caplog):
    _write_dataset(str(tmp_path), with_review=False)
    records = build_initial_prompts("toy", str(tmp_path))
    assert all(r["keywords"] == [] and "Users often mention" not in r["prompt"] for r in records)
    assert "no review file" in caplog.text


def test_edited_templates_are_used_and_checked(tmp_path):
    _write_dataset(str(tmp_path))
    text = open(DEFAULT_TEMPLATES, encoding="utf-8").read()
    custom = tmp_path / "t.yaml"
    custom.write_text(text.replace('initial_prompt: "An item image of a {category}.',
                                   'initial_prompt: "Photo of {brand} ({categories}).'), encoding="utf-8")
    records = build_initial_prompts("toy", str(tmp_path), templates=str(custom))
    assert records[0]["prompt"].startswith("Photo of Acme Co (Sports & Outdoors, Camping, Tents). Item name:")

    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{keywords}", "{keyword}"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: initial_prompt uses unknown placeholders \['keyword'\]"):
        load_templates(str(bad))
    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text("initial_prompt: 'x {title}'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="incomplete.yaml: missing template keys"):
        load_templates(str(incomplete))


def test_default_templates_hold_the_paper_texts():
    t = load_templates()
    assert t["initial_prompt"] == ("An item image of a {category}. Item name: {title}. Users often mention: "
                                   "{keywords}. Focus on the overall appearance of the item.")
    assert t["evaluation_instruction"].startswith("Assess whether the current prompt effectively extracts")
    text = render(t, "rewrite_instruction", evaluation_instruction=t["evaluation_instruction"], prompt="P",
                  title="T", category="C", brand="B", review_summary="R", feedback="F",
                  goal=t["rewrite_goals"]["pos"], max_words=t["rewrite_max_words"])
    assert "ANALYSIS:" in text and "NEW_PROMPT:" in text and "at most 40 words" in text
    with pytest.raises(ValueError, match="needs"):
        render(t, "rewrite_instruction", prompt="P")
    item = ItemMeta("x", "Acme", ("Bags",), "", "")
    assert initial_prompt(item, ["red"], t).endswith(
        "Users often mention: red. Focus on the overall appearance of the item.")


def test_prompt_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "sub" / "prompts.jsonl")
    records = [{"item_id": "a", "prompt": "p1 ü", "keywords": ["x"]}, {"item_id": "b", "prompt": "p2", "cycle": 1}]
    write_prompts(path, records)
    assert read_prompts(path) == records
    assert os.listdir(os.path.dirname(path)) == ["prompts.jsonl"]  # no temporary file left
    with open(path, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl:3: not a JSON object"):
        read_prompts(path)
    with pytest.raises(ValueError, match="duplicate item_id 'a'"):
        write_prompts(path, records + [{"item_id": "a", "prompt": "again"}])
    with pytest.raises(ValueError, match="non-empty string 'prompt'"):
        write_prompts(path, [{"item_id": "a", "prompt": " "}])


def test_demo_prompts_are_deterministic_via_the_command(tmp_path):
    out1, out2 = str(tmp_path / "1.jsonl"), str(tmp_path / "2.jsonl")
    main(["--dataset", "synthetic-demo", "--data_path", DEMO_PATH, "--out", out1])
    main(["--dataset", "synthetic-demo", "--data_path", DEMO_PATH, "--out", out2])
    assert open(out1, "rb").read() == open(out2, "rb").read()
    records = read_prompts(out1)
    assert len(records) == 480 and records[0]["item_id"] == "i0000"
    first = json.loads(open(out1, encoding="utf-8").readline())
    assert first["prompt"].startswith("An item image of a Backpacks. Item name: Vertex backpack ZH-224. "
                                      "Users often mention: ")
    assert len(first["keywords"]) == 5


def test_streamed_counts_give_the_keywords_of_the_texts(tmp_path):
    from recbole_reveal.fve.prompts.keywords import extract_keywords, review_keyword_counts, top_keywords

    texts = {"a": ["Great zipper, strong ZIPPER!", "zipper broke; strap fine", "The strap is strong"],
             "b": ["Lovely colour", "colour faded after washing, colour"]}
    path = tmp_path / "x.review"
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\treview:token_seq\n")
        for n, (item, reviews) in enumerate(sorted(texts.items())):
            for k, text in enumerate(reviews):
                f.write(f"u{k}\t{item}\t{100 * n + k}\t{text}\n")
    counts = review_keyword_counts(str(path))
    assert counts["a"]["zipper"] == 3 and counts["a"]["strong"] == 2 and counts["b"]["colour"] == 3
    for item, reviews in texts.items():
        assert top_keywords(counts[item], 3) == extract_keywords(reviews, 3)
    held = review_keyword_counts(str(path), holdout={("u0", "a", 0.0)})
    assert held["a"]["zipper"] == 1


def _shuffled_copy(tmp_path, name="synthetic-demo", seed=0):
    """The demo's .item/.inter/.review with the data lines of .inter and .review shuffled."""
    import random
    import shutil

    folder = tmp_path / name
    folder.mkdir()
    rng = random.Random(seed)
    shutil.copy(os.path.join(DEMO_PATH, name, f"{name}.item"), folder)
    for suffix in ("inter", "review"):
        with open(os.path.join(DEMO_PATH, name, f"{name}.{suffix}"), encoding="utf-8") as f:
            head, *lines = f.readlines()
        rng.shuffle(lines)
        (folder / f"{name}.{suffix}").write_text(head + "".join(lines), encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize("reviews", ["exclude_eval", "all"])
def test_keywords_equal_the_old_per_item_counter_reader(tmp_path, monkeypatch, reviews):
    """The interned streaming counter gives exactly the old reader's keywords (order and ties), on
    the demo and on a shuffled copy, also when its buffers are merged many times."""
    from fve_reference import old_item_keywords

    from recbole_reveal.fve.prompts import keywords as prompts

    def old(root):
        folder = os.path.join(root, "synthetic-demo")
        return old_item_keywords(os.path.join(folder, "synthetic-demo.review"),
                                 os.path.join(folder, "synthetic-demo.inter") if reviews == "exclude_eval" else None,
                                 top_k=7)

    shuffled = _shuffled_copy(tmp_path)
    expected = old(DEMO_PATH)
    assert sum(map(len, expected.values())) > 3000
    new = prompts.item_keywords("synthetic-demo", DEMO_PATH, top_k=7, reviews=reviews)
    assert new == expected and list(new) == list(expected)
    assert prompts.item_keywords("synthetic-demo", shuffled, top_k=7, reviews=reviews) == expected
    monkeypatch.setattr(prompts._PairCounter.__init__, "__defaults__", (997, 16))   # merge often, many buckets
    counts = prompts.review_keyword_counts(os.path.join(shuffled, "synthetic-demo", "synthetic-demo.review"),
                                           prompts.evaluation_holdout(os.path.join(shuffled, "synthetic-demo",
                                                                                   "synthetic-demo.inter"))
                                           if reviews == "exclude_eval" else None)
    assert counts.top(7) == expected


def test_streamed_holdout_equals_the_old_one_on_ties_and_missing_timestamps(tmp_path):
    from fve_reference import old_evaluation_holdout

    path = tmp_path / "x.inter"
    rows = [("u1", "a", "5"), ("u1", "b", "5"), ("u1", "c", "1"), ("u1", "d", "5"), ("u2", "a", ""),
            ("u2", "b", "3"), ("u2", "c", ""), ("u3", "z", "9"), ("u1", "e", "2")]
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join("\t".join(r) + "\n" for r in rows))
    held = evaluation_holdout(str(path))
    assert held == old_evaluation_holdout(str(path))
    assert held == {("u1", "b", 5.0), ("u1", "d", 5.0), ("u2", "b", 3.0), ("u2", "c", None), ("u3", "z", 9.0)}
    demo = os.path.join(DEMO_PATH, "synthetic-demo", "synthetic-demo.inter")
    assert evaluation_holdout(demo) == old_evaluation_holdout(demo)


def test_the_keyword_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch, caplog):
    from recbole_reveal.fve.prompts import keywords as prompts

    caplog.set_level("INFO", logger="recbole_reveal.fve.prompts")
    _write_dataset(str(tmp_path / "data"))
    cache = str(tmp_path / "kw")
    first = build_initial_prompts("toy", str(tmp_path / "data"), keyword_cache=cache)
    (entry,) = os.listdir(cache)
    counted = []
    real = prompts.review_keyword_counts
    monkeypatch.setattr(prompts, "review_keyword_counts", lambda *a, **k: counted.append(1) or real(*a, **k))
    assert build_initial_prompts("toy", str(tmp_path / "data"), keyword_cache=cache) == first
    assert counted == [] and "read from the keyword cache" in caplog.text
    build_initial_prompts("toy", str(tmp_path / "data"), top_k=2, keyword_cache=cache)       # another setting
    assert counted == [1] and len(os.listdir(cache)) == 2
    with open(tmp_path / "data" / "toy" / "toy.review", "a", encoding="utf-8") as f:
        f.write("u1\tb\t2.5\tchipped chipped chipped handle\n")                        # new content
    changed = build_initial_prompts("toy", str(tmp_path / "data"), keyword_cache=cache)
    assert counted == [1, 1] and changed[1]["keywords"][0] == "chipped"
    with open(os.path.join(cache, entry), "w") as f:                                  # a damaged entry
        f.write("{")
    with open(tmp_path / "data" / "toy" / "toy.review", "r+", encoding="utf-8") as f:
        lines = f.readlines()
        f.seek(0)
        f.writelines(lines[:-1])
        f.truncate()
    assert build_initial_prompts("toy", str(tmp_path / "data"), keyword_cache=cache) == first
    assert counted == [1, 1, 1] and "ignoring unreadable keyword cache" in caplog.text
    assert prompts.keyword_cache_dir({"fve_cache_dir": "/c"}, "/f") == os.path.join("/c", "keywords")
    assert prompts.keyword_cache_dir({}, "/f") == os.path.join("/f", "cache", "keywords")
    assert prompts.keyword_cache_dir({"fve_keyword_cache_dir": "/k"}, "/f") == "/k"
