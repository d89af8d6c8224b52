"""Keeping credentials out of logs, MLflow and files.

A URL may carry credentials in its user-info part (`https://user:token@host/v1`) or in a query parameter
(`?api_key=...`, `&token=...`). `redact` replaces them with `***` wherever such a URL appears: in a
string (an error message, a log line), or in any string inside a nested dict/list (a config dump). API keys themselves never reach the config: only the
name of the environment variable that holds one (`teacher.openai.api_key_env`).
"""
from __future__ import annotations

import logging
import re
from typing import Any

# scheme://user-info@ ; the user-info runs up to the last '@' before the host part (no '/', '?', '#',
# whitespace or quotes in it), so a password containing '@' is covered as a whole.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s'\"<>]+)@")
# Query parameters that commonly carry a credential (?api_key=..., &token=...).
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:api[_-]?key|key|token|access[_-]?token|password|secret|sig)=)[^&#\s'\"]+", re.I)
REDACTED = "***"
# What `api_key_env` accepts: an upper-case variable name (the convention for environment variables).
# Lower case is refused too: many keys are valid identifiers (hf_..., ghp_..., hex tokens) and must not
# pass for a name, which is stored in config.json and MLflow.
ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


def redact(value: Any) -> Any:
    """`value` with every URL credential replaced by '***': a str is rewritten; dicts, lists and
    tuples are copied with their strings rewritten; anything else is returned as is."""
    if isinstance(value, str):
        out = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
        return _SECRET_QUERY.sub(lambda m: f"{m['key']}{REDACTED}", out)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL credentials in each record's final message (and drops the
    arguments, which were already formatted into it). Attach it to handlers, so records from every
    library logger pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # Render the traceback now, redacted, so the handler prints this text instead.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
