"""The request and response bodies of `aigc serve` (pydantic), in OpenAI's shapes where OpenAI has the route, so
that /openapi.json is the real schema and OpenAI's clients work unchanged. aigc's extensions (seed, top_k,
guidance, steps, sampler, label, frames) are optional fields; the limits here are the server's defaults and
`aigc serve` can lower them (aigc/serve/app.py, Limits)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2 ** 63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")          # an unknown field is an error, never ignored


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Sampling(Strict):
    """What completions and chat share."""
    model: str = Field(description="a served run's name (GET /v1/models)")
    max_tokens: Optional[int] = Field(None, ge=1, description="new tokens per choice (default 256)")
    temperature: Optional[float] = Field(None, ge=0, le=100, description="0 = greedy (default 0.8)")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=1, description="aigc: keep the k most likely tokens")
    n: int = Field(1, ge=1, le=256, description="choices, decoded together (at most the server's --slots)")
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="default: random (returned in the response)")
    user: Optional[str] = None
    stream_options: Optional[dict] = None


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]] = Field("", description="a string (or a list holding one string)")


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Optional[str]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    seed: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Optional[str]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    seed: int


class MediaRequest(Strict):
    model: str = Field(description="a served run's name (GET /v1/models)")
    prompt: Optional[str] = Field(None, description="text-conditional models: what to draw")
    n: int = Field(1, ge=1, le=1000, description="how many (at most the server's limit for the route)")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="default: random (returned in the response)")
    steps: Optional[int] = Field(None, ge=1, le=10000, description="diffusion sampler steps")
    guidance: Optional[float] = Field(None, ge=0, le=100, description="classifier-free guidance scale")
    sampler: Optional[str] = Field(None, max_length=32, description="diffusion sampler")
    label: Optional[int] = Field(None, ge=0, le=1_000_000, description="class-conditional models: the class")
    stream: bool = Field(False, description="server-sent progress events, then the result")
    user: Optional[str] = None


class ImageRequest(MediaRequest):
    size: Optional[str] = Field(None, description="WIDTHxHEIGHT; must be the model's own size")
    response_format: Literal["b64_json"] = "b64_json"


class VideoRequest(MediaRequest):
    frames: Optional[int] = Field(None, ge=1, le=256)
    response_format: Literal["gif"] = "gif"


class SpeechRequest(Strict):
    """OpenAI's audio.speech request (`input`, `voice`); the answer is a WAV file (16-bit PCM, mono, 16 kHz)."""
    model: str = Field(description="a served text-to-speech run's name (GET /v1/models)")
    input: str = Field(min_length=1, max_length=4096, description="the text to speak")
    voice: Optional[str] = Field(None, max_length=32, description="one of the model's voices; default: drawn from "
                                                                  "the seed")
    response_format: Literal["wav"] = "wav"
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="default: random (returned in X-Seed)")
    user: Optional[str] = None


class ImageData(BaseModel):
    b64_json: str = Field(description="a PNG")
    revised_prompt: Optional[str] = None
    label: Optional[int] = None


class ImageResponse(BaseModel):
    created: int
    data: list[ImageData]
    seed: int


class VideoData(BaseModel):
    b64_gif: str = Field(description="an animated GIF")
    prompt: Optional[str] = None


class VideoResponse(BaseModel):
    created: int
    data: list[VideoData]
    seed: int


class CaptionRequest(Strict):
    model: str = Field(description="a served captioner run's name (GET /v1/models)")
    images: list[str] = Field(min_length=1, max_length=64,
                              description="base64 image files: PNG/JPEG, or an animated GIF for a clip captioner")
    n: int = Field(1, ge=1, le=16, description="captions per image (they differ only with top_p)")
    beam: Optional[int] = Field(None, ge=1, le=64, description="beam search of this width (default: greedy)")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="nucleus sampling instead of greedy decoding")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="default: random (returned in the response)")
    user: Optional[str] = None


class CaptionData(BaseModel):
    index: int = Field(description="which of the request's images")
    text: str


class CaptionResponse(BaseModel):
    created: int
    model: str
    data: list[CaptionData]
    seed: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aigc"
    family: str
    output: str
    accepts: list[str]
    chat: bool
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HistoryItem(BaseModel):
    id: int
    created: float
    model: str
    route: str
    prompt: Optional[str]
    params: dict
    seed: Optional[int]
    text: Optional[str]
    file: Optional[str]


class HistoryList(BaseModel):
    data: list[HistoryItem]
