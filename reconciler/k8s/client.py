"""One shared kubernetes-asyncio ApiClient with explicit timeouts, client-side write rate
limiting and 429 Retry-After handling.

Every API call of the runtime and of the controllers goes through this client, so
`--kube-api-qps`/`--kube-api-burst` bound what the process can do to the API server, and a server
that is shedding load (or still initialising its storage) is waited for instead of hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from reconciler.k8s.errors import ApiStatusError
from reconciler.k8s.ratelimit import TokenBucket

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TLS_SHUTDOWN_GRACE = 0.25


@dataclass(frozen=True)
class ApiSettings:
    qps: float = 20.0
    """Sustained API writes a second (--kube-api-qps); reads are served by informers."""
    burst: int = 30
    """Writes allowed at once before `qps` applies (--kube-api-burst)."""
    connect_timeout: float = 10.0
    """Seconds to open a connection; without it a black-holed server hangs a call forever."""
    read_timeout: float = 30.0
    """Seconds without a byte from the server before a (non-watch) call fails."""
    max_throttle_retries: int = 10
    """How often one call honours a 429 before the error is raised to the caller."""
    max_retry_after: float = 60.0
    """Upper bound on one Retry-After wait, whatever the server asks for."""


def retry_after_seconds(headers: Any, cap: float) -> float:
    """The 429's Retry-After in seconds (the API server sends whole seconds); 1 s if absent."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), cap)


class RateLimitedApiClient(ApiClient):
    """An ApiClient whose writes wait for a token and whose calls wait out 429s."""

    def __init__(self, configuration: Configuration, settings: ApiSettings) -> None:
        super().__init__(configuration)
        self.settings = settings
        self.write_bucket = TokenBucket(settings.qps, settings.burst)
        self.default_timeout = aiohttp.ClientTimeout(
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self.throttled_total = 0
        trust_environment_once(self)

    async def close(self) -> None:
        await super().close()
        # aiohttp shuts TLS transports down asynchronously: give them the pause aiohttp's docs
        # ask for, or a loop that ends right after finds them still "closing" (ResourceWarning).
        await asyncio.sleep(TLS_SHUTDOWN_GRACE)

    async def request(  # noqa: PLR0917  (mirrors ApiClient.request, which is called positionally)
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Any = None,
        post_params: Any = None,
        body: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> Any:
        timeout = _request_timeout if _request_timeout is not None else self.default_timeout
        for attempt in range(self.settings.max_throttle_retries + 1):
            if method in WRITE_METHODS:
                await self.write_bucket.wait()
            try:
                response = await super().request(
                    method,
                    url,
                    query_params=query_params,
                    headers=headers,
                    post_params=post_params,
                    body=body,
                    _preload_content=_preload_content,
                    _request_timeout=timeout,
                )
            except ApiException as err:
                if err.status != 429 or attempt == self.settings.max_throttle_retries:
                    raise
                response_headers = err.headers
            else:
                # Streaming responses (watches) are not checked by the library: do it here.
                if _preload_content or response.status != 429:
                    return response
                if attempt == self.settings.max_throttle_retries:
                    return response
                response_headers = response.headers
                response.release()
            self.throttled_total += 1
            delay = retry_after_seconds(response_headers, self.settings.max_retry_after)
            log.info(
                "API server throttled the request (429); retrying",
                extra={"method": method, "url": url, "retry_after": delay, "attempt": attempt + 1},
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def trust_environment_once(api_client: ApiClient) -> None:
    """Resolve the proxy from the environment once, not for every request.

    kubernetes-asyncio's session trusts the environment, so aiohttp looks up the proxy variables
    and reads ~/.netrc on two extra threads for every request: 6% of a failover's CPU, and two
    thread hops of latency per call. The proxy (HTTPS_PROXY, NO_PROXY, ...) is taken once here
    for the API server's address; netrc never applied (every request carries its own
    Authorization, and aiohttp refuses netrc credentials beside it).
    """
    rest: Any = api_client.rest_client
    if rest.proxy is None and api_client.configuration.host:
        with contextlib.suppress(LookupError):
            proxy, proxy_auth = get_env_proxy_for_url(URL(api_client.configuration.host))
            rest.proxy = str(proxy)
            if proxy_auth is not None:
                rest.proxy_headers = {"Proxy-Authorization": proxy_auth.encode()}
    session = rest.pool_manager
    if hasattr(session, "_trust_env"):
        session._trust_env = False


async def status_error(path: str, response: aiohttp.ClientResponse) -> ApiStatusError:
    """The error for a non-2xx streaming answer, with the Status message; releases `response`."""
    try:
        body = await response.text()
    finally:
        response.release()
    try:
        message = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        message = body
    return ApiStatusError(path, response.status, message)


async def request_json(
    api_client: ApiClient,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One API call with a JSON body and answer as plain dicts, for any kind (CRDs included).

    PATCH needs `content_type="application/merge-patch+json"` (or apply-patch+yaml): the
    server reads a plain JSON body as a JSON *patch*. Raises ApiStatusError for non-2xx.
    """
    response: aiohttp.ClientResponse = await api_client.call_api(
        path,
        method,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    if not 200 <= response.status < 300:
        raise await status_error(path, response)
    try:
        answer: dict[str, Any] = await response.json()
    finally:
        response.release()
    return answer


async def load_configuration(kubeconfig: Path | None = None) -> Configuration:
    """An explicit Configuration: from `kubeconfig`, else the in-cluster service account.

    In-cluster, the token is re-read from its file as it rotates (bound service-account tokens
    expire after an hour); nothing touches the library's process-wide default Configuration.
    """
    configuration = Configuration()
    if kubeconfig is not None:
        await kube_config.load_kube_config(
            config_file=str(kubeconfig),
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, try_refresh_token=True
        )
    return configuration


async def make_api_client(
    kubeconfig: Path | None = None, settings: ApiSettings | None = None
) -> RateLimitedApiClient:
    """The one ApiClient a process shares; close it (`await client.close()`) on the way out."""
    configuration = await load_configuration(kubeconfig)
    return RateLimitedApiClient(configuration, settings or ApiSettings())
