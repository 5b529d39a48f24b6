"""core.data: reading, schema detection, validation, the report, splits (tokenisation: test_tokenize.py)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from core.data import MIB, DataError, format_size, load_data
from core.data import dataset as D


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


# ---------------------------------------------------------------- bad input: one test per case


def test_not_utf8_names_byte_offset_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", b"text,label\nhello,a\ncaf\xe9,b\n")
    with pytest.raises(DataError, match=r"byte offset 22 \(line 3\)") as e:
        load_data(p)
    assert "UTF-8" in str(e.value) and "Re-save" in str(e.value)


def test_broken_jsonl_names_line(tmp_path: Path) -> None:
    lines = ['{"text": "a", "label": "x"}', "", '{"text": "b", "label": "y"}', '{"text": "c", "label"']
    p = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4, column \d+: broken JSON") as e:
        load_data(p)
    assert "one" in str(e.value) and "JSON object" in str(e.value)


def test_broken_json_names_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path, "d.json", '[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n')
    with pytest.raises(DataError, match=r"broken JSON at line 3, column 16") as e:
        load_data(p)
    assert "array of objects" in str(e.value)


def test_missing_columns_lists_expected_and_found(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "foo,bar\n1,2\n")
    with pytest.raises(DataError, match=r"Missing columns: expected text .* and label .*; found foo, bar"):
        load_data(p, "classification")
    with pytest.raises(DataError, match=r"expected messages; or prompt \+ response.*found foo, bar"):
        load_data(p)


def test_mapping_to_unknown_column_names_it(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "foo,bar\n1,2\n")
    with pytest.raises(DataError, match=r"column 'baz' for 'text', but the columns are: foo, bar"):
        load_data(p, mapping={"text": "baz"})


def test_single_class(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "text,label\na,spam\nb,spam\nc,spam\n")
    with pytest.raises(DataError, match=r"single class \('spam', 3 rows\); classification needs at least 2"):
        load_data(p, "classification")


def test_empty_file(tmp_path: Path) -> None:
    for content in (b"", b"\xef\xbb\xbf\r\n  \n"):
        with pytest.raises(DataError, match=r"d.csv is empty. Expected a header"):
            load_data(write(tmp_path, "d.csv", content))


def test_header_only(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "text,label\r\n\r\n")
    with pytest.raises(DataError, match=r"header \(text, label\) but no data rows"):
        load_data(p)


def test_file_over_size_limit_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "d.csv", "text,label\n" + "hello,a\n" * 200)

    def no_read(self: Path) -> bytes:
        raise AssertionError("read before the size check")

    monkeypatch.setattr(Path, "read_bytes", no_read)
    with pytest.raises(DataError, match=r"1\.6 KiB, over the 1\.0 KiB limit"):
        load_data(p, max_bytes=1024)


def test_size_limit_is_said_in_mib(tmp_path: Path) -> None:
    """--max-upload-mb 50 means 50 * 2**20 bytes: the message says 50.0 MiB, not '52 MB' (issue 9.8)."""
    p = tmp_path / "big.csv"
    with open(p, "wb") as fh:
        fh.truncate(51 * MIB)  # sparse: refused on its size, never read
    with pytest.raises(DataError, match=r"big\.csv is 51\.0 MiB, over the 50\.0 MiB limit"):
        load_data(p, max_bytes=50 * MIB)
    assert format_size(50 * MIB) == "50.0 MiB" and format_size(2048) == "2.0 KiB"


def _zip_bytes(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.writestr(n, "text,label\nhi,a\n")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (_zip_bytes(["data.csv"]), "a ZIP archive. Unzip it"),
        (_zip_bytes(["[Content_Types].xml", "xl/workbook.xml"]), r"an Excel workbook \(\.xlsx\)"),
        (gzip.compress(b"text,label\nhi,a\n"), "a gzip-compressed file"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
        (b"text,label\nhi\x00\x01\x02,a\n", r"binary data \(it holds NUL bytes\)"),
        ("text,label\nhi,a\n".encode("utf-16"), "UTF-16 text"),
    ],
)
def test_binary_file_renamed_to_csv_is_not_a_text_table(tmp_path: Path, content: bytes, what: str) -> None:
    """A ZIP renamed to .csv used to be reported as 'not valid UTF-8' (issue 8.5)."""
    p = write(tmp_path, "upload.csv", content)
    with pytest.raises(DataError, match=f"upload.csv is not a text table: it looks like {what}") as e:
        load_data(p)
    assert "UTF-8: byte" not in str(e.value)


def test_file_not_found_names_the_file_not_the_server_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="File not found: missing.csv") as e:
        load_data(tmp_path / "missing.csv")
    assert str(tmp_path) not in str(e.value)


def test_hub_id_offline_says_upload_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"Cannot reach the Hugging Face Hub .*'someone/dataset'.*Upload a CSV"):
        load_data("someone/dataset")
    with pytest.raises(DataError, match="File not found: missing/train.csv"):
        load_data("missing/train.csv")


def test_extra_fields_name_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "text,label\nhello,a\nhello, world,b\n")
    with pytest.raises(DataError, match=r"line 3: 3 fields but the header has 2 \(text, label\)\. Quote fields"):
        load_data(p)


def test_no_usable_rows_lists_reasons(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "prompt,response\nhi,\n,yo\n")
    with pytest.raises(DataError, match=r"all 2 were dropped: 2 empty \(e.g. line 2 \(response\), line 3 \(prompt\)"):
        load_data(p)


# ---------------------------------------------------------------- quirks handled silently


def test_bom_crlf_padded_cased_headers_and_embedded_newlines(tmp_path: Path) -> None:
    raw = '\ufeff Text ,LABEL \r\n"first, with comma",pos\r\n"multi\r\nline ""quoted"" text",neg\r\nlast,pos\r\n'
    d = load_data(write(tmp_path, "d.csv", raw.encode("utf-8")))
    assert d.report.columns == {"text": "Text", "label": "LABEL"}
    assert [e.text for e in d.examples] == ["first, with comma", 'multi\r\nline "quoted" text', "last"]
    assert [e.where for e in d.examples] == ["line 2", "line 3", "line 5"]  # the quoted newline spans two lines
    assert d.report.label_names == ["neg", "pos"]


def test_tsv_with_embedded_newline_matches_csv_module(tmp_path: Path) -> None:
    rows = [["text", "label"], ["a\nb", "x"], ["c", "y"]]
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t").writerows(rows)
    d = load_data(write(tmp_path, "d.tsv", buf.getvalue()))
    assert [(e.text, e.label) for e in d.examples] == [("a\nb", "x"), ("c", "y")]


def test_format_sniffing(tmp_path: Path) -> None:
    jsonl = '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'
    assert load_data(write(tmp_path, "a.txt", jsonl)).report.format == "jsonl"
    assert load_data(write(tmp_path, "b.json", jsonl)).report.format == "jsonl"  # JSON Lines saved as .json
    assert load_data(write(tmp_path, "c.data", "text\tlabel\na\t0\nb\t1\n")).report.format == "tsv"
    semi = load_data(write(tmp_path, "d.csv", "text;label\nhello, you;0\nb;1\n"))  # European Excel
    assert semi.examples[0].text == "hello, you"


# ---------------------------------------------------------------- schemas


MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("name", "content", "schema"),
    [
        ("m.jsonl", json.dumps({"messages": MSGS}) + "\n", "messages"),
        ("m.csv", "messages\n" + '"' + json.dumps(MSGS).replace('"', '""') + '"\n', "messages"),
        (
            "s.json",
            json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]),
            "messages",
        ),
        ("p.csv", "Prompt,Response\nhi,hello\n", "prompt_response"),
        ("c.jsonl", json.dumps({"prompt": "hi", "completion": "hello"}) + "\n", "prompt_response"),
        ("a.json", json.dumps([{"instruction": "hi", "input": "", "output": "hello"}]), "alpaca"),
    ],
)
def test_chat_schemas_detected(tmp_path: Path, name: str, content: str, schema: str) -> None:
    d = load_data(write(tmp_path, name, content))
    assert (d.report.task, d.report.schema) == ("sft", schema)
    assert d.examples[0].messages == MSGS


def test_alpaca_input_and_system_prompt(tmp_path: Path) -> None:
    p = write(tmp_path, "a.json", json.dumps([{"instruction": "Sum", "input": "2 2", "output": "4"}]))
    d = load_data(p, system_prompt="Be brief.")
    assert d.examples[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sum\n\n2 2"},
        {"role": "assistant", "content": "4"},
    ]
    # a system column wins over the parameter
    p = write(tmp_path, "s.csv", "system,prompt,response\nYou are Bob.,hi,hello\n")
    assert load_data(p, system_prompt="x").examples[0].messages[0] == {"role": "system", "content": "You are Bob."}


def test_plain_text_schema(tmp_path: Path, tok: Any) -> None:
    d = load_data(write(tmp_path, "t.jsonl", '{"text": "Hello there"}\n'), tokenizer=tok)
    assert (d.report.task, d.report.schema, d.examples[0].text) == ("sft", "text", "Hello there")
    ex = d.tokenized[0]
    assert ex.input_ids[-1] == tok.eos_token_id and ex.labels[1:] == ex.input_ids[1:] and ex.labels[0] == -100


def test_classification_detected_and_mapping_override(tmp_path: Path) -> None:
    p = write(tmp_path, "c.csv", "Utterance,Intent,other\nhi,greet,1\nbye,leave,2\n")
    d = load_data(p)
    assert (d.report.task, d.report.columns) == ("classification", {"text": "Utterance", "label": "Intent"})
    d = load_data(p, mapping={"label": "other", "text": "utterance"})
    assert (d.report.task, [e.label for e in d.examples], d.label_names) == ("classification", [1, 2], ["0", "1", "2"])


def test_drop_reasons_counted_with_locations(tmp_path: Path) -> None:
    recs = [
        {"text": "ok", "label": "a"},
        {"text": "  ", "label": "a"},
        {"text": None, "label": "b"},
        {"text": "nan", "label": "b"},
        {"text": 5, "label": "b"},
        {"text": "ok", "label": 1.5},
        {"text": "fine", "label": "b"},
    ]
    d = load_data(write(tmp_path, "c.json", json.dumps(recs)))
    assert d.report.dropped == {"empty": 1, "NaN/None": 2, "wrong type": 2}
    assert d.report.dropped_where["NaN/None"] == ["item 3 (text)", "item 4 (text)"]
    assert d.report.rows_read == 7 and d.report.rows_kept == 2 and d.report.rows_dropped == 5
    msgs = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": "not json"},
        {"messages": MSGS},
    ]
    d = load_data(write(tmp_path, "m.jsonl", "\n".join(json.dumps(m) for m in msgs)))
    assert d.report.dropped == {"empty": 1, "no assistant reply": 1, "wrong type": 1}


def test_labels_ids_names_and_warnings(tmp_path: Path) -> None:
    rows = [("t", "b")] * 30 + [("t", "a")] * 5 + [("t", "c")] * 2
    p = write(tmp_path, "c.csv", "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    d = load_data(p)
    assert d.label_names == ["a", "b", "c"]  # sorted, not first-seen
    assert d.report.label_counts == {"b": 30, "a": 5, "c": 2}
    assert any("Imbalanced" in w and "15x" in w for w in d.report.warnings)
    assert any("fewer than 8 rows: a, c" in w and "zero-shot" in w for w in d.report.warnings)
    assert load_data(p, label_names=["c", "b", "a"]).label_names == ["c", "b", "a"]
    with pytest.raises(DataError, match="Labels not in the given label list .*: c"):
        load_data(p, label_names=["a", "b"])
    ints = write(tmp_path, "i.csv", "text,label\nx,2\ny,0\nz,-1\n")
    d = load_data(ints)
    assert d.label_names == ["0", "1", "2"] and [e.label for e in d.examples] == [2, 0]
    assert d.report.dropped == {"negative label (unlabelled?)": 1}


def test_class_with_fewer_than_8_rows_is_warned_before_training(tmp_path: Path) -> None:
    """Issue 8.3: fine-tuning on a class of 7 rows did worse than zero-shot; the report says so up front."""
    rows = [("t", "big")] * 20 + [("t", "seven")] * 7 + [("t", "eight")] * 8
    d = load_data(write(tmp_path, "c.csv", "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows)))
    rare = [w for w in d.report.warnings if "fewer than 8 rows" in w]
    assert len(rare) == 1 and "seven" in rare[0] and "eight" not in rare[0], d.report.warnings


def test_mixed_integer_and_word_labels_are_warned(tmp_path: Path) -> None:
    """cls_labels_int_and_str: labels 0, 1, one, zero became 4 classes without a word (issue 8.5)."""
    labels = ["0", "1", "one", "zero"] * 10
    d = load_data(write(tmp_path, "m.csv", "text,label\n" + "".join(f"t,{lab}\n" for lab in labels)))
    assert d.label_names == ["0", "1", "one", "zero"]
    mixed = [w for w in d.report.warnings if "mix integer ids" in w]
    assert mixed and "(0, 1) and words (one, zero)" in mixed[0] and "4 separate classes" in mixed[0]
    words = load_data(write(tmp_path, "w.csv", "text,label\n" + "t,one\nt,zero\n" * 10))
    ints = load_data(write(tmp_path, "i.csv", "text,label\n" + "t,0\nt,1\n" * 10))
    assert not [w for r in (words, ints) for w in r.report.warnings if "mix integer ids" in w]


# ---------------------------------------------------------------- with a tokenizer: too long, report


def test_sft_too_long_dropped_and_classification_truncated(tmp_path: Path, tok: Any) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 8
    p = write(tmp_path, "p.csv", f"prompt,response\nhi,hello\nhi,{long}\n")
    d = load_data(p, tokenizer=tok, max_length=40)
    assert d.report.dropped == {"too long": 1} and d.report.too_long_policy == "dropped"
    assert len(d.tokenized) == 1 and len(d.tokenized[0]) <= 40 and d.report.token_lengths["over_max_length"] == 1
    p = write(tmp_path, "c.csv", f"text,label\nhi,a\n{long},b\n")
    d = load_data(p, tokenizer=tok, max_length=10)
    assert d.report.truncated == 1 and d.report.too_long_policy == "truncated" and d.report.rows_kept == 2
    assert [len(e.input_ids) for e in d.tokenized] == [len(tok("hi").input_ids), 10]
    assert [e.label for e in d.tokenized] == [0, 1]


def test_report_on_generated_300_row_csv(tmp_path: Path, tok: Any, corpus: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sentence", "category"])
    for i in range(300):
        w.writerow([f"{corpus[i % 5]} #{i}" if i % 50 else "", ["billing", "cards", "other"][i % 3]])
    d = load_data(write(tmp_path, "big.csv", buf.getvalue()), tokenizer=tok, max_length=12)
    r = d.report
    assert (r.rows_read, r.rows_kept, r.dropped) == (300, 294, {"empty": 6})
    assert set(r.token_lengths) == {"p50", "p90", "p99", "max", "over_max_length"}
    assert r.token_lengths["p50"] <= r.token_lengths["p90"] <= r.token_lengths["max"]
    assert r.truncated == r.token_lengths["over_max_length"] > 0
    assert json.loads(json.dumps(r.to_dict()))["rows_dropped"] == 6
    from demo.render import data_report_markdown

    md = data_report_markdown(r)
    assert "294 kept" in md and "| empty | 6 | line 2 " in md and "| billing | 98 |" in md
    assert len(r.samples) == 3 and len(r.fingerprint) == 12


# ---------------------------------------------------------------- split and fingerprint


def test_split_train_eval_deterministic_and_stratified() -> None:
    items = list(range(100))
    tr, ev = D.split_train_eval(items, 0.2, seed=1)
    assert (tr, ev) == D.split_train_eval(items, 0.2, seed=1) and len(ev) == 20
    assert sorted(tr + ev) == items and ev != D.split_train_eval(items, 0.2, seed=2)[1]
    labels = ["a"] * 90 + ["rare"] * 3 + ["b"] * 7
    tr, ev = D.split_train_eval(items, 0.1, seed=0, stratify=labels)
    assert {labels[i] for i in ev} == {"a", "b", "rare"} and {labels[i] for i in tr} == {"a", "b", "rare"}
    assert D.split_train_eval(items, 0.0)[1] == []


def test_data_fingerprint(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "text,label\na,b\n")
    fp = D.data_fingerprint(p)
    assert len(fp) == 12 and fp == D.data_fingerprint(str(p))
    assert fp != D.data_fingerprint(write(tmp_path, "b.csv", "text,label\na,c\n"))
    recs = [{"a": 1, "b": 2}]
    assert D.data_fingerprint(recs) == D.data_fingerprint([{"b": 2, "a": 1}]) != D.data_fingerprint([{"a": 2}])
    assert load_data(p.parent / "a.csv", "sft", mapping={"text": "text"}).report.fingerprint == fp
