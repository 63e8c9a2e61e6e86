"""A local OpenID Connect provider for the tests, built from authlib's server components: the
authorization code flow (PKCE required), client_secret_basic/post at the token endpoint, a discovery
document, a JWKS, and RS256-signed id_tokens with the nonce, ``email``, ``roles`` and ``groups``
claims of whoever the test says is signed in at the provider.

Usage::

    oidc_provider.sign_in_as(email="ann@council.example", roles=["Escalations.Coordinator"])
    settings.web.oidc = oidc_provider.settings(role_claims={"Escalations.Coordinator": "coordinator"})

It has no login page: /authorize grants at once, as the person set by ``sign_in_as`` (a provider where
the person is already signed in). Served by uvicorn on a free loopback port, plain http (authlib is
told so with AUTHLIB_INSECURE_TRANSPORT, set for the tests only)."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import uvicorn
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, JsonRequest, OAuth2Payload, OAuth2Request, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from escalations.settings import OidcSettings
from tests.servers import free_port

CLIENT_ID = "escalations-web-tests"
CLIENT_SECRET = secrets.token_urlsafe(16)


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in ("openid", "email", "profile"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict[str, Any]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    @property
    def data(self) -> dict[str, str]:
        return dict(self._items)

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        values: defaultdict[str, list[str]] = defaultdict(list)
        for k, v in self._items:
            values[k].append(v)
        return values


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, uri: str, headers: Headers, args: list[tuple[str, str]],
                 form: list[tuple[str, str]]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._args, self._form = dict(args), dict(form)
        self.payload = _Payload(args + form)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


async def as_oauth2_request(request: Request) -> _Request:
    form = [(k, str(v)) for k, v in (await request.form()).multi_items()] if request.method == "POST" else []
    return _Request(request.method, str(request.url), request.headers, list(request.query_params.multi_items()),
                    form)


class Provider(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        super().__init__(scopes_supported=["openid", "email", "profile"])
        self.issuer = issuer
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4), "use": "sig", "alg": "RS256"})
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.user: dict[str, Any] | None = None
        self.tokens_issued = 0
        self.register_token_generator("default", BearerTokenGenerator(
            access_token_generator=lambda **_kw: secrets.token_urlsafe(32)))
        self.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(self)])

    # AuthorizationServer's framework hooks
    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.tokens_issued += 1

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        assert isinstance(request, OAuth2Request)
        return request

    def create_json_request(self, request: Any) -> JsonRequest:
        raise NotImplementedError("no JSON endpoints here")

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        if isinstance(body, dict):
            return JSONResponse(body, status_code=status, headers=dict(headers))
        return Response(body, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        provider: Provider = self.server
        provider.codes[code] = Code(code=code, client_id=request.client.client_id,
                                    redirect_uri=data.get("redirect_uri", ""), scope=request.payload.scope,
                                    user=dict(request.user), nonce=data.get("nonce"),
                                    code_challenge=data.get("code_challenge"),
                                    code_challenge_method=data.get("code_challenge_method"))

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found = self.server.codes.get(code)
        return found if found is not None and found.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
        return authorization_code.user


class IdToken(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=True)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return any(c.nonce == nonce for c in self.provider.codes.values())

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.provider.key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": str(self.provider.key.kid)}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.provider.issuer, "aud": [client.get_client_id()]}

    def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
        return UserInfo(**user)


class LocalOidcProvider:
    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.provider = Provider(self.issuer)
        self.provider.clients[CLIENT_ID] = Client(CLIENT_ID, CLIENT_SECRET)
        app = Starlette(routes=[Route("/.well-known/openid-configuration", self.discovery),
                                Route("/jwks", self.jwks), Route("/authorize", self.authorize),
                                Route("/token", self.token, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), name="oidc-provider",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the local OIDC provider did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def allow_redirect(self, uri: str) -> None:
        self.provider.clients[CLIENT_ID].redirect_uris.append(uri)

    def sign_in_as(self, email: str, *, roles: list[str] | None = None, groups: list[str] | None = None,
                   email_verified: bool = True) -> None:
        self.provider.user = {"sub": secrets.token_hex(8), "email": email, "email_verified": email_verified,
                              "name": email.split("@")[0], "roles": roles or [], "groups": groups or []}

    def settings(self, **kw: Any) -> OidcSettings:
        return OidcSettings(issuer=self.issuer, client_id=CLIENT_ID, client_secret_env="ESCALATIONS_TEST_OIDC_SECRET",
                            name="the test provider", **kw)

    # ---- endpoints -------------------------------------------------------------------------

    async def discovery(self, _request: Request) -> Response:
        i = self.issuer
        return JSONResponse({"issuer": i, "authorization_endpoint": f"{i}/authorize", "token_endpoint": f"{i}/token",
                             "jwks_uri": f"{i}/jwks", "response_types_supported": ["code"],
                             "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                             "scopes_supported": ["openid", "email", "profile"],
                             "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                             "code_challenge_methods_supported": ["S256"]})

    async def jwks(self, _request: Request) -> Response:
        return JSONResponse({"keys": [self.provider.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        req = await as_oauth2_request(request)
        grant = self.provider.get_consent_grant(req, end_user=self.provider.user)
        response: Response = self.provider.create_authorization_response(req, grant_user=self.provider.user,
                                                                         grant=grant)
        return response

    async def token(self, request: Request) -> Response:
        response: Response = self.provider.create_token_response(await as_oauth2_request(request))
        return response


def local_provider() -> Iterator[LocalOidcProvider]:
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # loopback http, for the tests only
    os.environ["ESCALATIONS_TEST_OIDC_SECRET"] = CLIENT_SECRET
    provider = LocalOidcProvider()
    provider.start()
    yield provider
    provider.stop()
