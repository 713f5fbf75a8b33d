"""The ``provider`` section: which identity provider, how to reach it, and what its tokens must be.

Its own module because it is the largest section, with the most rules across fields (presets, the
OpenID Connect and plain OAuth 2.0 protocols, bearer tokens), all read by ``proxy.provider``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from .. import presets
from .base import _Model
from .keyfiles import ClientCertificate, ClientKey, read_secret_file
from .values import (DEFAULT_ID_TOKEN_ALGORITHMS, Duration, Loc, PositiveDuration, Secret, _algorithm, _at_least_one,
                     _authorize_params, _domain, _existing_file, _http_url, _non_empty, _scope, _token_type)

Url = Annotated[str, _http_url("https://idp.example.com")]

# token_endpoint_auth_method values that send the client secret itself, or sign with it.
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post", "client_secret_jwt"})
# ... that send a client assertion (RFC 7521 §4.2).
ASSERTION_METHODS = frozenset({"client_secret_jwt", "private_key_jwt"})


ClaimPath = Annotated[str, AfterValidator(_non_empty)]


class ClaimsConfig(_Model):
    """Where the identity is found in the ID token or userinfo claims: dotted paths such as
    ``realm_access.roles``. ``user`` applies to plain OAuth 2.0 only: with OpenID Connect the user is
    always the ID token's ``sub`` (OIDC Core §2), so the refresh check can compare it."""

    user: ClaimPath = "sub"
    email: ClaimPath = "email"
    name: ClaimPath = "name"
    preferred_username: ClaimPath = "preferred_username"
    groups: ClaimPath = "groups"


