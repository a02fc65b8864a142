"""Reading a dataset file for `evalstream upload` (services/upload.py): JSON Lines and CSV into
the items the API takes, and a wrong line named before anything is sent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.upload import UploadError, read_items, upload


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_json_lines_are_items_with_their_line_numbers(tmp_path):
    path = _file(tmp_path, "d.jsonl", '{"id": "a", "input": {"q": 1}, "expected_output": "x"}\n'
                                      '\n'
                                      '{"input": "two", "metadata": {"tags": ["t"]}}\n')
    assert read_items(path) == [
        (1, {"id": "a", "input": {"q": 1}, "expected_output": "x"}),
        (3, {"input": "two", "metadata": {"tags": ["t"]}})]


def test_csv_columns_beyond_the_item_become_metadata(tmp_path):
    path = _file(tmp_path, "d.csv", 'id,input,expected_output,category,note\n'
                                    'a,"Capital of France, please?",Paris,geo,\n'
                                    ',2+2,4,math,easy\n')
    assert read_items(path) == [
        (2, {"id": "a", "input": "Capital of France, please?", "expected_output": "Paris",
             "metadata": {"category": "geo"}}),
        (3, {"input": "2+2", "expected_output": "4",
             "metadata": {"category": "math", "note": "easy"}})]


@pytest.mark.parametrize("name,text,message", [
    ("d.jsonl", '{"input": 1}\n{"input": 2,\n', "d.jsonl:2: not JSON"),
    ("d.jsonl", '{"input": 1}\n[1, 2]\n', "d.jsonl:2: an item is a JSON object"),
    ("d.jsonl", '{"input": 1}\n{"input": 1, "id": ""}\n', "d.jsonl:2: id:"),
    ("d.jsonl", '{"input": 1, "metadata": [1]}\n', "d.jsonl:1: metadata:"),
    ("d.jsonl", "\n\n", "no items"),
    ("d.csv", "question,answer\nq,a\n", "d.csv:1: the header row needs an `input` column"),
    ("d.txt", "x", "give a .jsonl, .ndjson or .csv file"),
])
def test_a_wrong_line_is_named(tmp_path, name, text, message):
    with pytest.raises(UploadError) as caught:
        read_items(_file(tmp_path, name, text))
    assert message in str(caught.value)


def test_a_refused_call_names_the_line_and_what_was_sent():
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(201, json={"ids": [f"i{n}" for n in range(1000)]})
        return httpx.Response(422, json={"detail": [
            {"loc": ["body", "items", 2, "id"], "msg": "repeats item id 'x'"}]})

    items = [(n + 2, {"input": n}) for n in range(1500)]
    client = httpx.Client(transport=httpx.MockTransport(answer), base_url="http://api")
    with pytest.raises(UploadError) as caught:
        upload(client, "d", items)
    assert str(caught.value) == (
        "line 1004: id: repeats item id 'x' (HTTP 422); lines up to 1001 are in the dataset")
    assert len(calls) == 2
