"""The benchmark journal (ResultStore) after an append was torn mid-line."""
import json

from android_bench.runner import ResultStore

WHOLE = {"target": "host", "threads": 1, "n": 1}
NEXT = {"target": "host", "threads": 2, "n": 2}


def test_append_after_a_torn_line_keeps_both_whole_records(tmp_path):
    path = tmp_path / "b.jsonl"
    torn = json.dumps({"target": "host", "threads": 4, "n": 3}, sort_keys=True)[:17]
    path.write_text(json.dumps(WHOLE, sort_keys=True) + "\n" + torn)
    store = ResultStore(path)
    assert store.load() == [WHOLE]
    store.append(NEXT)
    assert store.load() == [WHOLE, NEXT]
    assert path.read_text().endswith("\n") and torn not in path.read_text()


def test_a_file_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"target": "ho')
    store = ResultStore(path)
    assert store.load() == []
    store.append(NEXT)
    assert store.load() == [NEXT]


def test_a_whole_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(WHOLE, sort_keys=True))
    store = ResultStore(path)
    store.append(NEXT)
    assert store.load() == [WHOLE, NEXT]


def test_appends_to_a_clean_journal_are_lines(tmp_path):
    store = ResultStore(tmp_path / "sub" / "b.jsonl")
    store.append(WHOLE)
    store.append(NEXT)
    assert store.load() == [WHOLE, NEXT]
    assert store.path.read_text().count("\n") == 2
