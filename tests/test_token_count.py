"""Counting generated tokens from answers: whole ones, and streams as they pass, split into
arbitrary chunks."""
from llamarig.api.compute.proxy import TokenCount, reported_tokens


def feed(count: TokenCount, data: bytes, size: int) -> int:
    for i in range(0, len(data), size):
        count.feed(data[i:i + size])
    return count.tokens


def test_a_json_answer_reports_its_usage():
    body = b'{"choices":[{"text":"abc"}],"usage":{"completion_tokens":42,"prompt_tokens":3}}'
    assert reported_tokens(body) == 42
    assert reported_tokens(b'{"text":"' + b"x" * 100_000 + b'","usage":{"completion_tokens":7}}') == 7


def test_a_chat_stream_reports_predicted_n_in_its_last_event():
    events = b"".join(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' for _ in range(3))
    events += b'data: {"choices":[{"delta":{}}],"timings":{"predicted_n":5}}\n\ndata: [DONE]\n\n'
    for size in (1, 5, 64):
        assert feed(TokenCount(), events, size) == 5


def test_a_stream_without_a_count_counts_its_events():
    events = b"".join(b'data: {"choices":[{"text":"x"}]}\n\n' for _ in range(9)) + b"data: [DONE]\n\n"
    for size in (1, 3, 1000):
        assert feed(TokenCount(), events, size) == 9


def test_an_error_answer_counts_nothing():
    assert reported_tokens(b'{"error":{"message":"no"}}') == 0


def test_a_long_answer_keeps_only_its_tail_and_still_finds_the_count():
    count = TokenCount()
    for _ in range(5000):
        count.feed(b'data: {"choices":[{"text":"x"}]}\n\n')
    count.feed(b'data: {"timings":{"predicted_n":5000}}\n\ndata: [DONE]\n\n')
    assert count.tokens == 5000 and count.events == 5002
    assert count.held < 2 * 4096  # not the whole answer
