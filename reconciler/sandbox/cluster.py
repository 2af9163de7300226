"""Admin access to a Kubernetes API server: the one interface tests and tools use.

`KubeCluster` is an API server reached as an admin: its address and CA, an admin kubeconfig
for kubectl and both Python clients, raw JSON requests (`request`) and kubeconfigs minted for
ServiceAccounts (`service_account_kubeconfig`). Two kinds of it exist:

    KubeSandbox (reconciler.sandbox.kube)   the local etcd + kube-apiserver + controllers it
                                            starts and stops itself, with a CA of its own
    KubeCluster.from_kubeconfig(path, dir)  a cluster that already runs (kind in hosted CI),
                                            reached with the admin credentials of a kubeconfig

Only client certificates and bearer tokens are used from a kubeconfig (what kind, kubeadm and
the sandbox write); exec plugins and auth providers are refused with KubeconfigUnusable.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from reconciler.sandbox.errors import (
    ApiRequestFailed,
    KubeconfigUnusable,
    SandboxError,
    TokenRequestFailed,
)
from reconciler.sandbox.pki import KeyPair, write_kubeconfig

REQUEST_TIMEOUT = 10.0


class KubeCluster:
    """An API server at `server` (CA `ca_file`) with admin credentials; `kubeconfig` is an admin
    kubeconfig. Files this object writes (minted kubeconfigs) go under `workdir`."""

    def __init__(self, workdir: Path, *, server: str, ca_file: Path, kubeconfig: Path) -> None:
        self.workdir = workdir
        self.server = server
        self.ca_file = ca_file
        self.kubeconfig = kubeconfig
        address = urllib.parse.urlsplit(server)
        self.host = address.hostname or ""
        self.port = address.port or 443
        # Set by whoever holds the admin's credentials (the sandbox once its PKI is written).
        self._admin: KeyPair | None = None
        self._admin_token: str | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path, workdir: Path) -> KubeCluster:
        """The cluster of `path`'s current context, as its user (who should be an admin: the
        tests create CRDs, ClusterRoles and PVs). Its CA and client key are copied to files
        under `workdir`, and `kubeconfig` is a self-contained copy of that one context."""
        workdir.mkdir(parents=True, exist_ok=True)
        cluster, user = _current_context(path)
        server = cluster.get("server")
        if not isinstance(server, str) or not server.startswith("https://"):
            raise KubeconfigUnusable(path, f"the cluster's server is not an https URL: {server!r}")
        ca_file = workdir / "ca.crt"
        ca_file.write_bytes(_data_or_file(path, cluster, "certificate-authority"))
        credentials = cls(
            workdir, server=server, ca_file=ca_file, kubeconfig=workdir / "admin.kubeconfig"
        )
        unsupported = sorted({"exec", "auth-provider", "username", "password"} & set(user))
        if unsupported:
            raise KubeconfigUnusable(
                path, f"the user authenticates with {', '.join(unsupported)}: not supported"
            )
        if "client-certificate" in user or "client-certificate-data" in user:
            credentials._admin = KeyPair(workdir / "admin.crt", workdir / "admin.key")
            credentials._admin.cert.write_bytes(_data_or_file(path, user, "client-certificate"))
            credentials._admin.key.touch(mode=0o600)
            credentials._admin.key.write_bytes(_data_or_file(path, user, "client-key"))
        if "token" in user:
            credentials._admin_token = str(user["token"])
        elif "tokenFile" in user:
            try:
                token = _relative_to(path, str(user["tokenFile"])).read_text().strip()
            except OSError as err:
                raise KubeconfigUnusable(path, f"tokenFile: {err}") from err
            credentials._admin_token = token
        if credentials._admin is None and credentials._admin_token is None:
            raise KubeconfigUnusable(path, "its user has neither a client certificate nor a token")
        write_kubeconfig(
            credentials.kubeconfig,
            server=server,
            ca_file=ca_file,
            user="admin",
            client=credentials._admin,
            token=credentials._admin_token,
        )
        return credentials

    # credentials ---------------------------------------------------------------------------

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        create: bool = True,
        expiration_seconds: int = 3600,
        path: Path | None = None,
    ) -> Path:
        """A kubeconfig that authenticates as serviceaccount `namespace/name` (TokenRequest API).

        With `create`, the namespace and ServiceAccount are created when missing. The token
        carries no permissions of its own: grant them with Roles/ClusterRoles as a deployment would.
        """
        if create:
            self._ensure(f"/api/v1/namespaces/{namespace}", {"metadata": {"name": namespace}})
            self._ensure(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
                {"metadata": {"name": name, "namespace": namespace}},
            )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        try:
            answer = self.request(
                "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request
            )
        except ApiRequestFailed as err:
            raise TokenRequestFailed(namespace, name, str(err)) from err
        token = answer.get("status", {}).get("token")
        if not isinstance(token, str) or not token:
            raise TokenRequestFailed(namespace, name, f"no token in answer: {answer}")
        target = path or self.workdir / "kubeconfigs" / f"{namespace}.{name}.kubeconfig"
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_kubeconfig(
            target,
            server=self.server,
            ca_file=self.ca_file,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
        )

    # raw admin requests (no client library needed for the sandbox's own bookkeeping) -------

    def request(self, method: str, api_path: str, body: dict[str, Any] | None = None) -> Any:
        """One admin request to the API server; JSON in, JSON (or text) out."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._admin_token is not None:
            headers["Authorization"] = f"Bearer {self._admin_token}"
        req = urllib.request.Request(
            self.server + api_path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(
                req, context=self._admin_tls(), timeout=REQUEST_TIMEOUT
            ) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiRequestFailed(method, api_path, err.code, err.read().decode()) from err
        except (urllib.error.URLError, OSError) as err:
            raise ApiRequestFailed(method, api_path, None, str(err)) from err
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def get(self, api_path: str) -> dict[str, Any] | None:
        """The object at `api_path`, as the admin reads it; None while it does not exist."""
        try:
            found: dict[str, Any] = self.request("GET", api_path)
        except ApiRequestFailed as err:
            if err.status == 404:
                return None
            raise
        return found

    def _ensure(self, api_path: str, body: dict[str, Any]) -> None:
        try:
            self.request("GET", api_path)
        except ApiRequestFailed as err:
            if err.status != 404:
                raise
            collection = api_path.rsplit("/", 1)[0]
            try:
                self.request("POST", collection, body)
            except ApiRequestFailed as create_err:
                if create_err.status != 409:  # created meanwhile
                    raise

    def _admin_tls(self) -> ssl.SSLContext:
        if self._admin is None and self._admin_token is None:
            raise SandboxError(f"{self.server}: no admin credentials yet (never started?)")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self._admin is not None:
            context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context


def _current_context(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of `path`'s current context."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise KubeconfigUnusable(path, str(err)) from err
    if not isinstance(config, dict):
        raise KubeconfigUnusable(path, "not a kubeconfig (no mapping at the top)")
    current = config.get("current-context")
    if not current:
        raise KubeconfigUnusable(path, "no current-context")

    def entry(kind: str, name: object) -> dict[str, Any]:
        for item in config.get(f"{kind}s") or []:
            if isinstance(item, dict) and item.get("name") == name:
                found = item.get(kind)
                if isinstance(found, dict):
                    return found
        raise KubeconfigUnusable(path, f"no {kind} named {name!r}")

    context = entry("context", current)
    return entry("cluster", context.get("cluster")), entry("user", context.get("user"))


def _data_or_file(path: Path, entry: dict[str, Any], field: str) -> bytes:
    """`field`-data (base64) or the file `field` names (relative to the kubeconfig's folder)."""
    if f"{field}-data" in entry:
        try:
            return base64.b64decode(str(entry[f"{field}-data"]), validate=True)
        except (binascii.Error, ValueError) as err:
            raise KubeconfigUnusable(path, f"{field}-data is not base64: {err}") from err
    if field in entry:
        try:
            return _relative_to(path, str(entry[field])).read_bytes()
        except OSError as err:
            raise KubeconfigUnusable(path, f"{field}: {err}") from err
    raise KubeconfigUnusable(path, f"neither {field} nor {field}-data is set")


def _relative_to(kubeconfig: Path, name: str) -> Path:
    """A file a kubeconfig names: relative paths are relative to the kubeconfig's folder."""
    return (kubeconfig.parent / Path(name).expanduser()).resolve()
