"""What fetching a private or difficult feed needs besides its public URL (feeds.yaml's
``auth``, ``headers``, ``cookie``, ``user_agent``, ``proxy``, ``verify_tls``). Imported
only when a feed has one of them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from aggregator.secrets import public_url, without_userinfo


@dataclass(frozen=True, slots=True, repr=False)
class Access:
    """What fetching a private or difficult feed needs besides its public URL. Holds
    secrets: never printed (its repr names only what is set), never published."""

    url: str  # the URL to fetch: the public one, plus its secret query parameters
    username: str | None = None  # HTTP basic auth
    password: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers
    plain_headers: tuple[str, ...] = ()  # of those, the ones whose value is no secret
    cookie: str | None = None  # the Cookie header
    user_agent: str | None = None  # instead of the global one
    proxy: str | None = None  # http://, https:// or socks5:// URL
    verify_tls: bool = True
    missing: str | None = None  # a secret feeds.yaml names but that could not be read

    def __repr__(self) -> str:
        said = [
            f.name for f in fields(self) if f.name not in ("url", "verify_tls", "plain_headers")
        ]
        said = [name for name in said if getattr(self, name)]
        return f"Access({', '.join(said + ([] if self.verify_tls else ['verify_tls=False']))})"

    @property
    def credentials(self) -> bool:
        """True when it carries anything secret (what an export must leave out)."""
        return bool(self.secrets) or self.username is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value it holds, for :func:`aggregator.secrets.scrub`."""
        values = [self.password or "", self.cookie or ""]
        values += [v for name, v in self.headers if name not in self.plain_headers]
        values += public_url(self.url)[1]
        if self.proxy:
            values += [v for v in (public_url(self.proxy)[2] or ("", ""))[1:] if v]
        return tuple(v for v in values if v)

    @property
    def fingerprint(self) -> str:
        """What of it may be told: who, which headers, through what (no secret value)."""
        proxy = without_userinfo(self.proxy) if self.proxy else None
        names = tuple(name for name, _ in self.headers)
        said = (public_url(self.url)[0], self.username, names, self.user_agent, proxy)
        return repr((*said, self.verify_tls, self.cookie is not None))
