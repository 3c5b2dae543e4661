"""Tests for dora_jax.tasks.diversity: label pass-through, offline embedding clusters, and the LLM judge against
a real HTTP server on loopback (well-formed, fenced, malformed, slow, failing and absent)."""

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest

from dora_jax.tasks import diversity as dv

FACTOR = "We factor the quadratic: x^2 - 5x + 6 = (x-2)(x-3), so the roots are 2 and 3. The sum is 5."
FACTOR_2 = "Factor the quadratic: x^2 - 5x + 6 = (x-2)(x-3), hence the roots are 2 and 3, and their sum is 5."
VIETA = "By Vieta's formulas the sum of the roots of x^2 - 5x + 6 is -b/a = 5."
GUESS = "Guess and check: x=1 gives 2, no; x=2 gives 0, yes; x=3 gives 0, yes. Sum 5."


def config(name: str, **fields):
    c = dv.default_config()
    c.name = name
    if name in c:
        c[name].update(fields)
    c.lock()  # the launcher locks configs; the functions must work on a locked section
    return c


# ----------------------------------------------------------------------------------------------------------------------
# Registry and task labels.

def test_registry_and_unknown_name():
    assert set(dv.DIVERSITY) == {"task_labels", "embedding", "llm_judge"}
    with pytest.raises(ValueError, match="use a registered function"):
        dv.make_diversity(config("nope"))


def test_task_labels_pass_through():
    fn = dv.make_diversity(config("task_labels"))
    labels = np.array([[3, 3, -1, 0], [1, 2, 1, 5]])
    out = fn(["p0", "p1"], [["a", "b", "c", "d"]] * 2, labels)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    assert fn.stats == {}


def test_task_labels_errors():
    fn = dv.make_diversity(config("task_labels"))
    with pytest.raises(ValueError, match="has none; set diversity.name"):
        fn(["p"], [["a", "b"]], None)
    with pytest.raises(ValueError, match="shape"):
        fn(["p"], [["a", "b"]], np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="one prompt per group"):
        fn(["p", "q"], [["a", "b"]], np.zeros((1, 2), np.int32))
    with pytest.raises(ValueError, match="different sizes"):
        fn(["p", "q"], [["a", "b"], ["a"]], None)


# ----------------------------------------------------------------------------------------------------------------------
# Embedding.

def test_embedding_clusters_near_duplicates_and_marks_degenerate():
    fn = dv.make_diversity(config("embedding"))
    responses = [[FACTOR, VIETA, "", FACTOR_2, GUESS, "  \n\t", FACTOR + "  ", VIETA],
                 [GUESS, GUESS, GUESS, "", "", "", "", ""]]
    out = fn(["Sum of the roots of x^2 - 5x + 6?"] * 2, responses, None)
    np.testing.assert_array_equal(out, [[0, 1, -1, 0, 2, -1, 0, 1],
                                        [0, 0, 0, -1, -1, -1, -1, -1]])


def _same_partition(a, b) -> bool:
    """Whether two cluster-id rows group the positions alike (ids may be numbered differently)."""
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]) and np.array_equal(a < 0, b < 0))


def test_embedding_ignores_response_order_and_threshold_splits():
    responses = [[FACTOR, FACTOR_2, VIETA, GUESS]]
    fn = dv.make_diversity(config("embedding"))
    a = fn(["p"], responses, None)[0]
    order = [2, 0, 3, 1]
    b = fn(["p"], [[responses[0][i] for i in order]], None)[0]
    assert _same_partition(a[order], b)  # the clustering does not depend on the order responses come in
    # A threshold of 1 separates every distinct text but still joins exact duplicates.
    strict = dv.make_diversity(config("embedding", threshold=1.0))
    np.testing.assert_array_equal(strict(["p"], [[FACTOR, FACTOR_2, FACTOR]], None), [[0, 1, 0]])
    # A threshold of -1 joins everything.
    loose = dv.make_diversity(config("embedding", threshold=-1.0))
    np.testing.assert_array_equal(loose(["p"], responses, None), [[0, 0, 0, 0]])


