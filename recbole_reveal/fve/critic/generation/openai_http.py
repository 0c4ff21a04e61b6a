"""The critic's HTTP layer: the official ``openai`` client, and the few things it leaves to us.

``openai`` (what vLLM's and SGLang's own documentation use) gives connection pooling, the request and
reply shapes, retries with exponential backoff and jitter (0.5 s doubling, at most 8 s) after a timeout,
a refused or dropped connection, HTTP 408, 409, 429 and 5xx, and typed errors for every other status
(401 ``AuthenticationError``, 404 ``NotFoundError``, 400 ``BadRequestError`` ...), never retried.

Ours:

- :func:`check_endpoint_url`: a URL that cannot work (scheme, host, port, brackets) is a one-line
  ``ConfigError`` (the config schema's rule, which checks a run's config before any stage runs).
- a **total** time per request attempt: httpx's timeouts bound each socket operation, so a server that
  trickles a byte every few seconds never trips them. :class:`DeadlineTransport` caps every connect,
  read and write of an attempt at the time left of its ``timeout`` seconds; past it the attempt fails
  as a timeout (and is retried as one).
- :func:`endpoint_error`: the errors no retry can fix (a refused key, an unknown model or route, a
  rejected request, a TLS handshake with a plain-HTTP server) as one line naming the URL and the fix.
"""

import ssl
import threading
import time

import httpcore2
import httpx2
import openai

from recbole_reveal.config_keys.schema import endpoint_url_problem
from recbole_reveal.infra.errors import ConfigError, RevealUserError

_attempt = threading.local()          # the deadline of the request attempt this thread is making


class EndpointError(RevealUserError):
    """The endpoint refused or cannot serve the critic's requests (no retry would help)."""


def check_endpoint_url(url, key="fve_generation_endpoint"):
    """``url`` without a trailing slash, or a ``ConfigError`` saying what is wrong with it (the config
    schema's rule, for a client built outside a checked config)."""
    problem = endpoint_url_problem(url)
    if problem:
        raise ConfigError(f"{key} {problem}; got {url!r}")
    return url.rstrip("/")


def _left(timeout, error):
    """``timeout`` capped at the time left of this thread's attempt; ``error`` once none is left."""
    deadline = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error(f"the request took longer than its {_attempt.total:g} s (fve_generation_timeout)")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes, timeout=None):
        return self._stream.read(max_bytes, _left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer, timeout=None):
        return self._stream.write(buffer, _left(timeout, httpcore2.WriteTimeout))

    def close(self):
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _left(timeout, httpcore2.ConnectTimeout)))

    def get_extra_info(self, info):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self):
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_tcp(host, port, _left(timeout, httpcore2.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_unix_socket(path, _left(timeout, httpcore2.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds):
        self._backend.sleep(seconds)


class DeadlineTransport(httpx2.HTTPTransport):
    """httpx's transport whose connections honour a total time per request attempt (module docstring):
    each attempt (``handle_request``, also each retry) gets ``total`` seconds for everything up to the
    last byte of its reply, read in the same thread after this returns."""

    def __init__(self, total, max_connections=100):
        super().__init__()
        self.total = float(total)
        # httpx builds its pool without a way to pass httpcore's network backend: the same pool with ours
        self._pool = httpcore2.ConnectionPool(ssl_context=httpx2.create_ssl_context(), max_connections=max_connections,
                                              max_keepalive_connections=max_connections,
                                              network_backend=_DeadlineBackend())

    def handle_request(self, request):
        _attempt.deadline, _attempt.total = time.monotonic() + self.total, self.total
        return super().handle_request(request)


def openai_client(base_url, api_key, timeout, retries, concurrency):
    """An ``openai.OpenAI`` client for ``base_url``: ``timeout`` seconds per attempt in all (connect
    included), ``retries`` retries of the transient failures (module docstring)."""
    transport = DeadlineTransport(timeout, max_connections=max(int(concurrency), 1))
    return openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=float(timeout),
                         max_retries=int(retries), http_client=openai.DefaultHttpxClient(transport=transport))


def _tls_failure(error):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ssl.SSLError):
            return True
        error = error.__cause__ or error.__context__
    return False


def endpoint_error(error, base_url, what):
    """An :class:`EndpointError` (one line) for an ``openai`` error no retry fixes, else None. ``what``:
    the request, e.g. ``"GET /models"``."""
    where = f"{what} at {base_url}"
    if isinstance(error, openai.AuthenticationError):
        return EndpointError(f"{where} was refused (HTTP 401: {_detail(error)}): set fve_generation_api_key_env to "
                             "the variable holding the server's API key (the server's --api-key)")
    if isinstance(error, openai.PermissionDeniedError):
        return EndpointError(f"{where} was refused (HTTP 403: {_detail(error)}): the API key may not use it")
    if isinstance(error, openai.NotFoundError):
        return EndpointError(f"{where} does not exist (HTTP 404: {_detail(error)}): check fve_generation_endpoint "
                             "(the base URL, usually ending in /v1) and fve_generation_model (the served name)")
    if isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code not in (408, 409, 429):
        return EndpointError(f"{where} was rejected (HTTP {error.status_code}: {_detail(error)})")
    if isinstance(error, openai.APIConnectionError) and _tls_failure(error):
        return EndpointError(f"{where}: the TLS handshake failed ({_root(error)}); a server without TLS is reached "
                             "with http://, not https://")
    return None


def _detail(error):
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:200]
    return str(getattr(error, "message", error))[:200]


def _root(error):
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error)[:160]}"


def failure(error, timeout):
    """One line for a transient failure (what the retries could not get past)."""
    if isinstance(error, openai.APITimeoutError):
        return f"no complete reply within {timeout:g} s (fve_generation_timeout)"
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {_detail(error)}"
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed ({_root(error)})"
    return f"{type(error).__name__}: {str(error)[:200]}"
