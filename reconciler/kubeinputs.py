"""One-shot reads of an API server for the admin commands (`preflight`, `rewrite-pvs`): whole
collections in pages, single objects, ceph-csi's Secrets. The controller's informers are not
needed for a command that looks once; these are plain GETs with the runtime's client and its
timeouts. Secret values never appear in errors.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kubernetes_asyncio.client import ApiClient

from reconciler.cephbindings import cephx_key_problem
from reconciler.cephconn import Credentials
from reconciler.csiconfig import ConfigKey
from reconciler.errors import InvalidSecret, SecretForbidden, SecretNotFound
from reconciler.k8s import ApiStatusError, KubeObject, Resource, request_json
from reconciler.k8s.client import status_error
from reconciler.kinds import SECRETS

PAGE = 500


async def list_all(
    api_client: ApiClient, resource: Resource, namespace: str | None = None
) -> list[KubeObject]:
    """Every object of the collection, listed `PAGE` at a time."""
    path = resource.collection_path(namespace)
    objects: list[KubeObject] = []
    token = ""
    while True:
        query: list[tuple[str, Any]] = [("limit", PAGE)]
        if token:
            query.append(("continue", token))
        response = await api_client.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        if not 200 <= response.status < 300:
            raise await status_error(path, response)
        try:
            page = await response.json()
        finally:
            response.release()
        objects.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return objects


async def get_or_none(api_client: ApiClient, path: str) -> KubeObject | None:
    try:
        return await request_json(api_client, "GET", path)
    except ApiStatusError as err:
        if err.status == 404:
            return None
        raise


async def config_map_key(api_client: ApiClient, where: ConfigKey) -> str | None:
    """The text under `where`'s key; None when the ConfigMap or the key does not exist."""
    found = await get_or_none(
        api_client, f"/api/v1/namespaces/{where.namespace}/configmaps/{where.name}"
    )
    value = None if found is None else (found.get("data") or {}).get(where.key)
    return None if value is None else str(value)


async def secret_credentials(api_client: ApiClient, name: str, namespace: str) -> Credentials:
    """`userID`/`userKey` of a ceph-csi Secret, read by one GET (the controller's too).
    SecretNotFound, SecretForbidden, InvalidSecret: none of them quotes the values."""
    try:
        secret = await request_json(api_client, "GET", SECRETS.object_path(name, namespace))
    except ApiStatusError as err:
        if err.status == 404:
            raise SecretNotFound(namespace, name) from err
        if err.status == 403:
            raise SecretForbidden(namespace, name) from err
        raise
    data = secret.get("data") or {}
    try:
        user = base64.b64decode(data["userID"], validate=True).decode()
        key = base64.b64decode(data["userKey"], validate=True).decode()
    except (KeyError, binascii.Error, UnicodeDecodeError):
        # Never say more than which keys are expected: the values are secret.
        raise InvalidSecret(namespace, name, "needs base64 keys userID and userKey") from None
    # Checked before librados sees it (librados logs a key it cannot decode). Surrounding
    # whitespace is dropped, as ceph-csi's key file drops it.
    key = key.strip()
    problem = cephx_key_problem(key)
    if problem is not None:
        raise InvalidSecret(namespace, name, f"userKey is not a CephX key: {problem}")
    return Credentials(user, key)