def test_embedding_vectors_are_unit_and_blend_char_and_word_cosines():
    texts = [FACTOR, VIETA, "x"]
    vecs = dv.Embedding(dv.default_config().embedding).embed(texts)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)

    def cosine(word_weight):
        cfg = dv.default_config().embedding
        cfg.word_weight = word_weight
        v = dv.Embedding(cfg).embed(texts)
        return v @ v.T

    np.testing.assert_allclose(cosine(0.3), 0.7 * cosine(0.0) + 0.3 * cosine(1.0), atol=1e-5)


@pytest.mark.parametrize("linkage, threshold, expected", [
    ("single", 0.6, [0, 0, 0]),      # 0-1 and 1-2 are close: chained
    ("complete", 0.5, [0, 0, 1]),    # min(0.1, 0.9) < 0.5
    ("average", 0.5, [0, 0, 0]),     # mean(0.1, 0.9) = 0.5
    ("average", 0.6, [0, 0, 1]),
])
def test_agglomerate_linkages_by_hand(linkage, threshold, expected):
    sim = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.9], [0.1, 0.9, 1.0]])
    # Ties (0-1 and 1-2) go to the lowest indices: 0 and 1 merge first.
    np.testing.assert_array_equal(dv._agglomerate(sim, threshold, linkage), expected)


@pytest.mark.parametrize("linkage", ["single", "average", "complete"])
def test_agglomerate_matches_scipy(linkage):
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=(12, 6))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        # These linkages merge at monotone heights, so "merge while sim >= t" cuts scipy's tree at 1 - t.
        dist = 1.0 - sim[np.triu_indices(12, k=1)]
        theirs = hierarchy.fcluster(hierarchy.linkage(dist, linkage), t=1.0 - 0.5, criterion="distance")
        ours = dv._agglomerate(sim, 0.5, linkage)
        np.testing.assert_array_equal(ours[:, None] == ours[None, :], theirs[:, None] == theirs[None, :])


def test_embedding_config_errors(tmp_path):
    with pytest.raises(ValueError, match="linkage"):
        dv.make_diversity(config("embedding", linkage="ward"))
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        dv.make_diversity(config("embedding", model_dir=str(tmp_path / "missing")))


def test_embedding_with_local_hf_encoder(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    words = "factor the quadratic use vieta sum of roots guess and check".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]"] + words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        tmp_path)
    torch.manual_seed(0)
    bert = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(bert).eval().save_pretrained(tmp_path)

    fn = dv.make_diversity(config("embedding", model_dir=str(tmp_path), threshold=0.999))
    texts = ["factor the quadratic", "use vieta", "guess and check sum of roots"]
    vecs = fn.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    # Padding must not change a text's embedding: alone, it has no padding.
    np.testing.assert_allclose(fn.embed(texts[:1])[0], vecs[0], atol=1e-5)
    out = fn(["p"], [[texts[0], "", texts[1], texts[2], texts[0] + " "]], None)
    np.testing.assert_array_equal(out, [[0, -1, 1, 2, 0]])


# ----------------------------------------------------------------------------------------------------------------------
# LLM judge against a fake OpenAI-compatible server on loopback.

TIMEOUT_S = 0.3
BACKOFF_S = 0.05


