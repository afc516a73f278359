"""Counting generated tokens from answers: whole ones, and streams as they pass, split into
arbitrary chunks."""
from llamarig.api.compute.proxy import TokenCount, Usage, whole_usage


def feed(count: TokenCount, data: bytes, size: int) -> int:
    for i in range(0, len(data), size):
        count.feed(data[i:i + size])
    return count.usage.completion


def test_a_json_answer_reports_its_usage():
    body = b'{"choices":[{"text":"abc"}],"usage":{"completion_tokens":42,"prompt_tokens":3}}'
    assert whole_usage(body) == Usage(3, 42)
    assert whole_usage(b'{"text":"' + b"x" * 100_000 + b'","usage":{"completion_tokens":7}}') == Usage(0, 7)
    # llama-cpp-python's spacing, and llama-server's details after the count
    assert whole_usage(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}') == Usage(5, 2)
    assert whole_usage(b'{"usage":{"completion_tokens":3,"prompt_tokens":13,"total_tokens":16,'
                       b'"prompt_tokens_details":{"cached_tokens":12}}}', 2.5) == Usage(13, 3, 2.5)


def test_a_chat_stream_reports_predicted_n_in_its_last_event():
    events = b"".join(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' for _ in range(3))
    events += b'data: {"choices":[{"delta":{}}],"timings":{"predicted_n":5}}\n\ndata: [DONE]\n\n'
    for size in (1, 5, 64):
        assert feed(TokenCount(), events, size) == 5
    count = TokenCount()
    count.feed(events.replace(b'"predicted_n":5', b'"cache_n":62,"prompt_n":1,"predicted_n":5'))
    assert count.usage == Usage(63, 5)  # llama-server's chat stream: its prompt is the cached part and the rest


def test_a_stream_without_a_count_counts_its_events():
    events = b"".join(b'data: {"choices":[{"text":"x"}]}\n\n' for _ in range(9)) + b"data: [DONE]\n\n"
    for size in (1, 3, 1000):
        assert feed(TokenCount(), events, size) == 9


def test_an_error_answer_counts_nothing():
    assert whole_usage(b'{"error":{"message":"no"}}') == Usage()


def test_a_long_answer_keeps_only_its_tail_and_still_finds_the_count():
    count = TokenCount()
    for _ in range(5000):
        count.feed(b'data: {"choices":[{"text":"x"}]}\n\n')
    count.feed(b'data: {"timings":{"predicted_n":5000}}\n\ndata: [DONE]\n\n')
    assert count.usage.completion == 5000 and count.events == 5002
    assert count.held < 2 * 4096  # not the whole answer
