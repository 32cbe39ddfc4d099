"""The CLI's genre flags and its `batch FILE.jsonl` command, against the real gateway."""

import json

import pytest

from gateway import cli
from recsys.v1 import common_pb2, gateway_pb2 as pb

pytestmark = pytest.mark.slow


def run(live_stack, capsys, *argv):
    code = cli.main(["--address", live_stack.gateway.address, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _genre_of(live_stack, item_id) -> set[str]:
    bits = live_stack.items.genres[live_stack.items.row_of[item_id]]
    return {g for b, g in enumerate(live_stack.manifest.genres) if bits >> b & 1}


def _common_genres(live_stack):
    counts = sorted(((int(((live_stack.items.genres >> b) & 1).sum()), g)
                     for b, g in enumerate(live_stack.manifest.genres)), reverse=True)
    return counts[0][1], counts[1][1]


@pytest.mark.parametrize("command", ["recommend", "similar"])
def test_genre_flags_filter(live_stack, capsys, command):
    first, second = _common_genres(live_stack)
    subject = live_stack.users.ids[0] if command == "recommend" else live_stack.items.ids[0]
    code, out, err = run(live_stack, capsys, command, subject, "-k", "5", "--genre", first, "--exclude-genre", second)
    assert code == 0, err
    item_ids = [line.split()[1] for line in out.splitlines()[3:]]
    assert len(item_ids) == 5
    for item_id in item_ids:
        genres = _genre_of(live_stack, item_id)
        assert first in genres and second not in genres, (item_id, genres)


def test_batch_answers_each_line_in_order(live_stack, capsys, tmp_path):
    users = live_stack.users.ids[:3].tolist()
    first, _ = _common_genres(live_stack)
    lines = [
        json.dumps({"user_id": users[0], "k": 4}),
        "",
        json.dumps({"user_id": users[1], "k": 3, "exclude_seen": True, "genre_filter": {"include_genres": [first]}}),
        json.dumps({"userId": users[2]}),  # protobuf's JSON also takes the camelCase names
        json.dumps({"user_id": "someone-new", "k": 2}),
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    code, out, err = run(live_stack, capsys, "batch", str(requests), "--batch-size", "2")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["user_id"] for a in answers] == [*users, "someone-new"]
    assert [len(a["items"]) for a in answers] == [4, 3, 10, 2]
    assert answers[3]["fallback"] is True and "fallback" not in answers[0]
    single = live_stack.stub.Recommend(pb.RecommendRequest(
        user_id=users[1], k=3, exclude_seen=True, genre_filter=common_pb2.GenreFilter(include_genres=[first]),
    ), timeout=10)
    assert [i["item_id"] for i in answers[1]["items"]] == [i.item_id for i in single.items]


def test_batch_names_bad_entries_by_line(live_stack, capsys, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join([
        json.dumps({"user_id": "1"}), "", json.dumps({"user_id": "2", "k": 5000}), json.dumps({"user_id": ""}),
    ]))
    code, out, err = run(live_stack, capsys, "batch", str(requests))
    assert code == 1 and not out
    assert err.startswith("error: INVALID_ARGUMENT")
    assert "  line 3: k: k must be 1..1000" in err and "  line 4: user_id: user_id is required" in err


def test_batch_input_errors_name_the_line(live_stack, capsys, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"user_id": "1"}) + "\n" + json.dumps({"user_id": "2", "colour": "red"}) + "\n")
    code, _, err = run(live_stack, capsys, "batch", str(requests))
    assert code == 2 and err.startswith("error: line 2: not a RecommendRequest") and "colour" in err
    code, _, err = run(live_stack, capsys, "batch", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err
