"""The HTTP API's requests and request errors: strict pydantic models checked before a request joins
a batch (right JSON types, no unknown fields, finite numbers, texts within limits), and the 422 that
names each problem's place and reason without echoing the input (NaN, a lone surrogate or a deep
nesting could not be written back as JSON).

This module deliberately has no ``from __future__ import annotations``: LitServe reads the request
type from ``decode_request``'s annotation at run time.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from imdb_transformer.generation import Strategy
from imdb_transformer.search.ranking import Mode
from imdb_transformer.text.texts import is_blank

MAX_BODY = 1_000_000  # bytes of one request body


MAX_TEXTS = 64  # texts in one /sentiment or /embed request


MAX_CHARS = 20_000  # characters of one text (a long IMDB review is about 14,000)


MAX_K = 100  # results of one search


MAX_NEW_TOKENS = 256  # tokens one /generate may add


# pydantic refuses a string holding a lone surrogate (a "\ud800" escape in the JSON) as not Unicode
Text = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=MAX_CHARS)]


class _Strict(BaseModel):
    """Fields of the right JSON type only (no coercion of 5 to "5"), no unknown fields, and finite
    numbers (Python's JSON reader takes NaN, Infinity and 1e400, which is infinite)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _words(text: str) -> str:
    if is_blank(text):
        raise ValueError("text is empty or whitespace: give some words")
    return text


class SearchRequest(_Strict):
    query: Text
    k: int = Field(5, ge=1, le=MAX_K)
    mode: Mode | None = None

    def model_post_init(self, context: object) -> None:
        _words(self.query)


class TextsRequest(_Strict):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)

    def model_post_init(self, context: object) -> None:
        for text in self.texts:
            _words(text)


class SentimentRequest(TextsRequest):
    explain: bool = False  # also each text's words with their share of its logit (needs word votes)


class GenerateRequest(_Strict):
    prompt: Text
    strategy: Strategy = "top_k"
    max_new_tokens: int = Field(60, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, gt=0, le=10)
    top_k: int = Field(50, ge=1, le=10_000)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    def model_post_init(self, context: object) -> None:
        _words(self.prompt)


MAX_ERRORS = 20  # problems listed in one 422


async def request_error(request, exc) -> object:
    """422 with each problem's place and reason (a JSON syntax error's too), never its input."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": [_brief(e) for e in exc.errors()[:MAX_ERRORS]]}, status_code=422)


def _brief(error: dict) -> dict:
    message = str(error.get("msg", "invalid"))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):  # "Expecting value", ...
        message = f"{message}: {reason}"
    return {
        "type": _printable(error.get("type", ""), 40),
        "loc": [part if isinstance(part, int) else _printable(part, 40) for part in error.get("loc", ())],
        "msg": _printable(message, 300),
    }


def _printable(value: object, limit: int) -> str:
    """``value`` as text that JSON can carry (a lone surrogate escaped), cut to ``limit`` characters."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- OpenAI-compatible requests (/v1/completions, /v1/embeddings) -----------------------------------

MAX_STOPS = 4  # stop sequences of one completion, as OpenAI allows


class CompletionRequest(_Strict):
    """OpenAI's ``/v1/completions`` for one prompt (``n`` 1; ``logprobs``, ``echo``, ``best_of``,
    ``suffix`` and the penalties only at their neutral values; an unknown field is a 422 naming it).
    ``temperature`` 0 decodes greedily; ``top_k`` (an extension OpenAI does not have) samples from the
    k likeliest; ``top_p`` below 1 from the nucleus; else from the whole distribution at
    ``temperature``."""

    model: str | None = None
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    max_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=10_000)  # beyond OpenAI's fields, as vLLM takes it
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: (
        Annotated[str, StringConstraints(min_length=1, max_length=200)]
        | Annotated[
            list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=MAX_STOPS)
        ]
        | None
    ) = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    # what some OpenAI wrappers send at their neutral values: accepted at those values only
    best_of: int = Field(1, ge=1, le=1)
    echo: Literal[False] = False
    logprobs: None = None
    presence_penalty: float = Field(0.0, ge=0, le=0)
    frequency_penalty: float = Field(0.0, ge=0, le=0)
    suffix: None = None

    def model_post_init(self, context: object) -> None:
        _words(self.text)
        if self.top_k is not None and self.top_p < 1:
            raise ValueError("give top_k or top_p below 1, not both: each alone chooses how to sample")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self) -> dict:
        """The options of :func:`imdb_transformer.generation.stream` this request asks for."""
        if self.temperature == 0:
            return {"strategy": "greedy", "seed": self.seed}
        options = {"temperature": self.temperature, "seed": self.seed}
        if self.top_k is not None:
            return {"strategy": "top_k", "top_k": self.top_k, **options}
        return {"strategy": "top_p" if self.top_p < 1 else "sample", "top_p": self.top_p, **options}


class EmbeddingsRequest(_Strict):
    """OpenAI's ``/v1/embeddings``: one text or a list; vectors as floats or as base64 of float32
    (what the official client asks for by default)."""

    model: str | None = None
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    def model_post_init(self, context: object) -> None:
        for text in self.texts:
            _words(text)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
