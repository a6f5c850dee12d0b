"""GLUE / custom readers on tiny fixture files that reproduce each quirk of the official TSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptune.data.glue import (
    find_glue_dir,
    load_hub_split,
    load_task_split,
    read_custom_split,
    read_glue_split,
)
from gptune.errors import GptuneError
from gptune.tasks import custom_task, get_task


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.fixture
def glue(tmp_path):
    return tmp_path / "glue_data"


# ----------------------------------------------------------------------------- quirks


def test_cola_no_header_quotes_and_no_final_newline(glue):
    write(
        glue / "CoLA" / "dev.tsv",
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        'gj04\t0\t*\tHe said "go home.\n'  # an unbalanced quote must not swallow the next line
        "clc95\t1\t\tJohn talked to Bill about himself.",  # no final newline
    )
    data = read_glue_split(get_task("cola"), glue, "validation")
    assert [r["label"] for r in data.rows] == [1, 0, 1]
    assert data.rows[1]["sentence"] == 'He said "go home.'
    assert data.rows[2] == {"sentence": "John talked to Bill about himself.", "label": 1, "idx": 2}
    assert data.malformed == []


def test_cola_test_file_has_a_header_and_no_labels(glue):
    write(
        glue / "CoLA" / "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked.\n"
    )
    data = read_glue_split(get_task("cola"), glue, "test")
    assert data.rows == [
        {"sentence": "Bill whistled past the house.", "label": None, "idx": 0},
        {"sentence": "The car honked.", "label": None, "idx": 1},
    ]
    assert not data.has_labels


def test_mrpc_bom_header_and_unbalanced_quote(glue):
    write(
        glue / "MRPC" / "dev.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1355540\t1355592\tHe said the pie business doesn't fit.\t\"The pie business does not fit.\n"
        '0\t2029631\t2029565\tMagnarelli said it.\tHis wife said he was "100 percent behind George Bush".\n',
        bom=True,
    )
    data = read_glue_split(get_task("mrpc"), glue, "validation")
    # with csv quoting on, the opening quote of row 1 would swallow the next line
    assert len(data.rows) == 2
    assert data.rows[0]["sentence2"] == '"The pie business does not fit.'
    assert data.rows[0]["label"] == 1 and data.rows[1]["label"] == 0
    assert data.rows[1]["sentence1"] == "Magnarelli said it."


def test_sst2_trailing_space_is_stripped(glue):
    write(glue / "SST-2" / "train.tsv", "sentence\tlabel\nhide new secretions from the parental units \t0\n")
    (row,) = read_glue_split(get_task("sst2"), glue, "train").rows
    assert row == {"sentence": "hide new secretions from the parental units", "label": 0, "idx": 0}


def test_stsb_float_scores_by_header_name(glue):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(
        glue / "STS-B" / "dev.tsv",
        header
        + "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man dances.\tA man is dancing.\t4.750\n",
    )
    (row,) = read_glue_split(get_task("stsb"), glue, "validation").rows
    assert row == {"sentence1": "A man dances.", "sentence2": "A man is dancing.", "label": 4.75, "idx": 0}


def test_mnli_many_columns_gold_label_last(glue):
    cols = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "s1_bp",
        "s2_bp",
        "s1_p",
        "s2_p",
        "sentence1",
        "sentence2",
    ]
    dev_cols = cols + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    row = [
        "0",
        "63735",
        "63735n",
        "slate",
        "(",
        "(",
        "(",
        "(",
        "The new rights are nice.",
        "Everyone loves them.",
    ]
    write(
        glue / "MNLI" / "dev_mismatched.tsv",
        "\t".join(dev_cols)
        + "\n"
        + "\t".join(row + ["neutral"] * 5 + ["neutral"])
        + "\n"
        + "\t".join(row[:-2] + ["A.", "B."] + ["contradiction"] * 5 + ["contradiction"])
        + "\n",
    )
    data = read_glue_split(get_task("mnli"), glue, "validation_mismatched")
    assert data.rows[0] == {
        "premise": "The new rights are nice.",
        "hypothesis": "Everyone loves them.",
        "label": 1,  # hub order: entailment, neutral, contradiction
        "idx": 0,
    }
    assert data.rows[1]["label"] == 2


def test_qqp_malformed_lines_are_counted_with_line_numbers(glue):
    lines = [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "10\t1\t2\tHow do I learn?\tHow can I learn?\t1",
        "11\t3\t4\tWhat is a question with a",  # a question broken over two lines
        "newline?\tOther?\t0",
        "12\t5\t6\tWhy?\tWhy not?\t0",
        "13\t7\t8\ttoo\tmany\tcolumns\t1",
    ]
    write(glue / "QQP" / "train.tsv", "\n".join(lines) + "\n")
    data = read_glue_split(get_task("qqp"), glue, "train")
    assert data.malformed == [3, 4, 6]
    assert [r["idx"] for r in data.rows] == [10, 12]
    assert [r["label"] for r in data.rows] == [1, 0]
    warning = data.warning()
    assert "skipped 3 malformed line(s)" in warning and "lines 3, 4, 6" in warning
    assert str(glue / "QQP" / "train.tsv") in warning


def test_warning_is_none_when_nothing_skipped(glue):
    write(glue / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n")
    assert read_glue_split(get_task("rte"), glue, "validation").warning() is None


def test_qnli_and_wnli_labels(glue):
    write(glue / "QNLI" / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tnot_entailment\n")
    write(glue / "WNLI" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tIt rained.\tRain.\t1\n")
    assert read_glue_split(get_task("qnli"), glue, "validation").rows[0]["label"] == 1
    assert read_glue_split(get_task("wnli"), glue, "validation").rows[0]["label"] == 1


def test_task_folder_found_case_insensitively_or_given_directly(glue):
    write(glue / "sst-2" / "dev.tsv", "sentence\tlabel\ngood \t1\n")
    assert len(read_glue_split(get_task("sst2"), glue, "validation").rows) == 1
    assert len(read_glue_split(get_task("sst2"), glue / "sst-2", "validation").rows) == 1


# ----------------------------------------------------------------------------- errors


def test_missing_task_folder_says_how_to_point_at_data(glue):
    glue.mkdir()
    with pytest.raises(GptuneError) as exc:
        read_glue_split(get_task("rte"), glue, "train")
    msg = str(exc.value)
    assert str(glue / "RTE") in msg and "--data-dir" in msg and "GPTUNE_GLUE_DIR" in msg


def test_missing_file_is_named(glue):
    write(glue / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(GptuneError) as exc:
        read_glue_split(get_task("rte"), glue, "test")
    assert str(glue / "RTE" / "test.tsv") in str(exc.value) and "--data-dir" in str(exc.value)


def test_unknown_split_lists_known_ones(glue):
    with pytest.raises(GptuneError, match="no split 'validation'; choose one of train, validation_matched"):
        read_glue_split(get_task("mnli"), glue, "validation")


def test_missing_column_names_file_and_column(glue):
    path = write(glue / "RTE" / "dev.tsv", "index\tsentence1\ttext\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(GptuneError) as exc:
        read_glue_split(get_task("rte"), glue, "validation")
    (problem,) = exc.value.problems
    assert (
        str(path) in problem
        and "missing column 'sentence2'" in problem
        and "index, sentence1, text, label" in problem
    )


def test_missing_label_column_outside_test_split(glue):
    write(glue / "SST-2" / "dev.tsv", "index\tsentence\n0\tfine\n")
    with pytest.raises(GptuneError, match="missing label column 'label'"):
        read_glue_split(get_task("sst2"), glue, "validation")


def test_bad_label_names_value_line_and_allowed(glue):
    path = write(
        glue / "RTE" / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tcontradiction\n",
    )
    with pytest.raises(GptuneError) as exc:
        read_glue_split(get_task("rte"), glue, "train")
    (problem,) = exc.value.problems
    assert problem == (
        f"{path} line 3: label 'contradiction' in column 'label' is not one of 'entailment', 'not_entailment'"
    )


def test_bad_regression_label(glue):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(glue / "STS-B" / "train.tsv", header + "0\tg\tf\ty\t0\tn\tn\ta\tb\tfive\n")
    with pytest.raises(GptuneError, match="line 2: label 'five' in column 'score' is not a number"):
        read_glue_split(get_task("stsb"), glue, "train")


def test_empty_split_is_an_error(glue):
    path = write(glue / "SST-2" / "train.tsv", "sentence\tlabel\n")
    with pytest.raises(GptuneError) as exc:
        read_glue_split(get_task("sst2"), glue, "train")
    assert f"{path}: no data rows for task sst2, split 'train'" in str(exc.value)


def test_split_with_only_malformed_lines_says_so(glue):
    write(glue / "SST-2" / "train.tsv", "sentence\tlabel\nno tab here\n")
    with pytest.raises(GptuneError, match=r"1 malformed line\(s\), first at line 2"):
        read_glue_split(get_task("sst2"), glue, "train")


# ----------------------------------------------------------------------------- locating data


def test_find_glue_dir_precedence(tmp_path, monkeypatch):
    flag, env, cwd = tmp_path / "flag", tmp_path / "env", tmp_path / "cwd"
    for d in (flag, env, cwd / "glue_data"):
        d.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("GPTUNE_GLUE_DIR", raising=False)
    assert find_glue_dir(None) == (cwd / "glue_data").resolve()
    monkeypatch.setenv("GPTUNE_GLUE_DIR", str(env))
    assert find_glue_dir(None) == env
    assert find_glue_dir(str(flag)) == flag
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPTUNE_GLUE_DIR")
    assert find_glue_dir(None) is None


def test_find_glue_dir_refuses_missing_folders(tmp_path, monkeypatch):
    with pytest.raises(GptuneError, match="--data-dir .*nope: no such folder"):
        find_glue_dir(str(tmp_path / "nope"))
    monkeypatch.setenv("GPTUNE_GLUE_DIR", str(tmp_path / "gone"))
    with pytest.raises(GptuneError, match="GPTUNE_GLUE_DIR=.*gone: no such folder"):
        find_glue_dir(None)


def test_load_task_split_uses_env_folder(glue, monkeypatch):
    write(glue / "SST-2" / "dev.tsv", "sentence\tlabel\nfine \t1\n")
    monkeypatch.setenv("GPTUNE_GLUE_DIR", str(glue))
    data = load_task_split(get_task("sst2"), "validation")
    assert data.rows == [{"sentence": "fine", "label": 1, "idx": 0}]


def test_hub_unreachable_says_how_to_use_local_files(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    # both libraries read the variables at import time
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(GptuneError) as exc:
        load_hub_split(get_task("rte"), "validation")
    msg = str(exc.value)
    assert "cannot reach the Hugging Face hub for GLUE task rte" in msg
    assert "--data-dir" in msg and "GPTUNE_GLUE_DIR" in msg


# ----------------------------------------------------------------------------- custom files


def test_custom_csv_with_quoting_and_multiline_field(tmp_path):
    path = write(tmp_path / "train.csv", 'text,stars\n"Great, really",good\n"two\nlines",bad\nplain,good\n')
    task = custom_task("reviews", "classification", ["text"], "stars", ["bad", "good"], {"train": path})
    data = read_custom_split(task, path)
    assert [r["text"] for r in data.rows] == ["Great, really", "two\nlines", "plain"]
    assert [r["label"] for r in data.rows] == [1, 0, 1]


def test_custom_csv_malformed_row_reports_its_first_line(tmp_path):
    path = write(tmp_path / "train.csv", 'text,stars\n"a\nb",good\nx,good,extra\ny,bad\n')
    task = custom_task("reviews", "classification", ["text"], "stars", ["bad", "good"], {"train": path})
    data = read_custom_split(task, path)
    assert data.malformed == [4] and len(data.rows) == 2


def test_custom_jsonl_bool_labels_and_bad_json_line(tmp_path):
    path = write(
        tmp_path / "dev.jsonl",
        '{"q": "Is it?", "a": "Yes.", "ok": true}\n{not json}\n\n{"q": "No?", "a": "No.", "ok": false}\n',
    )
    task = custom_task("yn", "entailment", ["q", "a"], "ok", ["false", "true"], {"validation": path})
    data = read_custom_split(task, path, split="validation")
    assert [r["label"] for r in data.rows] == [1, 0]
    assert data.malformed == [2]


def test_custom_jsonl_row_missing_a_field(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"t": "a", "y": 1}\n{"y": 0}\n')
    task = custom_task("c", "classification", ["t"], "y", ["0", "1"], {"train": path})
    with pytest.raises(GptuneError, match=r"train.jsonl line 2: missing field 't'"):
        read_custom_split(task, path)


def test_custom_test_split_may_lack_labels_but_train_may_not(tmp_path):
    path = write(tmp_path / "test.tsv", 'text\nsome "quoted text\n')
    task = custom_task("c", "classification", ["text"], "y", ["0", "1"], {"test": path})
    (row,) = read_custom_split(task, path, split="test").rows
    assert row == {"text": 'some "quoted text', "label": None, "idx": 0}
    with pytest.raises(GptuneError, match=r"test.tsv: missing label column 'y'"):
        read_custom_split(task, path, split="train")


def test_custom_multiple_choice_and_regression(tmp_path):
    mc = write(
        tmp_path / "mc.csv", "story,e1,e2,right\nHe fell.,He cried.,He flew.,1\nShe won.,Sad.,Glad.,2\n"
    )
    task = custom_task("cloze", "multiple_choice", ["story", "e1", "e2"], "right", ["1", "2"], {"train": mc})
    assert [r["label"] for r in read_custom_split(task, mc).rows] == [0, 1]
    reg = write(tmp_path / "r.jsonl", '{"a": "x", "b": "y", "s": 3}\n')
    task = custom_task("sim", "similarity", ["a", "b"], "s", None, {"train": reg})
    assert read_custom_split(task, reg).rows[0]["label"] == 3.0


def test_custom_unsupported_type_and_missing_file(tmp_path):
    task = custom_task("c", "classification", ["t"], "y", ["0", "1"], {})
    bad = write(tmp_path / "data.parquet", "")
    with pytest.raises(
        GptuneError, match=r"data.parquet: unsupported file type '.parquet'; use .csv, .tsv or .jsonl"
    ):
        read_custom_split(task, bad)
    with pytest.raises(GptuneError, match=r"missing file .*absent.csv"):
        read_custom_split(task, tmp_path / "absent.csv")


def test_to_dataset_keeps_rows(glue):
    write(glue / "SST-2" / "dev.tsv", "sentence\tlabel\nfine \t1\nbad \t0\n")
    ds = read_glue_split(get_task("sst2"), glue, "validation").to_dataset()
    assert ds.column_names == ["sentence", "label", "idx"] and ds["label"] == [1, 0]
