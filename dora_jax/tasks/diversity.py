"""Diversity functions (docs/design.md §3): strategy cluster ids of each group's responses, for the Poly-EPO set score.

    c.diversity = diversity.default_config()      # in a config; then c.diversity.name = "embedding", ...
    fn = diversity.make_diversity(c.diversity)
    clusters_PxN = fn(prompts_P, responses_PxN, labels_PxN_or_None)   # int32 [P, N]
    fn.stats                                      # cumulative counters, e.g. {"fallbacks": 0, ...}

Ids only mean something within a row: equal ids = same strategy. -1 marks a degenerate response
(empty or whitespace-only), which `poly_epo` counts as no strategy. Registered functions:

- `task_labels`: the task's own strategy labels (Countdown's operator template), passed through.
- `embedding`: offline clustering of response embeddings by cosine similarity (agglomerative, per group);
  the built-in embedder builds TF-IDF vectors of character n-grams and words, or `model_dir` names a
  local Hugging Face encoder (mean pooling). Nothing is downloaded.
- `llm_judge`: one chat request per group to an OpenAI-compatible server, which replies {"clusters": [...]};
  a group whose request fails (timeout, refused, HTTP error, malformed reply after retries) falls back to
  every distinct response its own cluster, counted in `fn.stats["fallbacks"]`.

Exact duplicates (after stripping whitespace) always share a cluster, in every function but `task_labels`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
from typing import Callable, Protocol, Sequence

import ml_collections
import numpy as np

from dora_jax import sections
from dora_jax.sections import require

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    threshold: float = 0.5  # cosine similarity at or above which two clusters merge
    linkage: str = "average"  # cluster-to-cluster similarity: single (max) | average | complete (min)
    model_dir: str = ""  # local HF encoder dir (mean pooling); "" = built-in hashed n-gram TF-IDF embedder
    max_length: int = 512  # tokens per response fed to the HF encoder
    ngram_min: int = 3  # shortest character n-gram of the built-in embedder (bytes)
    ngram_max: int = 5  # longest character n-gram of the built-in embedder (bytes)
    word_weight: float = 0.5  # share of word unigrams in the built-in cosine; the rest is char n-grams


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # OpenAI-compatible server: POST {base_url}/chat/completions
    model: str = ""  # model name sent with each request (required)
    api_key_env: str = ""  # env var holding the key, sent as "Bearer"; "" = no Authorization header
    timeout_s: float = 60.0  # seconds per request (connect, wait for the reply, read it)
    retries: int = 2  # extra attempts after a timeout, refused connection, 429/5xx or malformed reply
    backoff_s: float = 2.0  # seconds slept before each retry
    concurrency: int = 8  # groups judged in parallel
    max_response_chars: int = 4_000  # longer responses are shown to the judge as head + " ... " + tail


@dataclasses.dataclass(frozen=True)
class DiversityConfig:
    """The `diversity` config section; the chosen function checks its own subsection when it is built."""

    name: str = "task_labels"  # registered diversity function (DIVERSITY): task_labels | embedding | llm_judge
    embedding: EmbeddingConfig = EmbeddingConfig()
    llm_judge: JudgeConfig = JudgeConfig()

    def __post_init__(self):
        require(self.name in DIVERSITY, "name", self.name, f"use a registered function: {', '.join(DIVERSITY)}.")


def default_config() -> ml_collections.ConfigDict:
    """The `diversity` config section with its defaults."""
    return sections.defaults(DiversityConfig)


class DiversityFn(Protocol):
    """`fn(prompts[P], responses[P][N], labels[P, N] | None) -> int32 [P, N]`, with counters in `fn.stats`.

    `reads_text = False` tells callers the texts are not read (they may pass empty strings)."""

    stats: dict[str, int]
    reads_text: bool

    def __call__(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                 labels: np.ndarray | None) -> np.ndarray:
        ...


def _group_shape(prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> tuple[int, int]:
    """(P, N), checking that there is one prompt per group and every group has N responses."""
    P = len(responses)
    if len(prompts) != P:
        raise ValueError(f"diversity: {len(prompts)} prompts for {P} response groups; pass one prompt per group.")
    N = len(responses[0]) if P else 0
    if any(len(row) != N for row in responses):
        raise ValueError(f"diversity: groups have different sizes {sorted({len(r) for r in responses})}; "
                         "every prompt needs the same number of responses N.")
    return P, N


def _distinct(row: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct non-degenerate responses of a group (stripped, first-seen order) and, per position, the
    index of its distinct response (-1 for degenerate ones)."""
    index: dict[str, int] = {}
    inverse = np.full(len(row), -1, np.int32)
    for i, response in enumerate(row):
        text = response.strip()
        if text:
            inverse[i] = index.setdefault(text, len(index))
    return list(index), inverse


