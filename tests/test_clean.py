"""Cleaning before packing (data.clean): dedup, the quality rules either side of their thresholds, the language
filter, HTML pages, the report, resume, workers, the cache key and every error path (tiny corpora built here)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import gptune.data.prepare as prepare_mod
from conftest import make_text
from gptune.config import LANGUAGES, CleanConfig, DataConfig
from gptune.data import clean, quality
from gptune.data.dedup import DedupIndex
from gptune.data.prepare import prepare_lm_data
from gptune.errors import GptuneError


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from gptune.tokenization import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


def ids(tok, text):
    return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


def write_jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def build(path, tok, tmp_path, *, num_proc=1, **clean_kw):
    data = DataConfig(path=str(path), block_size=8, val_fraction=0.0, num_proc=num_proc,
                      cache_dir=str(tmp_path / "cache"), clean=CleanConfig(**clean_kw))
    return prepare_lm_data(data, tok, seed=0, progress=False)


def stream(tok, docs):
    """The reference token stream of `docs`: each document's ids and one EOS."""
    return [t for d in docs for t in ids(tok, d) + [tok.eos_token_id]]


def packed(data):
    s = data.train.stream
    return s.read(0, len(s)).tolist()


def report_of(data):
    return json.loads((data.folder / "clean_report.json").read_text())


