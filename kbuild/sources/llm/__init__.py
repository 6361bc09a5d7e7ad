"""LLM-generated descriptions: the chat client, its call log and cache, reply parsing, generation.

- ``client``: langchain's ChatOpenAI with our own bounded, logged retries (429/5xx/timeouts).
- ``calllog``: every call in SQLite under the store (``<store>/llm/calls.sqlite``), also the cache.
- ``parse``: a reply -> a list of descriptions (JSON list, code fences, numbered or bulleted lines).
- ``generate``: classes x prompt template -> descriptions, concurrently, resumable.

langchain is imported only when a client is built, so other ``kbuild`` commands start fast.
"""

from kbuild.sources.llm.calllog import LOG_RELATIVE_PATH, CallLog
from kbuild.sources.llm.parse import ReplyParseError, parse_reply

__all__ = ["LOG_RELATIVE_PATH", "CallLog", "ReplyParseError", "parse_reply"]
