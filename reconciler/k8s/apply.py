"""Server-side apply: the API server merges what a field manager owns, so a controller sends
only the fields it sets and never reads before it writes."""

from __future__ import annotations

from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.client import request_json
from reconciler.k8s.informer import Resource
from reconciler.k8s.store import KubeObject


async def server_side_apply(
    api_client: ApiClient,
    resource: Resource,
    body: KubeObject,
    *,
    field_manager: str,
    subresource: str = "",
) -> KubeObject:
    """Apply `body` as `field_manager`, forced; `subresource="status"` for status."""
    path = resource.object_path(body["metadata"]["name"], body["metadata"].get("namespace"))
    if subresource:
        path += f"/{subresource}"
    return await request_json(
        api_client,
        "PATCH",
        f"{path}?fieldManager={field_manager}&force=true",
        body,
        content_type="application/apply-patch+yaml",
    )
