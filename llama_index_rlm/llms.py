"""Models across the two frameworks: LlamaIndex LLMs as LangChain chat models, and back.

The RLM core speaks LangChain (``BaseChatModel``). :class:`LlamaIndexChatModel` lets a
LlamaIndex LLM (``llama_index.llms.openai.OpenAI``, ``Ollama``, a ``CustomLLM``...) be the
root model or the sub-model of an RLM. :class:`LangChainLLM` goes the other way, so a
LangChain chat model can drive LlamaIndex components that want an ``LLM`` (an agent, a
synthesizer's prompt helper).

Written here on purpose: the published ``llama-index-llms-langchain`` bridge does not work
with current LangChain releases.

Facts the adapters handle:

* LlamaIndex ``chat`` takes no ``stop`` argument that every LLM honours, so the reply is
  cut at the first stop sequence here (the RLM relies on stop sequences to drop invented
  REPL output).
* Token usage is reported only when the LlamaIndex response carries counts (in
  ``additional_kwargs`` or ``raw.usage``); otherwise ``usage_metadata`` stays empty and the
  RLM's usage meter marks its character-based estimate as estimated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import (
    ChatMessage as LIChatMessage,
)
from llama_index.core.base.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import LLM
from pydantic import ConfigDict, Field, model_validator

from langchain_rlm.parsing import cut_at_stop

__all__ = [
    "LangChainLLM",
    "LlamaIndexChatModel",
    "apply_stop",
    "as_chat_model",
    "usage_from_response",
]

LLM_TYPE = "llama-index"
"""``_llm_type`` of :class:`LlamaIndexChatModel`."""

UNKNOWN_MODEL_NAME = "unknown"
"""What ``LLMMetadata.model_name`` says when a LlamaIndex LLM does not know its name."""

DEFAULT_CONTEXT_WINDOW = 3_900
"""LlamaIndex's own default ``context_window`` (it tells nothing about the real model)."""

INPUT_TOKEN_KEYS = ("prompt_tokens", "input_tokens", "prompt_eval_count")
OUTPUT_TOKEN_KEYS = ("completion_tokens", "output_tokens", "eval_count")
"""Where providers put token counts (OpenAI, Anthropic, Ollama)."""

_ROLE_OF_TYPE: dict[type[BaseMessage], MessageRole] = {
    SystemMessage: MessageRole.SYSTEM,
    HumanMessage: MessageRole.USER,
    AIMessage: MessageRole.ASSISTANT,
    ToolMessage: MessageRole.TOOL,
    FunctionMessage: MessageRole.FUNCTION,
}
_CHAT_ROLES = {role.value: role for role in MessageRole}