def _to_positions(ids: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Per-position ids from per-distinct-response ids, renumbered 0, 1, ... by first appearance; -1 stays."""
    out = np.full(len(inverse), -1, np.int32)
    renumber: dict[int, int] = {}
    for i, j in enumerate(inverse):
        if j >= 0:
            out[i] = renumber.setdefault(int(ids[j]), len(renumber))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Task labels.

class TaskLabels:
    """The task's own strategy labels, unchanged."""

    reads_text = False

    def __init__(self):
        self.stats: dict[str, int] = {}

    def __call__(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                 labels: np.ndarray | None) -> np.ndarray:
        P, N = _group_shape(prompts, responses)
        if labels is None:
            raise ValueError("diversity.name='task_labels' needs the task's strategy labels, but this task has none; "
                             "set diversity.name to 'embedding' or 'llm_judge'.")
        labels = np.asarray(labels)
        if labels.shape != (P, N):
            raise ValueError(f"diversity: task labels have shape {labels.shape}, the responses are [{P}, {N}].")
        return labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------------
# Embedding clustering.

_LINKAGES = ("single", "average", "complete")
_WORD_RE = re.compile(r"\w+")
# Multiplier of the polynomial rolling hash of byte n-grams (uint64 arithmetic wraps mod 2**64, as intended).
_HASH_MUL = np.uint64(1_000_003)


def _agglomerate(sim_MxM: np.ndarray, threshold: float, linkage: str) -> np.ndarray:
    """Cluster ids of M items: repeatedly merge the most similar pair of clusters while their linkage
    similarity is >= threshold. Ties go to the lowest indices, so the result is deterministic."""
    M = len(sim_MxM)
    link_MxM = np.array(sim_MxM, np.float64)  # row/column a: cluster a's similarity to the others
    np.fill_diagonal(link_MxM, -np.inf)
    size, rep = np.ones(M), np.arange(M)  # rep: each item's cluster, named by its lowest member
    for _ in range(M - 1):
        # Row-major argmax of a symmetric matrix: the first maximum has a < b.
        a, b = np.unravel_index(np.argmax(link_MxM), link_MxM.shape)
        if link_MxM[a, b] < threshold:
            break
        # Lance-Williams updates: the merged cluster's linkage from those of its parts.
        if linkage == "single":
            merged = np.maximum(link_MxM[a], link_MxM[b])
        elif linkage == "complete":
            merged = np.minimum(link_MxM[a], link_MxM[b])
        else:
            merged = (size[a] * link_MxM[a] + size[b] * link_MxM[b]) / (size[a] + size[b])
        link_MxM[a], link_MxM[:, a] = merged, merged
        link_MxM[b], link_MxM[:, b] = -np.inf, -np.inf
        link_MxM[a, a] = -np.inf
        size[a] += size[b]
        rep[rep == b] = a
    return np.unique(rep, return_inverse=True)[1].astype(np.int32)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    # A row with no features (e.g. a text shorter than ngram_min with no word characters) stays zero.
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _tfidf(counts_MxD: np.ndarray) -> np.ndarray:
    """Sublinear TF times smoothed IDF, L2-normalised rows. The IDF is the group's own, so text every response
    shares (a restated problem, boilerplate) weighs little and the differences between responses dominate."""
    tf = np.where(counts_MxD > 0, 1.0 + np.log(np.maximum(counts_MxD, 1.0)), 0.0)
    df = np.count_nonzero(counts_MxD, axis=0)
    idf = np.log((1.0 + len(counts_MxD)) / (1.0 + df)) + 1.0
    return _normalise_rows((tf * idf).astype(np.float32))


class Embedding:
    """Agglomerative clustering of response embeddings within each group by cosine similarity."""

    reads_text = True

    def __init__(self, cfg: EmbeddingConfig):
        if cfg.linkage not in _LINKAGES:
            raise ValueError(f"diversity.embedding.linkage={cfg.linkage!r} is not one of {_LINKAGES}.")
        if not 1 <= cfg.ngram_min <= cfg.ngram_max:
            raise ValueError(f"diversity.embedding needs 1 <= ngram_min <= ngram_max, got "
                             f"{cfg.ngram_min}, {cfg.ngram_max}.")
        if not 0.0 <= cfg.word_weight <= 1.0:
            raise ValueError(f"diversity.embedding.word_weight={cfg.word_weight} must lie in [0, 1].")
        self.cfg = cfg
        self.stats: dict[str, int] = {}
        self._encoder = _load_encoder(cfg.model_dir) if cfg.model_dir else None

    def __call__(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                 labels: np.ndarray | None) -> np.ndarray:
        del labels
        P, N = _group_shape(prompts, responses)
        out = np.full((P, N), -1, np.int32)
        for p, row in enumerate(responses):
            texts, inverse = _distinct(row)
            if texts:
                vecs_MxE = self.embed(texts)
                ids = _agglomerate(vecs_MxE @ vecs_MxE.T, self.cfg.threshold, self.cfg.linkage)
                out[p] = _to_positions(ids, inverse)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings [M, E] of one group's texts."""
        if self._encoder is not None:
            return self._encoder(texts, self.cfg.max_length)
        w = self.cfg.word_weight
        # Each block is unit-norm, so the cosine of the concatenation is (1 - w) cos_char + w cos_word.
        chars = _counts([self._char_ngrams(t) for t in texts])
        words = _counts([np.array(_WORD_RE.findall(t.lower()), str) for t in texts])
        return np.concatenate([math.sqrt(1.0 - w) * _tfidf(chars), math.sqrt(w) * _tfidf(words)], axis=1)

    def _char_ngrams(self, text: str) -> np.ndarray:
        """64-bit rolling hashes of the text's byte n-grams (collisions are negligible at that width)."""
        # Spaces at both ends make word boundaries features too.
        b = np.frombuffer(f" {text.lower()} ".encode("utf-8"), np.uint8).astype(np.uint64)
        hashes = []
        for n in range(self.cfg.ngram_min, min(self.cfg.ngram_max, len(b)) + 1):
            h = np.full(len(b) - n + 1, n, np.uint64)  # seeding with n keeps n-grams of different n apart
            for k in range(n):
                h = h * _HASH_MUL + b[k:len(b) - n + 1 + k]
            hashes.append(h)
        return np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)


