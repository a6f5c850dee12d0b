"""Task specs (GLUE table, lookup errors, task.json round trip) and GPT-1 input transformations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptune.errors import GptuneError
from gptune.tasks import GLUE_TASKS, TaskSpec, custom_task, get_task
from gptune.transforms import SPECIAL_TOKENS, SpecialIds, encode_example, encode_plain, truncate_longest_first

S, D, E = 900, 901, 902
IDS = SpecialIds(start=S, delim=D, extract=E)


# ----------------------------------------------------------------------------- tasks


def test_glue_table_covers_nine_tasks_with_paper_numbers():
    assert sorted(GLUE_TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
    kinds = {n: t.kind for n, t in GLUE_TASKS.items()}
    assert kinds == {
        "cola": "classification", "sst2": "classification",
        "mrpc": "similarity", "qqp": "similarity", "stsb": "similarity",
        "mnli": "entailment", "qnli": "entailment", "rte": "entailment", "wnli": "entailment",
    }  # fmt: skip
    assert get_task("stsb").labels is None and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").splits["validation_mismatched"] == "dev_mismatched.tsv"
    assert get_task("mrpc").paper_score == {"f1": 82.3}
    assert get_task("mnli").paper_score == {
        "validation_matched/accuracy": 82.1,
        "validation_mismatched/accuracy": 81.4,
    }
    assert get_task("wnli").paper_score == {}
    # label ids follow the hub dataset: MNLI entailment=0, WNLI 1 = entailment
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")


@pytest.mark.parametrize("alias", ["SST-2", "sst-2", " Sst2 ", "sst2"])
def test_get_task_aliases(alias):
    assert get_task(alias).name == "sst2"


def test_get_task_sts_b_alias():
    assert get_task("STS-B").name == "stsb"


def test_unknown_task_lists_valid_and_suggests():
    with pytest.raises(GptuneError) as exc:
        get_task("mrcp")
    msg = str(exc.value)
    assert "unknown task 'mrcp'" in msg
    assert "did you mean 'mrpc'" in msg
    assert "cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli" in msg


def test_unknown_task_without_close_match_has_no_suggestion():
    with pytest.raises(GptuneError) as exc:
        get_task("imdb")
    assert "did you mean" not in str(exc.value)


def test_task_json_round_trip_for_every_glue_task():
    for task in GLUE_TASKS.values():
        data = json.loads(json.dumps(task.to_dict()))
        assert TaskSpec.from_dict(data) == task


def test_custom_task_round_trip_keeps_absolute_paths(tmp_path):
    task = custom_task(
        "reviews", "classification", ["text"], "stars", ["bad", "good"],
        {"train": tmp_path / "train.csv", "validation": tmp_path / "dev.jsonl"},
    )  # fmt: skip
    assert task.splits["train"] == str((tmp_path / "train.csv").resolve())
    assert task.eval_splits == ("validation",) and task.metrics == ("accuracy",) and task.glue_dir == ""
    assert TaskSpec.from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_from_dict_refuses_unknown_and_missing_keys():
    data = get_task("rte").to_dict()
    data["colour"] = "red"
    del data["kind"]
    with pytest.raises(GptuneError) as exc:
        TaskSpec.from_dict(data)
    assert exc.value.problems == ["task.json: unknown key 'colour'", "task.json: missing key 'kind'"]


def test_bad_custom_spec_reports_every_problem():
    with pytest.raises(GptuneError) as exc:
        custom_task(
            "x", "entailment", ["a"], "y", None, {"train": "t.csv"}, metrics=["accuracy"], main_metric="f1"
        )
    msg = str(exc.value)
    assert "entailment needs 2 text field(s)" in msg
    assert "metric 'accuracy' does not apply to regression" in msg
    assert "main_metric 'f1' is not in metrics" in msg


def test_multiple_choice_needs_one_label_per_candidate():
    with pytest.raises(GptuneError, match="one label value per candidate"):
        custom_task("copa", "multiple_choice", ["premise", "c1", "c2"], "label", ["1", "2", "3"], {})
    task = custom_task("copa", "multiple_choice", ["premise", "c1", "c2"], "label", ["1", "2"], {})
    assert task.num_labels == 1


def test_tasks_module_imports_without_torch():
    code = "import sys, gptune.tasks, gptune.transforms; print(sorted({'torch','numpy','datasets'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]  # this checkout's gptune, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- transforms


def test_special_tokens_are_distinct_added_token_strings(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from conftest import make_text
    from gptune.modeling.heads import add_task_tokens

    assert SPECIAL_TOKENS == {"start": "<|start|>", "delim": "<|delim|>", "extract": "<|extract|>"}
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    before = len(tok)
    special = add_task_tokens(tok)
    marks = [special.start, special.delim, special.extract]
    assert len(set(marks)) == 3 and min(marks) >= before and len(tok) == before + 3  # three new, distinct ids
    # each marker is one token wherever it stands; text with "$" or "<s>" never produces one
    text = "a $ b <s> c" + "".join(SPECIAL_TOKENS.values()) + "d"
    assert [t for t in tok(text, add_special_tokens=False)["input_ids"] if t >= before] == marks
    assert not set(tok(make_text(50) + " $ <s> <e>")["input_ids"]) & set(marks)
    assert add_task_tokens(tok) == special and len(tok) == before + 3  # idempotent


def test_classification_layout():
    assert encode_example("classification", [[1, 2, 3]], IDS, 16) == [[S, 1, 2, 3, E]]


def test_entailment_layout():
    assert encode_example("entailment", [[1, 2], [3]], IDS, 16) == [[S, 1, 2, D, 3, E]]


def test_similarity_gives_both_orderings():
    assert encode_example("similarity", [[1, 2], [3]], IDS, 16) == [[S, 1, 2, D, 3, E], [S, 3, D, 1, 2, E]]


def test_multiple_choice_one_sequence_per_candidate():
    seqs = encode_example("multiple_choice", [[1, 2], [10], [20, 21], [30]], IDS, 16)
    assert seqs == [[S, 1, 2, D, 10, E], [S, 1, 2, D, 20, 21, E], [S, 1, 2, D, 30, E]]


def test_truncation_trims_longer_segment_first_and_keeps_end():
    a, b = list(range(1, 11)), [50, 51, 52]
    (seq,) = encode_example("entailment", [a, b], IDS, 8)
    # budget 8 - 3 markers = 5: b (3 tokens) is more than half of it, so b keeps 5 // 2 = 2 and a the other 3
    assert seq == [S, 1, 2, 3, D, 50, 51, E]
    assert len(seq) == 8 and seq[-1] == E


def test_truncation_odd_token_goes_to_the_longer_segment_the_second_on_a_tie():
    # the rule of the tokenizers library's LongestFirst (tests/test_gpt1_options.py checks it against a tokenizer)
    assert truncate_longest_first([[1, 2, 3], [4, 5, 6]], 5) == [[1, 2], [4, 5, 6]]
    assert truncate_longest_first([[1, 2, 3], [4, 5, 6]], 4) == [[1, 2], [4, 5]]
    assert truncate_longest_first([[1, 2, 3, 4], [5, 6, 7]], 5) == [[1, 2, 3], [5, 6]]


def test_truncation_never_touches_a_short_segment_while_another_is_longer():
    (seq,) = encode_example("entailment", [[7], list(range(20))], IDS, 6)
    assert seq == [S, 7, D, 0, 1, E]


def test_classification_truncation_keeps_end_token():
    (seq,) = encode_example("classification", [list(range(100))], IDS, 5)
    assert seq == [S, 0, 1, 2, E]


def test_similarity_orderings_share_the_truncated_segments():
    a, b = seqs = encode_example("similarity", [list(range(10)), [40, 41]], IDS, 7)
    assert a == [S, 0, 1, D, 40, 41, E] and b == [S, 40, 41, D, 0, 1, E]
    assert all(len(s) == 7 for s in seqs)


def test_multiple_choice_truncates_each_candidate_against_context():
    seqs = encode_example("multiple_choice", [list(range(6)), [10], [20, 21, 22, 23]], IDS, 7)
    assert seqs == [[S, 0, 1, 2, D, 10, E], [S, 0, 1, D, 20, 21, E]]


def test_inputs_are_not_modified():
    a, b = [1, 2, 3, 4], [5, 6]
    encode_example("entailment", [a, b], IDS, 5)
    assert a == [1, 2, 3, 4] and b == [5, 6]


@pytest.mark.parametrize(
    ("kind", "segments", "max_length"),
    [
        ("classification", [[1]], 2),
        ("entailment", [[1], [2]], 4),
        ("similarity", [[1], [2]], 4),
        ("multiple_choice", [[1], [2], [3]], 4),
    ],
)
def test_too_small_max_length_raises(kind, segments, max_length):
    with pytest.raises(ValueError, match="too small"):
        encode_example(kind, segments, IDS, max_length)
    assert encode_example(kind, segments, IDS, max_length + 1)  # the minimum itself works


def test_wrong_segment_count_and_unknown_kind_raise():
    with pytest.raises(ValueError, match="takes 2 segment"):
        encode_example("entailment", [[1]], IDS, 10)
    with pytest.raises(ValueError, match="context, answer_1"):
        encode_example("multiple_choice", [[1], [2]], IDS, 10)
    with pytest.raises(ValueError, match="unknown kind"):
        encode_example("ranking", [[1]], IDS, 10)


def test_encode_plain_concatenates_without_markers():
    assert encode_plain([[1, 2], [3]], 10) == [1, 2, 3]
    # truncation: longest first, nothing added
    assert encode_plain([list(range(10)), [50, 51]], 5) == [0, 1, 2, 50, 51]
    with pytest.raises(ValueError, match="too small"):
        encode_plain([[1], [2]], 1)