def edit_words(text, n, seed):
    """`text` with `n` of its words replaced (a near duplicate)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), n):
        words[i] = "zebra"
    return " ".join(words)


# ----------------------------------------------------------------------------- dedup


def test_exact_dedup_drops_copies_that_differ_only_in_case_and_spacing(tok, tmp_path):
    distinct = [make_text(30, seed=i) for i in range(12)]
    copies = {3: distinct[1], 7: distinct[0].upper(), 10: "  " + distinct[5].replace(" ", "   ") + "\n\n"}
    docs = list(distinct)
    for pos, c in sorted(copies.items()):
        docs.insert(pos, c)
    data = build(write_jsonl(tmp_path / "c.jsonl", docs), tok, tmp_path, dedup="exact")
    assert packed(data) == stream(tok, distinct)  # every distinct document kept, in order, once
    rep = report_of(data)
    assert rep["dropped"]["dedup"]["documents"] == 3 and rep["kept"] == 12 and rep["documents_in"] == 15
    assert [e["document"] for e in rep["dropped"]["dedup"]["examples"]] == sorted(copies)
    assert "duplicate of document 1" in rep["dropped"]["dedup"]["examples"][0]["text"]
    assert rep["bytes_in"] == sum(len(d.encode()) for d in docs)


def test_near_dedup_drops_light_edits_and_keeps_distinct_documents(tok, tmp_path):
    base = [make_text(40, seed=100 + i) for i in range(10)]
    near = [edit_words(base[i], 3, seed=i) for i in range(4)]  # ~300 words, 3 changed: Jaccard ~0.9
    far = [edit_words(base[5], 60, seed=9)]  # a fifth of the words changed: Jaccard well under 0.8
    docs = base + near + far
    sig = [clean.minhash_signature(d, 128, 5) for d in docs]
    assert all(np.mean(sig[10 + i] == sig[i]) >= 0.8 for i in range(4))
    assert np.mean(sig[14] == sig[5]) < 0.5
    data = build(write_jsonl(tmp_path / "c.jsonl", docs), tok, tmp_path, dedup="near")
    assert packed(data) == stream(tok, base + far)
    dropped = report_of(data)["dropped"]["dedup"]
    assert dropped["documents"] == 4 and [e["document"] for e in dropped["examples"]] == [10, 11, 12]
    assert all(e["value"] >= 0.8 for e in dropped["examples"])


def test_dedup_index_survives_reopening_and_table_growth(tmp_path):
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(3000, 128), dtype=np.uint32)
    idx = DedupIndex(tmp_path / "d.sig", "near", kept=0)
    assert [idx.check(i, s) for i, s in enumerate(sigs)] == [None] * 3000  # the table grew several times
    assert idx.check(5000, sigs[1234]) == (1234, 1.0)
    idx.close()
    again = DedupIndex(tmp_path / "d.sig", "near", kept=2000)  # a resume from the state after 2000 kept
    assert again.check(6000, sigs[1999]) == (1999, 1.0)
    assert again.check(6001, sigs[2500]) is None and again.kept == 2001


# ----------------------------------------------------------------------------- quality rules


QUALITY_CASES = [
    # (key, threshold, a document just passing, a document just failing)
    ("min_mean_word_length", 3.0, "abc abc abc , abd", "abc ab abc , abc"),
    ("max_mean_word_length", 10.0, "abcdefghij abcdefghij", "abcdefghij abcdefghijk"),
    ("max_symbol_ratio", 0.1, "# a b c d e f g h i", "# a b c d e f g h ..."),
    ("min_alpha_word_fraction", 0.8, "a b c d e f g h 1 2", "a b c d e f g 1 2 3"),
    ("min_punctuation_lines", 0.5, "A.\nB!\nC?\nD\"\nE)\nf\ng\nh\ni\nj", "A.\nB!\nC?\nD\"\ne\nf\ng\nh\ni\nj"),
    ("max_repeated_lines", 0.3, "a\nb\nc\nd\ne\nf\ng\na\nb\nc", "a\nb\nc\nd\ne\nf\na\nb\nc\nd"),
    ("max_top_2gram_fraction", 0.4, "aa bb aa bb cc dd ee ff gg hh", "aa bb aa bb cc dd ee ff gg h"),
    ("max_dup_5gram_fraction", 0.46, "a b c d e a b c d e x", "a b c d e a b c d e"),
    ("min_stop_words", 2, "The cat and a dog", "The cat sat on a mat"),
]


@pytest.mark.parametrize("key,limit,passing,failing", QUALITY_CASES, ids=[c[0] for c in QUALITY_CASES])
def test_each_quality_rule_just_either_side_of_its_threshold(key, limit, passing, failing):
    cfg = CleanConfig(**{key: limit})
    measure = {k: m for k, m, _ in quality.QUALITY_RULES}[key]
    near = [measure(quality.Doc.of(passing)), measure(quality.Doc.of(failing))]
    step = 1 if isinstance(limit, int) else 0.12 * max(1, limit)  # a count moves by one
    assert all(abs(v - limit) <= step for v in near), near  # both sit close to the threshold
    assert quality.quality_failure(passing, cfg) is None
    failed = quality.quality_failure(failing, cfg)
    assert failed is not None and failed[0] == key


def test_length_limits_are_inclusive(tok):
    cfg = CleanConfig(min_chars=5, max_chars=10)
    assert [clean.clean_document(t, cfg).rule for t in ("abcd", "abcde", "abcdefghij", "abcdefghijk")] == [
        "min_chars", None, None, "max_chars"]


def test_measures_on_a_hand_counted_document():
    d = quality.Doc.of("The cat... sat.\nThe cat... sat.\n# 12 on a mat\n")
    assert d.lines == ["The cat... sat.", "The cat... sat.", "# 12 on a mat"]
    assert quality.repeated_line_fraction(d.lines) == pytest.approx(1 / 3)
    assert quality.punctuation_line_fraction(d.lines) == pytest.approx(2 / 3)
    assert quality.symbol_ratio(d.text, d.words) == pytest.approx(3 / 11)  # 2 ellipses + 1 '#' over 11 words
    assert quality.alpha_word_fraction(d.words) == pytest.approx(9 / 11)  # '#' and '12' have no letter
    assert quality.stop_word_count(d.words) == 2


# ----------------------------------------------------------------------------- language, HTML, Unicode

TEXTS = {
    "en": "The small harbour town lived mostly from fishing and the salt trade, and every Sunday the people met "
          "in the market square.",
    "fr": "La petite ville portuaire vivait surtout de la pêche et du commerce du sel, et chaque dimanche les "
          "habitants se retrouvaient sur la place du marché.",
    "de": "Die kleine Hafenstadt lebte vor allem vom Fischfang und vom Salzhandel, und jeden Sonntag trafen sich "
          "die Leute auf dem Marktplatz.",
    "es": "La pequeña ciudad portuaria vivía sobre todo de la pesca y del comercio de la sal, y cada domingo la "
          "gente se reunía en la plaza del mercado.",
}


@pytest.mark.parametrize("keep", [["en"], ["fr", "de"], ["es"]])
def test_language_filter_on_short_texts_of_four_languages(keep):
    cfg = CleanConfig(languages=keep)
    verdicts = {lang: clean.clean_document(t, cfg) for lang, t in TEXTS.items()}
    assert sorted(lang for lang, v in verdicts.items() if v.rule is None) == sorted(keep)
    assert all(v.detail.startswith(f"{lang}: ") for lang, v in verdicts.items() if v.rule == "languages")


PAGE = """<!DOCTYPE html><html><head><title>Lobsters | Sea Wiki</title><script>var ads = load();</script>
<style>body {{ color: red }}</style></head><body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li><li><a href="/login">Log in</a></li>
</ul></nav></header><div class="sidebar"><h3>Popular</h3><ul><li><a href="/a">Top ten crabs</a></li></ul></div>
<main><article><h1>{title}</h1>{paragraphs}</article></main>
<footer><p>Copyright 2024 Sea Wiki. All rights reserved.</p><a href="/privacy">Privacy policy</a>
<div class="cookie">We use cookies to improve your experience. Accept all cookies</div></footer></body></html>"""


def page(title, paragraphs):
    return PAGE.format(title=title, paragraphs="".join(f"<p>{p}</p>\n" for p in paragraphs))


def test_html_pages_keep_their_article_and_lose_the_boilerplate(tok, tmp_path):
    paras = ["The European lobster is a species of clawed lobster from the eastern Atlantic Ocean.",
             "In life the lobsters are blue, only becoming &quot;lobster red&quot; on cooking &amp; eating."]
    text = clean.clean_document(page("The European lobster", paras), CleanConfig(strip_html=True)).text
    assert text.splitlines()[0] == "The European lobster"
    assert "eastern Atlantic Ocean." in text and '"lobster red" on cooking & eating.' in text
    for boiler in ("Home", "About us", "Top ten crabs", "Copyright", "Privacy", "cookies", "ads", "color", "<"):
        assert boiler not in text
    prose = make_text(20, seed=1)  # not a page: left exactly as it is
    docs = [page("The European lobster", paras), prose, "<html><body><script>x()</script></body></html>"]
    data = build(write_jsonl(tmp_path / "p.jsonl", docs), tok, tmp_path, strip_html=True)
    assert packed(data) == stream(tok, [text, prose])
    rep = report_of(data)
    assert rep["changed"] == {"strip_html": 1} and rep["dropped"]["strip_html"]["documents"] == 1


def test_fix_unicode_repairs_mojibake_and_a_latin1_file_is_decoded_not_dropped(tok, tmp_path):
    fix = CleanConfig(fix_unicode=True)
    assert clean.clean_document("cafÃ© crÃ¨me", fix).text == "café crème"
    assert clean.clean_document("‘Tis ﬁne:\r\nＡＢＣ”", fix).text == "‘Tis ﬁne:\r\nＡＢＣ”"  # repairs only
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_bytes("Caf\xe9 au lait, the end.\n".encode("latin-1"))
    with pytest.raises(GptuneError, match=r"a\.txt: not UTF-8 text.*data\.fallback_encoding"):
        build(tmp_path / "books", tok, tmp_path, fix_unicode=True)
    data = DataConfig(path=str(tmp_path / "books"), block_size=2, val_fraction=0.0, num_proc=1,
                      fallback_encoding="latin-1", cache_dir=str(tmp_path / "cache"),
                      clean=CleanConfig(fix_unicode=True, min_chars=1))
    out = prepare_lm_data(data, tok, seed=0, progress=False)
    assert packed(out) == stream(tok, ["Café au lait, the end.\n"]) and report_of(out)["kept"] == 1


# ----------------------------------------------------------------------------- the stream: resume, workers, key


def mixed_corpus(tmp_path):
    docs = []
    for i in range(30):
        d = make_text(25, seed=200 + i)  # long enough for the detector to call every one English
        docs.append(d)
        if i % 5 == 0:
            docs.append(edit_words(d, 1, seed=i))  # near duplicates
        if i % 7 == 0:
            docs.append(page(f"Page {i}", d.splitlines()))  # pages
        if i % 9 == 0:
            docs.append(TEXTS["fr"])
    return write_jsonl(tmp_path / "corpus" / "c.jsonl", docs)


MIXED = dict(dedup="near", strip_html=True, languages=["en"], min_chars=20)


def test_two_workers_give_the_same_shards_and_report(tok, tmp_path):
    path = mixed_corpus(tmp_path)
    one = build(path, tok, tmp_path / "1", **MIXED)
    two = build(path, tok, tmp_path / "2", num_proc=2, **MIXED)
    assert packed(one) == packed(two) and report_of(one) == report_of(two)
    rep = report_of(one)
    assert rep["dropped"]["dedup"]["documents"] >= 5 and rep["dropped"]["languages"]["documents"] == 4
    assert rep["changed"]["strip_html"] == 5


def test_an_interrupted_cleaning_prepare_resumes_and_equals_an_uninterrupted_one(tok, tmp_path, monkeypatch):
    import gptune.data.encode as encode_mod
    from gptune.data import clean as clean_mod

    monkeypatch.setattr(encode_mod, "PIECE_CHARS", 50)  # small tokenizer batches: few documents in flight
    monkeypatch.setattr(encode_mod, "BATCH_CHARS", 300)
    path = mixed_corpus(tmp_path)
    straight = build(path, tok, tmp_path / "straight", **MIXED)
    monkeypatch.setattr(prepare_mod, "_CHECKPOINT_SECONDS", 0.0)
    real = prepare_mod.clean_stream

    def small_batches(*a, **k):  # many clean batches, so the index runs ahead of the shards
        return real(*a, **{**k, "batch_chars": 500})

    def interrupted(*a, **k):
        for n, out in enumerate(small_batches(*a, **k)):
            if n == 25:
                raise KeyboardInterrupt
            yield out

    monkeypatch.setattr(prepare_mod, "clean_stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(path, tok, tmp_path, **MIXED)
    (partial,) = (tmp_path / "cache" / "lm").glob(".*.partial")
    state = json.loads((partial / "state.json").read_text())
    assert 0 < state["documents"] < 40 and state["dedup_kept"] > 0 and state["clean"]["documents_in"] > 0
    seen = []

    def counting(*a, **k):
        for out in small_batches(*a, **k):
            seen.append(out[0][0])
            yield out

    monkeypatch.setattr(prepare_mod, "clean_stream", counting)
    again = build(path, tok, tmp_path, **MIXED)
    assert min(seen) == state["documents"]  # documents already decided were not cleaned again
    assert packed(again) == packed(straight) and report_of(again) == report_of(straight)
    assert not (again.folder / prepare_mod.DEDUP_FILE).exists() and not partial.exists()
    assert clean_mod.CleanReport.from_dict(report_of(again)).kept == again.stats.kept_documents


def test_the_cache_key_covers_the_cleaning_settings(tok, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [make_text(20, seed=i) for i in range(3)])
    folders = {build(path, tok, tmp_path, **kw).folder for kw in
               ({}, {"dedup": "exact"}, {"dedup": "near"}, {"dedup": "near", "near_threshold": 0.9})}
    assert len(folders) == 4
    off = build(path, tok, tmp_path)
    assert off.stats.cached and off.stats.kept_documents is None and not (off.folder / "clean_report.json").exists()


# ----------------------------------------------------------------------------- the command and bad input


@pytest.mark.parametrize("command", ["prepare", pytest.param("pretrain", marks=pytest.mark.slow)])
def test_the_command_prints_the_report_and_writes_it_in_the_run_folder(command, tmp_path, monkeypatch, capsys,
                                                                       tiny_tokenizer_dir):
    from conftest import make_workdir, run_cli

    make_workdir(tmp_path, monkeypatch, {"a.txt": 300, "b.txt": 200})
    (tmp_path / "books" / "c.txt").write_text((tmp_path / "books" / "a.txt").read_text())
    (tmp_path / "r.yaml").write_text(
        f"name: tiny\nmodel: {{tokenizer: {tiny_tokenizer_dir}, config: {{n_layer: 2, n_head: 2, n_embd: 32, "
        "n_positions: 16}}\n"
        "data: {path: books, block_size: 16, val_fraction: 0.1, num_proc: 1, clean: {dedup: exact}}\n"
        "train: {max_steps: 1, micro_batch_size: 2, global_batch_size: 2, eval_every: 0, save_every: 0}\n")
    assert run_cli(command, "r.yaml") == 0
    out = capsys.readouterr().out
    assert "dropped: dedup" in out and "2 kept by data.clean" in out
    rep = json.loads((tmp_path / "runs" / "tiny" / "clean_report.json").read_text())
    assert rep["dropped"]["dedup"]["examples"][0]["document"] == 2 and rep["kept"] == 2


@pytest.mark.parametrize("sets,pattern", [
    (["data.clean.min_char=5"], r"data\.clean\.min_char: unknown key \(did you mean data\.clean\.min_chars\?\)"),
    (["data.clean.languages=[en,xx]"], r"data\.clean\.languages: unknown language code 'xx'"),
    (["data.clean.dedup=fuzzy"], r"data\.clean\.dedup: expected 'none' \| 'exact' \| 'near', got 'fuzzy'"),
    (["data.clean.max_repeated_lines=1.5"], r"data\.clean\.max_repeated_lines: must be in \[0, 1\]"),
])
def test_bad_rules_name_the_field(sets, pattern):
    from gptune.recipes import build_recipe

    with pytest.raises(GptuneError, match=pattern) as e:
        build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 1}}, sets=sets)
    assert len(e.value.problems) == 1


def test_bad_language_is_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("model: {tokenizer: train}\ndata: {clean: {languages: [english]}}\n"
                                     "train: {max_steps: 1}\n")
    assert run_cli("prepare", "r.yaml") == 2
    err = capsys.readouterr().err
    assert "data.clean.languages: unknown language code 'english'" in err


def test_a_missing_library_names_the_key_and_the_pip_command(monkeypatch):
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "datasketch" else real(name, *a))
    with pytest.raises(GptuneError, match=r"^data\.clean\.dedup needs the datasketch package.*pip install 'gptune\[clean\]'"):
        clean.require_libraries(CleanConfig(dedup="near"))
    clean.require_libraries(CleanConfig(dedup="exact"))  # exact needs no library


def test_the_language_codes_are_the_detectors():
    model = clean._language_model()._get_model(low_memory=True)  # the lite model: the one the filter uses
    labels, _ = model.predict("any text", k=-1, threshold=-1.0)
    assert sorted(LANGUAGES) == sorted(label.removeprefix("__label__") for label in labels)
