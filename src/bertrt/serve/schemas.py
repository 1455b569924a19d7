"""Request and response bodies of the HTTP API (pydantic models: validation and the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# In the OpenAPI document: a text holds something besides whitespace (the validators say why not).
_NOT_BLANK = {"pattern": r"\S"}


def _text(value: str, what: str = "text") -> str:
    if not value.strip():
        raise ValueError(f"the {what} is empty or whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAPair(_Body):
    question: str = Field(description="the question", examples=["What is TensorRT?"], json_schema_extra=_NOT_BLANK)
    context: str = Field(description="the passage the answer is cut from; long passages are read through "
                                     "overlapping windows", json_schema_extra=_NOT_BLANK)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        return _text(v, "question")

    @field_validator("context")
    @classmethod
    def _context(cls, v: str) -> str:
        return _text(v, "context")


class QARequest(_Body):
    """Either one ``question`` and ``context``, or several pairs in ``inputs``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["question", "context"]}, {"required": ["inputs"]}]})

    question: str | None = Field(default=None, json_schema_extra=_NOT_BLANK)
    context: str | None = Field(default=None, json_schema_extra=_NOT_BLANK)
    inputs: list[QAPair] | None = Field(default=None, min_length=1)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str | None) -> str | None:
        return v if v is None else _text(v, "question")

    @field_validator("context")
    @classmethod
    def _context(cls, v: str | None) -> str | None:
        return v if v is None else _text(v, "context")

    @model_validator(mode="after")
    def _one_form(self) -> "QARequest":
        single = self.question is not None or self.context is not None
        if single and self.inputs is not None:
            raise ValueError('give either "question" and "context", or "inputs", not both')
        if not single and self.inputs is None:
            raise ValueError('give "question" and "context", or "inputs": a list of them')
        if single and (self.question is None or self.context is None):
            raise ValueError('"question" and "context" go together: one is missing')
        return self

    def pairs(self) -> list[QAPair]:
        if self.inputs is not None:
            return self.inputs
        return [QAPair(question=self.question, context=self.context)]


class QAAnswer(BaseModel):
    answer: str = Field(description="the answer, cut from the context ('' when no span was found)")
    score: float = Field(description="start + end logit of the span")
    start: int = Field(description="character offset of the answer in the context")
    end: int = Field(description="character offset just past the answer (context[start:end] == answer)")
    probability: float = Field(description="softmax share of the span among the best candidates")


class QAResults(BaseModel):
    results: list[QAAnswer]


class EmbedRequest(_Body):
    inputs: str | list[str] = Field(description="a sentence, or a list of them",
                                    json_schema_extra={**_NOT_BLANK, "items": _NOT_BLANK})
    normalize: bool = Field(default=True, description="scale each vector to unit length")
    truncate: bool = Field(default=False, description="cut texts longer than the model's window instead of "
                                                      "answering 413")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: str | list[str]) -> str | list[str]:
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("inputs is an empty list")
        for text in texts:
            _text(text)
        return v

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class Embeddings(BaseModel):
    embeddings: list[list[float]] = Field(description="one vector per input, mean of the last hidden states")
    dimensions: int


class ClassifyPair(_Body):
    text: str = Field(json_schema_extra=_NOT_BLANK)
    text_pair: str | None = Field(default=None, json_schema_extra=_NOT_BLANK)

    @field_validator("text", "text_pair")
    @classmethod
    def _texts(cls, v: str | None) -> str | None:
        return v if v is None else _text(v)


class ClassifyRequest(_Body):
    """Either one ``text`` (and optional ``text_pair``), or several in ``inputs``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["text"]}, {"required": ["inputs"]}]})

    text: str | None = Field(default=None, json_schema_extra=_NOT_BLANK)
    text_pair: str | None = Field(default=None, json_schema_extra=_NOT_BLANK)
    inputs: list[ClassifyPair] | None = Field(default=None, min_length=1)
    truncate: bool = Field(default=False, description="cut pairs longer than the model's window instead of "
                                                      "answering 413")

    @field_validator("text", "text_pair")
    @classmethod
    def _texts(cls, v: str | None) -> str | None:
        return v if v is None else _text(v)

    @model_validator(mode="after")
    def _one_form(self) -> "ClassifyRequest":
        if (self.text is None) == (self.inputs is None):
            raise ValueError('give either "text" (with an optional "text_pair") or "inputs"')
        if self.text_pair is not None and self.text is None:
            raise ValueError('"text_pair" needs "text"')
        return self

    def pairs(self) -> list[ClassifyPair]:
        if self.inputs is not None:
            return self.inputs
        return [ClassifyPair(text=self.text, text_pair=self.text_pair)]


class Classification(BaseModel):
    label: int = Field(description="index of the most likely class")
    probabilities: list[float] = Field(description="softmax over the classes")


class Classifications(BaseModel):
    results: list[Classification]


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable name for the kind of error")
    message: str = Field(description="what is wrong, in words")


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str = Field(description="also in the X-Request-ID header; quote it when reporting a failure")


class Health(BaseModel):
    status: str


class Info(BaseModel):
    model: str
    device: str
    precision: str
    heads: list[str]
    routes: list[str]
    hidden_size: int
    num_labels: int | None
    max_seq_length: int
    limits: dict[str, float]
    version: str