class ProviderConfig(_Model):
    """The identity provider: OpenID Connect with discovery, plain OAuth 2.0 with explicit endpoints,
    or a preset (``presets.py``) that fills either in."""

    type: Literal["oidc", "oauth2", "github", "google", "microsoft", "gitlab", "keycloak", "dex", "authentik",
                  "zitadel", "django-oauth-toolkit"] = "oidc"
    tenant: str | None = None
    base_url: Url | None = None
    claims: ClaimsConfig = ClaimsConfig()
    issuer: Url | None = None
    authorization_endpoint: Url | None = None
    token_endpoint: Url | None = None
    userinfo_endpoint: Url | None = None
    jwks_uri: Url | None = None
    end_session_endpoint: Url | None = None
    pushed_authorization_request_endpoint: Url | None = None
    client_id: Annotated[str, AfterValidator(_non_empty)]
    client_secret: Secret | None = None
    client_secret_file: Annotated[Secret, BeforeValidator(read_secret_file)] | None = None
    private_key_file: ClientKey | None = None
    private_key_id: Annotated[str, AfterValidator(_non_empty)] | None = None
    private_key_certificate_file: ClientCertificate | None = None
    client_assertion_audience: Literal["issuer", "token_endpoint"] | None = None
    scopes: list[Annotated[str, AfterValidator(_scope)]] = ["openid", "email", "profile"]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "client_secret_jwt",
                                        "private_key_jwt", "none"] = "client_secret_basic"
    id_token_algorithms: Annotated[list[Annotated[str, AfterValidator(_algorithm)]],
                                   AfterValidator(_at_least_one)] = list(DEFAULT_ID_TOKEN_ALGORITHMS)
    use_userinfo: bool = False
    # type github: the user's organisations ("org") and teams ("org/team-slug") become groups.
    github_groups: bool = False
    # type microsoft: where Microsoft Graph is, asked for the user's groups when the ID token says they
    # overflowed it (proxy/provider/graph.py); another cloud's Graph, or a test double.
    microsoft_graph_url: Url | None = None
    # type google: the Workspace domains whose accounts may sign in (the ID token's hd claim).
    google_hosted_domains: list[Annotated[str, AfterValidator(_domain)]] = []
    clock_skew: Duration = 60.0
    timeout: PositiveDuration = 10.0
    ca_file: Annotated[str, AfterValidator(_existing_file)] | None = None
    response_mode: Literal["query", "form_post"] = "query"
    pushed_authorization_requests: bool = False
    frontchannel_logout: bool = False
    # Which sign-in parameters a link to /oauth2/start may set (proxy/authorize_params.py).
    authorize_parameters: list[Literal["login_hint", "prompt", "acr_values", "max_age", "ui_locales",
                                       "domain_hint"]] = []
    extra_authorize_params: Annotated[dict[str, str], AfterValidator(_authorize_params)] = {}
    accept_bearer_tokens: bool = False
    bearer_audiences: list[str] = []
    # RFC 9068 §2.1: JWT access tokens are typed "at+jwt"; providers that do not (Azure AD, Keycloak,
    # Okta) need their typ listed here. An ID or logout token is refused whatever this says.
    bearer_token_types: Annotated[list[Annotated[str, AfterValidator(_token_type)]],
                                  AfterValidator(_at_least_one)] = ["at+jwt"]

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """Fill in a preset's defaults; plain OAuth 2.0 has no ID token, so claims come from userinfo."""
        if not isinstance(data, dict):
            return data
        data = presets.expand(data)
        if presets.protocol_of(str(data.get("type", "oidc"))) == "oauth2" and "use_userinfo" not in data:
            data["use_userinfo"] = True
        return data

    @property
    def protocol(self) -> Literal["oidc", "oauth2"]:
        return "oauth2" if presets.protocol_of(self.type) == "oauth2" else "oidc"

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        preset_problems = list(presets.problems(self.type, self.tenant, self.issuer,
                                                   discovers=self.needs_discovery))
        for key, message in preset_problems:
            yield (key,), message
        if self.github_groups and self.type != "github":
            yield ("github_groups",), "reads GitHub organisations and teams: only with type: github; remove it"
        if self.microsoft_graph_url is not None and self.type != "microsoft":
            yield ("microsoft_graph_url",), ("is where Entra ID group memberships are read: only with type: "
                                             "microsoft; remove it")
        if self.google_hosted_domains and self.type != "google":
            yield ("google_hosted_domains",), ("checks the hd claim of Google ID tokens: only with type: google; "
                                               "remove it")
        if self.protocol == "oidc" and not preset_problems:
            yield from self._oidc_problems()
        else:
            for name in ("authorization_endpoint", "token_endpoint"):
                if getattr(self, name) is None:
                    yield (name,), f"required for type oauth2 (there is no discovery); add the provider's {name} URL"
            if not self.use_userinfo:
                yield ("use_userinfo",), ("type oauth2 has no ID token, so claims always come from userinfo; "
                                          "remove use_userinfo or set it to true")
        if self.frontchannel_logout and self.protocol == "oauth2":
            yield ("frontchannel_logout",), ("front-channel logout names an OpenID provider's session (iss and sid); "
                                             "type oauth2 has none: remove frontchannel_logout")
        if self.accept_bearer_tokens and self.protocol == "oauth2":
            yield ("accept_bearer_tokens",), ("bearer JWTs are verified against an OpenID provider's issuer and keys; "
                                              "type oauth2 has neither: remove accept_bearer_tokens")
        untyped = [t for t in self.bearer_token_types if t.lower().removeprefix("application/") != "at+jwt"]
        if self.accept_bearer_tokens and untyped and not self.bearer_audiences:
            yield ("bearer_audiences",), (f"with bearer_token_types {untyped}, an ID token of this client (its aud is "
                                          "client_id, the default here) is told from an access token only by its "
                                          "nonce; list your API's audience in bearer_audiences (the client id "
                                          "too only if your access tokens carry it)")
        yield from self._client_auth_problems()
        if self.use_userinfo and not self.needs_discovery and self.userinfo_endpoint is None:
            yield ("userinfo_endpoint",), ("claims come from userinfo but there is no issuer to discover it "
                                           'from; add userinfo_endpoint, e.g. "https://idp.example.com/userinfo"')

    def _oidc_problems(self) -> Iterator[tuple[Loc, str]]:
        """OIDC Core §3.1.3.7: every ID token's ``iss`` is checked against the issuer, so type oidc always
        needs one; the endpoints come from discovery unless all of them are given (then it is skipped)."""
        if self.issuer is None:
            yield ("issuer",), ('required for type oidc: ID tokens are checked against it; add the provider\'s '
                                'issuer URL, e.g. issuer: "https://idp.example.com" (with authorization_endpoint, '
                                "token_endpoint and jwks_uri all given, discovery is skipped)")
        if self.issuer is not None and self.issuer.rstrip("/").endswith("/.well-known/openid-configuration"):
            base = self.issuer.rstrip("/").removesuffix("/.well-known/openid-configuration")
            yield ("issuer",), (f"this is the discovery document's URL, not the issuer; set issuer: {base!r} "
                                "(authproxy appends /.well-known/openid-configuration itself)")
        if "openid" not in self.scopes:
            yield ("scopes",), ('type oidc needs the "openid" scope; add openid to scopes '
                                "(or use type: oauth2 for a provider without OpenID Connect)")

    def _client_auth_problems(self) -> Iterator[tuple[Loc, str]]:
        """Each ``token_endpoint_auth_method`` needs its one credential, and no other (RFC 6749 §2.3,
        RFC 7523 §2.2, OIDC Core §9): a leftover secret or key would only mislead whoever reads the file."""
        method = self.token_endpoint_auth_method
        if self.client_secret is not None and self.client_secret_file is not None:
            yield ("client_secret_file",), "give the client secret once: remove client_secret or client_secret_file"
        if method in SECRET_METHODS and self.client_secret is None and self.client_secret_file is None:
            yield ("client_secret",), (f"required with token_endpoint_auth_method {method}; write it here (e.g. "
                                       'client_secret: "${CLIENT_SECRET}"), or name a file with client_secret_file, '
                                       "or authenticate with a key (token_endpoint_auth_method: private_key_jwt)")
        if method not in SECRET_METHODS:
            for name in ("client_secret", "client_secret_file"):
                if getattr(self, name) is not None:
                    yield (name,), f"token_endpoint_auth_method {method} sends no client secret; remove {name}"
        if method == "private_key_jwt" and self.private_key_file is None:
            yield ("private_key_file",), ("required with token_endpoint_auth_method private_key_jwt: the path of "
                                          "the PEM or JWK private key whose public key the provider has")
        if method != "private_key_jwt":
            for name in ("private_key_file", "private_key_id", "private_key_certificate_file"):
                if getattr(self, name) is not None:
                    yield (name,), (f"used only with token_endpoint_auth_method private_key_jwt; set that, "
                                    f"or remove {name}")
        cert, key = self.private_key_certificate_file, self.private_key_file
        if cert is not None and key is not None and cert.key_thumbprint != key.key.thumbprint():
            yield ("private_key_certificate_file",), (f"{cert.path!r} is the certificate of another key than "
                                                      f"private_key_file {key.path!r}; give that key's certificate")
        if self.client_assertion_audience is not None and method not in ASSERTION_METHODS:
            yield ("client_assertion_audience",), ("used only with token_endpoint_auth_method private_key_jwt or "
                                                   "client_secret_jwt; remove it")
        if self.client_assertion_audience == "issuer" and self.issuer is None:
            yield ("client_assertion_audience",), ("there is no issuer to name as the audience; set "
                                                   "client_assertion_audience: token_endpoint")

    def secret(self) -> Secret | None:
        """The client secret, from ``client_secret`` or ``client_secret_file`` (read when the file was loaded)."""
        return self.client_secret if self.client_secret is not None else self.client_secret_file

    @property
    def key_id(self) -> str | None:
        """The ``kid`` of client assertions: ``private_key_id``, else the JWK's own ``kid``."""
        if self.private_key_id is not None:
            return self.private_key_id
        return self.private_key_file.kid if self.private_key_file is not None else None

    @property
    def needs_discovery(self) -> bool:
        explicit = (self.authorization_endpoint, self.token_endpoint, self.jwks_uri)
        return self.protocol == "oidc" and self.issuer is not None and not all(explicit)
