"""The text readers validate instead of guessing: every bad row is reported with its file and line, labels are
read by their type, and random well-formed files are read back exactly."""

import csv
import io
import json
import random

import pytest

from trimformer.data.text import load_text_file

ALPHABET = "abc xyz,;\"'\t\n\r é漢字🙂-_."


def _random_text(rng: random.Random) -> str:
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 20)))
    return text if text.strip() else text + "w"  # an example needs a non-blank text


def _random_labels(rng: random.Random, n: int) -> tuple[list, list[str], list[int]]:
    """Labels of one random kind -> (raw values, the expected class names, the expected ids)."""
    kind = rng.choice(("int", "str"))
    if kind == "int":
        pool = rng.sample(range(-5, 120), 3)
        raw = [rng.choice(pool) for _ in range(n)]
        names = sorted(set(raw))
        return raw, [str(v) for v in names], [names.index(v) for v in raw]
    pool = rng.sample(["pos", "neg", "neutral", "ünï", "a,b", 'say "hi"'], 3)
    raw = [rng.choice(pool) for _ in range(n)]
    names = sorted(set(raw))
    return raw, names, [names.index(v) for v in raw]


@pytest.mark.parametrize("seed", range(12))
def test_random_well_formed_files_read_back_exactly(tmp_path, seed):
    rng = random.Random(seed)
    n = rng.randint(2, 25)
    pairs = rng.random() < 0.5
    texts = [_random_text(rng) for _ in range(n)]
    seconds = [_random_text(rng) for _ in range(n)] if pairs else None
    raw, names, ids = _random_labels(rng, n)
    suffix = rng.choice((".csv", ".tsv", ".jsonl"))
    header = ["text"] + (["text_pair"] if pairs else []) + ["label"]
    rows = [[t] + ([seconds[i]] if pairs else []) + [raw[i]] for i, t in enumerate(texts)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r, strict=True)), ensure_ascii=rng.random() < 0.5) + "\n"
                                for r in rows), encoding="utf-8")
    else:
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t" if suffix == ".tsv" else ",",
                            quoting=rng.choice((csv.QUOTE_MINIMAL, csv.QUOTE_ALL)))
        writer.writerows([header] + rows)
        path.write_bytes(out.getvalue().encode("utf-8"))
    data = load_text_file(path)
    assert data.texts == texts
    assert getattr(data, "text_pairs", None) == seconds
    assert data.label_names == names and data.labels == ids


def _error(path, text: str) -> str:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    with pytest.raises(ValueError) as info:
        load_text_file(path)
    return str(info.value)


def test_a_short_row_is_an_error_not_a_class_named_none(tmp_path):
    message = _error(tmp_path / "d.csv", "text,label\ngood,pos\nno label here\nbad,neg\n")
    assert "d.csv:3: too few fields" in message


def test_an_unquoted_comma_is_an_error_not_a_new_class(tmp_path):
    message = _error(tmp_path / "d.csv", "text,label\ngood,pos\nfine, really,pos\nbad,neg\n")
    assert "d.csv:3: too many fields" in message and "double quotes" in message


def test_every_bad_row_is_listed_with_its_line(tmp_path):
    # line 3 is a quoted field spanning two lines: the rows after it keep their real line numbers
    message = _error(tmp_path / "d.csv", 'text,label\nok,pos\n"two\nlines",neg\nshort\nx,y,z\n   ,neg\nfine,pos\n')
    assert "4 bad rows" not in message and "3 bad rows" in message
    for line in (5, 6, 7):
        assert f"d.csv:{line}:" in message


def test_undecodable_bytes_name_the_line(tmp_path):
    message = _error(tmp_path / "d.csv", b"text,label\ngood,pos\nbad \xff\xfe bytes,neg\nalso \xc3 bad,pos\n")
    assert "d.csv:3: bytes" in message and "d.csv:4: bytes" in message and "UTF-8" in message


def test_a_null_text_is_an_error_not_the_string_none(tmp_path):
    message = _error(tmp_path / "d.jsonl", '{"text": "good", "label": "pos"}\n{"text": null, "label": "neg"}\n')
    assert "d.jsonl:2: 'text' is null" in message


def test_an_empty_csv_text_is_an_error(tmp_path):
    message = _error(tmp_path / "d.csv", 'text,label\ngood,pos\n"",neg\n')
    assert "d.csv:3: empty text" in message


def test_a_jsonl_row_without_a_label_names_its_line(tmp_path):
    message = _error(tmp_path / "d.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    assert "d.jsonl:2: no key 'label'" in message


def test_a_jsonl_line_that_is_not_an_object_or_not_json(tmp_path):
    message = _error(tmp_path / "d.jsonl", '{"text": "good", "label": "pos"}\n["bad", "neg"]\n{"text": "x",\n')
    assert "d.jsonl:2: a JSON list" in message and "d.jsonl:3: not valid JSON" in message


def test_a_missing_column_lists_the_columns(tmp_path):
    message = _error(tmp_path / "d.csv", "sentence,y\nhello,a\n")
    assert "['text', 'label'] not found" in message and "['sentence', 'y']" in message


def test_one_one_point_zero_and_true_are_a_mixed_type_error(tmp_path):
    message = _error(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n'
                                           '{"text": "c", "label": 1.0}\n{"text": "d", "label": true}\n')
    assert "d.jsonl:3: a float label" in message and "d.jsonl:4: a bool label" in message


def test_whole_floats_are_not_silently_classes(tmp_path):
    message = _error(tmp_path / "d.jsonl", '{"text": "a", "label": 0.0}\n{"text": "b", "label": 1.0}\n')
    assert "whole-valued float" in message and "label-type" in message
    assert load_text_file(tmp_path / "d.jsonl", label_type="class").label_names == ["0", "1"]


def test_string_labels_are_stripped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\na,pos\nb,"pos "\nc, neg\n')
    data = load_text_file(path)
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 1, 0]


def test_integer_labels_are_ordered_numerically(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,10\nb,2\nc,1\n")
    data = load_text_file(path)
    assert data.label_names == ["1", "2", "10"] and data.labels == [2, 1, 0]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 10}\n{"text": "b", "label": 2}\n')
    assert load_text_file(jsonl).label_names == ["2", "10"]


def test_the_error_is_capped_and_counts_the_rest(tmp_path):
    message = _error(tmp_path / "d.csv", "text,label\n" + "short\n" * 30)
    assert "30 bad rows" in message and "and 10 more" in message and message.count("too few fields") == 20