def _counts(features: Sequence[np.ndarray]) -> np.ndarray:
    """Feature counts [M, U] over the U distinct features of a group (each text's features as a 1-D array)."""
    vocab, column = np.unique(np.concatenate(features), return_inverse=True)
    counts_MxU = np.zeros((len(features), len(vocab)), np.float32)
    row = np.repeat(np.arange(len(features)), [len(f) for f in features])
    np.add.at(counts_MxU, (row, column), 1.0)
    return counts_MxU


def _load_encoder(model_dir: str) -> Callable[[Sequence[str], int], np.ndarray]:
    """A local Hugging Face encoder as `embed(texts, max_length) -> [M, E]` (mean pooling, L2-normalised)."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"diversity.embedding.model_dir={model_dir!r} is not a Hugging Face model directory (no config.json). "
            "Point it at a local encoder saved with save_pretrained (weights are never downloaded), or set it to "
            "'' for the built-in n-gram embedder.")
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    if tokenizer.pad_token is None:
        # Padding is masked out of the mean, so any token will do; decoder-only models often lack a pad token.
        tokenizer.pad_token = tokenizer.eos_token

    def embed(texts: Sequence[str], max_length: int) -> np.ndarray:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden_MxTxE = model(**batch).last_hidden_state.float()
        mask_MxTx1 = batch["attention_mask"].unsqueeze(-1).float()
        mean_MxE = (hidden_MxTxE * mask_MxTx1).sum(1) / mask_MxTx1.sum(1).clamp(min=1.0)
        return _normalise_rows(mean_MxE.numpy())

    return embed


# ----------------------------------------------------------------------------------------------------------------------
# LLM judge.

_JUDGE_SYSTEM = (
    "You group solutions to a problem by the strategy they use. Two solutions share a strategy when they follow "
    "the same method or line of reasoning, even if their wording, notation, arithmetic slips or final answers "
    "differ. Reply with JSON only.")
# Replies larger than this are not a list of ids; the cap bounds memory.
_MAX_REPLY_BYTES = 1_000_000


class _Malformed(ValueError):
    """A reply without a valid {"clusters": [...]}."""


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]} ... {text[-half:]}"


def judge_messages(prompt: str, texts: Sequence[str], max_chars: int) -> list[dict[str, str]]:
    """The chat messages that ask the judge to cluster one group's distinct responses."""
    numbered = "\n\n".join(f"### Response {i}\n{_shorten(t, max_chars)}" for i, t in enumerate(texts))
    user = (f"Problem:\n{_shorten(prompt, max_chars)}\n\nThere are {len(texts)} responses:\n\n{numbered}\n\n"
            "Give each response a strategy id: integers from 0, equal ids for responses that use the same strategy. "
            f'Reply with exactly {{"clusters": [id of response 0, ..., id of response {len(texts) - 1}]}}, '
            f"a list of {len(texts)} integers, and nothing else.")
    return [{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_clusters(reply: str, m: int) -> list[int]:
    """The ids of a judge reply holding {"clusters": [m non-negative ints]}, possibly inside a ```json fence or
    other text (the last such object wins: earlier ones may be examples in the judge's reasoning)."""
    decoder, found, i = json.JSONDecoder(), None, reply.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(reply, i)
        except json.JSONDecodeError:
            end = i + 1
        else:
            if isinstance(obj, dict) and "clusters" in obj:
                found = obj["clusters"]
        i = reply.find("{", end)
    if found is None:
        raise _Malformed(f'no {{"clusters": [...]}} object in the reply {reply[:200]!r}')
    if not isinstance(found, list) or len(found) != m:
        raise _Malformed(f"expected a list of {m} ids, got {found!r:.200}")
    # bool is an int subclass; true/false are not ids.
    if not all(type(x) is int and x >= 0 for x in found):
        raise _Malformed(f"ids must be non-negative integers, got {found!r:.200}")
    return found


class LLMJudge:
    """Clusters each group with one request to an OpenAI-compatible chat server.

    A group costs at most (retries + 1) attempts of about timeout_s each plus retries * backoff_s of sleep;
    then it falls back to every distinct response its own cluster. `stats` counts groups sent, HTTP requests,
    retries and fallbacks since construction.
    """

    reads_text = True

    def __init__(self, cfg: JudgeConfig):
        if not cfg.model:
            raise ValueError("diversity.llm_judge.model is empty; set it to the model name the server serves.")
        if not cfg.base_url.startswith(("http://", "https://")):
            raise ValueError(f"diversity.llm_judge.base_url={cfg.base_url!r} must start with http:// or https://.")
        self.headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"diversity.llm_judge.api_key_env={cfg.api_key_env!r} names an unset environment "
                                 "variable; export the key there, or set api_key_env='' for a server without one.")
            self.headers["Authorization"] = f"Bearer {key}"
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.stats = {"groups": 0, "requests": 0, "retries": 0, "fallbacks": 0}
        self._lock = threading.Lock()

    def __call__(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                 labels: np.ndarray | None) -> np.ndarray:
        del labels
        P, N = _group_shape(prompts, responses)
        out = np.full((P, N), -1, np.int32)
        if P == 0:
            return out
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, P)) as pool:
            for p, row in enumerate(pool.map(self._group, prompts, responses)):
                out[p] = row
        return out

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _group(self, prompt: str, row: Sequence[str]) -> np.ndarray:
        texts, inverse = _distinct(row)
        if len(texts) <= 1:  # nothing to compare: no request
            return _to_positions(np.zeros(len(texts), np.int32), inverse)
        self._count("groups")
        body = json.dumps({"model": self.cfg.model, "temperature": 0,
                           "messages": judge_messages(prompt, texts, self.cfg.max_response_chars)}).encode("utf-8")
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.cfg.backoff_s)
            try:
                ids = parse_clusters(self._post(body), len(texts))
                return _to_positions(np.asarray(ids), inverse)
            except urllib.error.HTTPError as e:
                reason = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:  # the request itself is wrong: retrying cannot help
                    break
            except (OSError, http.client.HTTPException, _Malformed) as e:  # timeouts, refused connections, ...
                reason = f"{type(e).__name__}: {e}"
        self._count("fallbacks")
        _log.warning("diversity.llm_judge: %s from %s after %d attempt(s); every distinct response of this group "
                     "is its own cluster.", reason, self.url, attempt + 1)
        return _to_positions(np.arange(len(texts)), inverse)

    def _post(self, body: bytes) -> str:
        """The message content of one chat completion, within timeout_s for the whole exchange: a watchdog shuts
        the socket down at the deadline, so a server that trickles its headers or its body one byte at a time
        cannot hold the trainer (each socket read alone would wait at most timeout_s)."""
        self._count("requests")
        url = urllib.parse.urlsplit(self.url)
        connection = (http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection)(
            url.hostname, url.port, timeout=self.cfg.timeout_s)
        expired, sockets = threading.Event(), []

        def expire():
            expired.set()
            for sock in sockets:  # the connection drops its own reference once the reply owns the socket
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read with EOF
                except OSError:
                    pass

        watchdog = threading.Timer(self.cfg.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.connect()  # bounded by timeout_s on its own
            sockets.append(connection.sock)
            if expired.is_set():
                expire()
            connection.request("POST", url.path + (f"?{url.query}" if url.query else ""), body=body,
                               headers=self.headers)
            response = connection.getresponse()
            raw = _read_capped(response)
            if response.status >= 400:
                raise urllib.error.HTTPError(self.url, response.status, response.reason, response.headers, None)
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError(f"no complete reply within {self.cfg.timeout_s} s") from None
            raise
        finally:
            watchdog.cancel()
            connection.close()
        if expired.is_set():  # the shutdown can also read as a clean end of a cut-short body
            raise TimeoutError(f"no complete reply within {self.cfg.timeout_s} s")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Malformed(f"not an OpenAI chat completion ({type(e).__name__}: {e})") from None
        if not isinstance(content, str):
            raise _Malformed(f"message content is {type(content).__name__}, not text")
        return content


def _read_capped(response: http.client.HTTPResponse) -> bytes:
    """The reply body, refused past _MAX_REPLY_BYTES."""
    chunks, size = [], 0
    while chunk := response.read1(65_536):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPLY_BYTES:
            raise _Malformed(f"reply larger than {_MAX_REPLY_BYTES} bytes")
    return b"".join(chunks)


DIVERSITY: dict[str, Callable[[DiversityConfig], DiversityFn]] = {
    "task_labels": lambda cfg: TaskLabels(),
    "embedding": lambda cfg: Embedding(cfg.embedding),
    "llm_judge": lambda cfg: LLMJudge(cfg.llm_judge),
}


def make_diversity(cfg) -> DiversityFn:
    """The diversity function a `diversity` config section (DiversityConfig) selects by `cfg.name`."""
    cfg = sections.parse(DiversityConfig, cfg, "diversity")
    return DIVERSITY[cfg.name](cfg)