# -- helpers ----------------------------------------------------------------------------
def apply_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` cut at the earliest of the ``stop`` sequences (which are dropped)."""
    return cut_at_stop(text, stop)[0]


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = [p if isinstance(p, str) else str(p.get("text", "")) for p in content]
    return "".join(parts)


def _role_of(message: BaseMessage) -> MessageRole:
    for kind, role in _ROLE_OF_TYPE.items():
        if isinstance(message, kind):
            return role
    if isinstance(message, ChatMessage):
        return _CHAT_ROLES.get(message.role, MessageRole.USER)
    return MessageRole.USER


def to_llama_index_messages(messages: Sequence[BaseMessage]) -> list[LIChatMessage]:
    """LangChain messages as LlamaIndex ``ChatMessage`` objects (text content)."""
    return [LIChatMessage(role=_role_of(m), content=_text_of(m)) for m in messages]


def _lookup(source: Any, key: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _first_count(source: Any, keys: Sequence[str]) -> int:
    for key in keys:
        value = _lookup(source, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def usage_from_response(response: ChatResponse) -> UsageMetadata | None:
    """Token counts a LlamaIndex response carries, or None when it carries none.

    Looked for in ``additional_kwargs`` (``llama-index-llms-openai`` puts them there), then
    in ``raw.usage`` (OpenAI / Anthropic objects or dicts), then at the top of ``raw``
    (Ollama's ``prompt_eval_count`` / ``eval_count``).
    """
    raw = response.raw
    for source in (response.additional_kwargs, _lookup(raw, "usage"), raw):
        if source is None:
            continue
        inputs = _first_count(source, INPUT_TOKEN_KEYS)
        outputs = _first_count(source, OUTPUT_TOKEN_KEYS)
        if inputs or outputs:
            return UsageMetadata(
                input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs
            )
    return None


# -- LlamaIndex LLM -> LangChain chat model ---------------------------------------------
class LlamaIndexChatModel(BaseChatModel):
    """A LlamaIndex LLM used as a LangChain chat model (root or sub-model of an RLM).

    Example::

        from llama_index.llms.openai import OpenAI
        from langchain_rlm import RLM
        from llama_index_rlm import LlamaIndexChatModel

        rlm = RLM(LlamaIndexChatModel(llm=OpenAI(model="gpt-4o-mini")))

    ``RLMQueryEngine`` and ``RLMSynthesizer`` wrap LlamaIndex LLMs in this class for you.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    llm: BaseLLM
    """The wrapped LlamaIndex LLM."""
    model_name: str = Field(default="", alias="model")
    """Name for usage tables and traces; defaults to ``llm.metadata.model_name``."""

    @model_validator(mode="after")
    def _from_metadata(self) -> LlamaIndexChatModel:
        metadata: LLMMetadata = self.llm.metadata
        if not self.model_name:
            name = metadata.model_name
            self.model_name = (
                name if name and name != UNKNOWN_MODEL_NAME else type(self.llm).__name__
            )
        window = metadata.context_window
        if self.profile is None and window and window != DEFAULT_CONTEXT_WINDOW:
            self.profile = {"max_input_tokens": window}
        return self

    @property
    def _llm_type(self) -> str:
        return LLM_TYPE

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "llm_class": type(self.llm).__name__}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        response = self.llm.chat(to_llama_index_messages(messages), **kwargs)
        return self._result(response, stop)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        response = await self.llm.achat(to_llama_index_messages(messages), **kwargs)
        return self._result(response, stop)

    def _result(self, response: ChatResponse, stop: Sequence[str] | None) -> ChatResult:
        text = apply_stop(response.message.content or "", stop)
        usage = usage_from_response(response)
        message = AIMessage(
            content=text,
            usage_metadata=usage,
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


# -- LangChain chat model -> LlamaIndex LLM ---------------------------------------------
def _to_langchain_messages(messages: Sequence[LIChatMessage]) -> list[BaseMessage]:
    converted: list[BaseMessage] = []
    for message in messages:
        text = message.content or ""
        role = message.role
        if role == MessageRole.SYSTEM:
            converted.append(SystemMessage(text))
        elif role in (MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL):
            converted.append(AIMessage(text))
        elif role == MessageRole.USER:
            converted.append(HumanMessage(text))
        else:
            converted.append(ChatMessage(role=str(role.value), content=text))
    return converted


def _ai_text(message: BaseMessage) -> str:
    return _text_of(message)


class LangChainLLM(LLM):
    """A LangChain chat model used as a LlamaIndex ``LLM`` (chat and completion).

    Streaming methods yield the whole reply as one chunk. Example::

        from langchain_openai import ChatOpenAI
        from llama_index.core.agent.workflow import ReActAgent

        agent = ReActAgent(tools=[...], llm=LangChainLLM(chat_model=ChatOpenAI()))
    """

    chat_model: BaseChatModel = Field(description="The wrapped LangChain chat model.")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0)

    @classmethod
    def class_name(cls) -> str:
        return "LangChainLLM"

    @property
    def metadata(self) -> LLMMetadata:
        from langchain_rlm.models import model_id

        return LLMMetadata(
            context_window=self.context_window,
            is_chat_model=True,
            model_name=model_id(self.chat_model),
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[LIChatMessage], **kwargs: Any) -> ChatResponse:
        reply = self.chat_model.invoke(_to_langchain_messages(messages), **kwargs)
        return _chat_response(reply)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[LIChatMessage], **kwargs: Any) -> ChatResponse:
        reply = await self.chat_model.ainvoke(_to_langchain_messages(messages), **kwargs)
        return _chat_response(reply)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reply = self.chat_model.invoke([HumanMessage(prompt)], **kwargs)
        return CompletionResponse(text=_ai_text(reply), raw=reply)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        reply = await self.chat_model.ainvoke([HumanMessage(prompt)], **kwargs)
        return CompletionResponse(text=_ai_text(reply), raw=reply)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[LIChatMessage], **kwargs: Any) -> ChatResponseGen:
        response = self.chat(messages, **kwargs)

        def gen() -> ChatResponseGen:
            yield ChatResponse(
                message=response.message, delta=response.message.content, raw=response.raw
            )

        return gen()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[LIChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        response = await self.achat(messages, **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            yield ChatResponse(
                message=response.message, delta=response.message.content, raw=response.raw
            )

        return gen()

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        response = self.complete(prompt, formatted, **kwargs)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        response = await self.acomplete(prompt, formatted, **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            yield CompletionResponse(text=response.text, delta=response.text, raw=response.raw)

        return gen()


def _chat_response(reply: BaseMessage) -> ChatResponse:
    usage = getattr(reply, "usage_metadata", None) or {}
    extra = (
        {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
        if usage
        else {}
    )
    return ChatResponse(
        message=LIChatMessage(role=MessageRole.ASSISTANT, content=_ai_text(reply)),
        raw=reply,
        additional_kwargs=extra,
    )


# -- conversion -------------------------------------------------------------------------
def as_chat_model(model: Any) -> Any:
    """What an RLM accepts as a model: LlamaIndex LLMs wrapped, the rest passed through.

    A :class:`LangChainLLM` is unwrapped to its chat model; a LangChain chat model or a
    ``"provider:model"`` string is returned as is (the RLM validates it); ``None`` stays
    ``None``.
    """
    if isinstance(model, LangChainLLM):
        return model.chat_model
    if isinstance(model, BaseLLM):
        return LlamaIndexChatModel(llm=model)
    return model