def chat(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class FakeJudge(http.server.ThreadingHTTPServer):
    """Answers request i with replies[min(i, last)] = (status, body, delay_s) and records every request; with
    byte_gap_s > 0 it sends the body one byte at a time, byte_gap_s apart."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[tuple[int, bytes, float]] = []
        self.byte_gap_s = 0.0
        self.endless_headers = False  # send a header line byte by byte that never ends
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        pass  # the client hung up on a slow reply: expected in the timeout test


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, payload, delay = server.replies[min(len(server.requests), len(server.replies)) - 1]
        time.sleep(delay)
        if server.endless_headers:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not server.closing.is_set():
                self.wfile.write(b"a")  # raises once the client hangs up
                self.wfile.flush()
                time.sleep(0.01)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        pieces = [payload[i:i + 1] for i in range(len(payload))] if server.byte_gap_s else [payload]
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(server.byte_gap_s)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = FakeJudge()
    # A short poll interval keeps shutdown() (which waits for the next poll) from costing 0.5 s per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


def make_judge(url: str, **fields):
    return dv.make_diversity(config("llm_judge", base_url=url, model="judge-7b", timeout_s=TIMEOUT_S,
                                    backoff_s=BACKOFF_S, **fields))


GROUP = [FACTOR, VIETA, FACTOR_2, GUESS]


def test_judge_well_formed_reply_and_request(judge_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    judge_server.replies = [(200, chat('{"clusters": [4, 1, 4, 7]}'), 0.0)]
    fn = make_judge(judge_server.url + "/", api_key_env="JUDGE_KEY")
    out = fn(["Sum of the roots?"], [GROUP], None)
    np.testing.assert_array_equal(out, [[0, 1, 0, 2]])  # the judge's ids, renumbered by first appearance
    assert fn.stats == {"groups": 1, "requests": 1, "retries": 0, "fallbacks": 0}
    (request,) = judge_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sekret"
    body = request["body"]
    assert body["model"] == "judge-7b" and body["temperature"] == 0
    user = body["messages"][-1]["content"]
    assert "Sum of the roots?" in user and all(r in user for r in GROUP)
    assert user.index(FACTOR) < user.index(VIETA) < user.index(FACTOR_2) < user.index(GUESS)


def test_judge_sends_distinct_responses_only(judge_server):
    judge_server.replies = [(200, chat('{"clusters": [0, 1]}'), 0.0)]
    fn = make_judge(judge_server.url)
    out = fn(["p", "q", "r"], [[FACTOR, "", VIETA, FACTOR + "\n"], ["", " ", "", ""], [GUESS, "", GUESS, GUESS]], None)
    np.testing.assert_array_equal(out, [[0, -1, 1, 0], [-1, -1, -1, -1], [0, -1, 0, 0]])
    # Only the first group needs the judge; it sees two numbered responses and no Authorization header.
    (request,) = judge_server.requests
    user = request["body"]["messages"][-1]["content"]
    assert user.count(FACTOR) == 1 and "Response 1" in user and "Response 2" not in user
    assert "Authorization" not in request["headers"]


def test_judge_reply_in_fence_with_text(judge_server):
    reply = ('Let me compare. An example format is {"clusters": [9, 9, 9, 9]}.\n'
             '```json\n{"clusters": [0, 1, 0, 1], "why": "factoring vs formulas"}\n```\nDone.')
    judge_server.replies = [(200, chat(reply), 0.0)]
    fn = make_judge(judge_server.url)
    np.testing.assert_array_equal(fn(["p"], [GROUP], None), [[0, 1, 0, 1]])
    assert fn.stats["fallbacks"] == 0


@pytest.mark.parametrize("payload", [
    chat("These responses all look similar to me."),
    chat('{"clusters": [0, 1, 2]}'),                 # wrong length
    chat('{"clusters": [0, "1", 2, 3]}'),            # a string
    chat('{"clusters": [0, 1.5, 2, 3]}'),            # a float
    chat('{"clusters": [true, false, true, true]}'),  # booleans
    chat('{"clusters": [0, -1, 2, 3]}'),             # negative
    chat('{"clusters": "0 1 2 3"}'),
    b'{"id": "not a chat completion"}',
    b"<html>oops</html>",
])
def test_judge_malformed_reply_falls_back_after_retries(judge_server, payload):
    judge_server.replies = [(200, payload, 0.0)]
    fn = make_judge(judge_server.url, retries=1)
    np.testing.assert_array_equal(fn(["p"], [GROUP + [""]], None), [[0, 1, 2, 3, -1]])
    assert len(judge_server.requests) == 2
    assert fn.stats == {"groups": 1, "requests": 2, "retries": 1, "fallbacks": 1}


def test_judge_slow_server_times_out_within_bound(judge_server):
    judge_server.replies = [(200, chat('{"clusters": [0, 0, 0, 0]}'), 20.0)]
    retries = 1
    fn = make_judge(judge_server.url, retries=retries)
    start = time.monotonic()
    out = fn(["p", "q"], [GROUP, GROUP[::-1]], None)
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(out, [[0, 1, 2, 3]] * 2)
    assert fn.stats == {"groups": 2, "requests": 4, "retries": 2, "fallbacks": 2}
    # Groups run concurrently and each request ends at its deadline: the call costs about
    # (retries + 1) * TIMEOUT_S + BACKOFF_S = 0.65 s, never the server's 20 s sleep (a generous bound: loaded
    # machines are slow, not 15x slow).
    assert elapsed < 10.0, elapsed


def test_judge_trickling_server_times_out_within_bound(judge_server):
    # Every byte arrives well within timeout_s, but the whole reply would take seconds.
    judge_server.replies = [(200, chat('{"clusters": [0, 0, 0, 0]}'), 0.0)]
    judge_server.byte_gap_s = 0.05
    fn = make_judge(judge_server.url, retries=0)
    start = time.monotonic()
    np.testing.assert_array_equal(fn(["p"], [GROUP], None), [[0, 1, 2, 3]])
    # The whole reply would take seconds; the deadline cuts it at TIMEOUT_S (a generous bound below).
    assert time.monotonic() - start < 5.0, time.monotonic() - start
    assert fn.stats["fallbacks"] == 1


def test_judge_server_trickling_endless_headers_cannot_hold_the_call(judge_server):
    # Each header byte arrives well within timeout_s and the headers never end: only a deadline on the whole
    # exchange ends the request. The call runs in a thread so that a regression fails here instead of hanging.
    judge_server.replies = [(200, b"", 0.0)]
    judge_server.endless_headers = True
    fn = make_judge(judge_server.url, retries=1)
    out = {}
    worker = threading.Thread(target=lambda: out.update(clusters=fn(["p"], [GROUP], None)), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), "the judge is still waiting for the headers"
    np.testing.assert_array_equal(out["clusters"], [[0, 1, 2, 3]])
    assert fn.stats == {"groups": 1, "requests": 2, "retries": 1, "fallbacks": 1}


def test_judge_retries_server_error_then_succeeds(judge_server):
    judge_server.replies = [(500, b"overloaded", 0.0), (429, b"slow down", 0.0),
                            (200, chat('{"clusters": [0, 1, 1, 0]}'), 0.0)]
    fn = make_judge(judge_server.url, retries=2)
    np.testing.assert_array_equal(fn(["p"], [GROUP], None), [[0, 1, 1, 0]])
    assert fn.stats == {"groups": 1, "requests": 3, "retries": 2, "fallbacks": 0}


def test_judge_client_error_is_not_retried(judge_server):
    judge_server.replies = [(400, b'{"error": "unknown model"}', 0.0)]
    fn = make_judge(judge_server.url, retries=3)
    np.testing.assert_array_equal(fn(["p"], [GROUP], None), [[0, 1, 2, 3]])
    assert len(judge_server.requests) == 1 and fn.stats["fallbacks"] == 1


def test_judge_connection_refused_falls_back():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    fn = make_judge(f"http://127.0.0.1:{port}/v1", retries=1)
    start = time.monotonic()
    np.testing.assert_array_equal(fn(["p"], [GROUP], None), [[0, 1, 2, 3]])
    assert time.monotonic() - start < 10.0  # refused at once: two attempts and one backoff, not a hang
    assert fn.stats == {"groups": 1, "requests": 2, "retries": 1, "fallbacks": 1}


def test_judge_config_errors(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="unset environment variable"):
        make_judge("http://127.0.0.1:1/v1", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ValueError, match="model is empty"):
        dv.make_diversity(config("llm_judge"))
    with pytest.raises(ValueError, match="http"):
        make_judge("127.0.0.1:8000/v1")


def test_parse_clusters():
    assert dv.parse_clusters('{"clusters": [0, 2, 2]}', 3) == [0, 2, 2]
    assert dv.parse_clusters('Sure!\n```json\n{"clusters": [1, 0]}\n```', 2) == [1, 0]
    assert dv.parse_clusters('\\frac{1}{2} then {"clusters": [0, 0]} and {"other": 1}', 2) == [0, 0]
    with pytest.raises(ValueError, match="no"):
        dv.parse_clusters('{"clusters": [0, 1', 2)
