"""The opening policy: what GDAL may open, for every raster geomesh reads.

GDAL picks a driver from a file's content, not its name, and follows what the content
says: a VRT named ``evil.tif`` reads any file the server can reach, a ``/vsizip/`` or
``/vsicurl/`` path reads through archives or the network, a URL reaches whatever address
its host resolves to. So every source goes through :meth:`OpeningPolicy.check` first, and
every open passes the policy's driver allow-list (``raster._open_with`` tries each allowed
driver by name, so GDAL never picks one from the content):

* drivers: the product's ``ingestion.input_drivers`` (GTiff by default; COGs are GTiffs;
  JP2OpenJPEG only when the product asks). VRT and other indirection formats are never
  tried, except when an operator on the CLI widens the list (``--allow-driver``);
* no ``/vsi…`` prefix and no scheme but ``http``/``https``/``s3`` (no ``file://``,
  ``zip://``, …); the only VSI path GDAL sees is the ``/vsicurl/`` geomesh adds itself to a
  URL it has checked;
* local paths: resolved (``..`` and symlinks followed) and, for the app and remote sources,
  inside one of the import directories (``GEOMESH_IMPORT_DIRS``); the CLI operator may read
  any local path;
* URLs: the prefix must be allowed (``GEOMESH_ALLOWED_SOURCES``, ``scheme://host[:port]``
  with an optional path) and every address the host resolves to must be public (not
  loopback, link-local, private, shared, multicast or reserved) unless the allowed prefix
  names that address itself (``http://10.0.0.5:9000``). Redirects are followed here, one
  hop at a time, each hop checked the same way; GDAL gets the final URL.

The policy is immutable and picklable: it crosses into the ``spawn`` workers of a batch.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin, urlsplit

import lazy_loader
import rasterio

from geomesh.config import ProductConfig
from geomesh.errors import ConfigError, RasterError, SourceNotAllowed
from geomesh.redact import redact, redact_url

if TYPE_CHECKING:  # types only: no cycle (settings imports only errors); a batch worker
    import httpx2  # starts without pydantic-settings (tests/test_parallel.py checks it)

    from geomesh.settings import Settings
else:  # probes only: a batch's worker processes, which never probe, start without it
    httpx2 = lazy_loader.load("httpx2")

#: drivers for objects geomesh itself wrote (COGs in the store)
STORED_DRIVERS: Final[tuple[str, ...]] = ("GTiff",)
#: schemes a source may have; anything else with "://" is refused
URL_SCHEMES: Final[frozenset[str]] = frozenset({"http", "https", "s3"})
DEFAULT_PORTS: Final[dict[str, int | None]] = {"http": 80, "https": 443, "s3": None}
MAX_REDIRECTS: Final = 5
PROBE_TIMEOUT_S: Final = 30.0
#: GDAL options for opening untrusted local or remote files: no sidecar probing
UNTRUSTED_GDAL_OPTIONS: Final[dict[str, str]] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}

_DRIVER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _display(source: str) -> str:
    """A short, credential-free name of a source for messages."""
    return redact(source)[:300]


def _refuse(source: str, reason: str, hint: str) -> SourceNotAllowed:
    return SourceNotAllowed(f"{_display(source)}: refused: {reason}", hint=hint)


# ------------------------------------------------------------------ allowed URL prefixes


@dataclass(frozen=True)
class AllowedSource:
    """One ``GEOMESH_ALLOWED_SOURCES`` entry: ``scheme://host[:port][/path]``."""

    scheme: str
    host: str
    port: int | None
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> AllowedSource:
        entry = text.strip()
        what = f"GEOMESH_ALLOWED_SOURCES entry {redact_url(entry)!r}"
        try:
            parts = urlsplit(entry)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{what} is not a URL prefix ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in URL_SCHEMES or not parts.hostname:
            raise ConfigError(
                f"{what} is not a scheme://host[:port] prefix",
                hint="use http://, https:// or s3:// prefixes, comma-separated",
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(f"{what} may not carry credentials, a query or a fragment")
        return cls(scheme, parts.hostname.lower(), port, parts.path.rstrip("/"))

    @property
    def address(self) -> IpAddress | None:
        """The address the prefix names literally (an explicit opt-in for that address)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def matches(self, scheme: str, host: str, port: int | None, path: str) -> bool:
        if scheme != self.scheme or host != self.host:
            return False
        if (self.port or DEFAULT_PORTS[scheme]) != (port or DEFAULT_PORTS[scheme]):
            return False
        if not self.path:
            return True
        return path == self.path or path.startswith(self.path + "/")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}{self.path}"


def parse_allowed_sources(text: str) -> tuple[AllowedSource, ...]:
    return tuple(AllowedSource.parse(e) for e in text.split(",") if e.strip())


def parse_import_dirs(text: str) -> tuple[Path, ...]:
    return tuple(Path(d).expanduser().resolve() for d in text.split(os.pathsep) if d.strip())


def usable_address(ip: IpAddress) -> bool:
    """A public unicast address (IPv4-mapped IPv6 addresses are judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def resolve_host(host: str, port: int | None) -> list[IpAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise RasterError(
            f"cannot resolve the host {host!r} ({exc})", hint="check the URL and the network"
        ) from None
    out: list[IpAddress] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        out.append(ipaddress.ip_address(addr))
    return out


# ------------------------------------------------------------------ checked sources


@dataclass(frozen=True)
class CheckedSource:
    """A source the policy accepted: what GDAL may open, and how to name it."""

    source: str  #: as given (the tile's identity is derived from it)
    gdal_path: str  #: what GDAL opens: a resolved local path, /vsicurl/<url> or s3://…
    local: bool
    final_url: str | None = None  #: http(s): the URL after the checked redirects


@dataclass(frozen=True)
class Probe:
    """The answer of the checked HEAD (or 1-byte GET) at the end of the redirects."""

    url: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OpeningPolicy:
    """What may be opened; build one per caller with :meth:`operator` or :meth:`untrusted`."""

    drivers: tuple[str, ...] = STORED_DRIVERS
    import_dirs: tuple[Path, ...] = ()
    allowed_sources: tuple[AllowedSource, ...] = ()
    local_anywhere: bool = False
    #: who the policy is for, named in refusals ("the app", "the CLI", …)
    context: str = "untrusted input"

    # ---------------------------------------------------------------- builders

    @classmethod
    def operator(
        cls,
        settings: Settings,
        config: ProductConfig | None = None,
        *,
        extra_drivers: Sequence[str] = (),
    ) -> OpeningPolicy:
        """The CLI operator's policy: local paths anywhere, the product's drivers plus any
        named with ``--allow-driver``; URLs as for everyone (allowed prefixes, public
        addresses)."""
        return cls(
            drivers=_drivers(config, extra_drivers),
            import_dirs=parse_import_dirs(settings.import_dirs),
            allowed_sources=parse_allowed_sources(settings.allowed_sources),
            local_anywhere=True,
            context="the command line",
        )

    @classmethod
    def untrusted(
        cls,
        settings: Settings,
        config: ProductConfig | None = None,
        *,
        extra_dirs: Sequence[Path] = (),
        context: str = "untrusted input",
    ) -> OpeningPolicy:
        """The app's and remote sources' policy: the product's drivers only, local paths
        only under the import directories (and ``extra_dirs``), URLs only under allowed
        prefixes. Nothing here can be widened by the user."""
        dirs = parse_import_dirs(settings.import_dirs) + tuple(
            Path(d).resolve() for d in extra_dirs
        )
        return cls(
            drivers=_drivers(config, ()),
            import_dirs=dirs,
            allowed_sources=parse_allowed_sources(settings.allowed_sources),
            local_anywhere=False,
            context=context,
        )

    @classmethod
    def stored(cls) -> OpeningPolicy:
        """For objects geomesh wrote itself (trusted): GTiff only, local paths anywhere."""
        return cls(drivers=STORED_DRIVERS, local_anywhere=True, context="a stored object")

    # ---------------------------------------------------------------- GDAL

    def gdal_options(self) -> dict[str, str]:
        return {} if self.local_anywhere else dict(UNTRUSTED_GDAL_OPTIONS)

    @contextmanager
    def gdal_env(self) -> Iterator[None]:
        with rasterio.Env(**self.gdal_options()):
            yield

    # ---------------------------------------------------------------- the check

    def check(self, source: str, *, probe: bool = True) -> CheckedSource:
        """Refuse (``SourceNotAllowed``) or say what GDAL may open for ``source``.

        For http(s) URLs with ``probe`` the redirects are followed (each hop checked) and
        the final URL is what GDAL gets.
        """
        text = str(source)
        if not text.strip():
            raise _refuse(text, "an empty source", "give a file path or an http(s)/s3 URL")
        if _CONTROL.search(text):
            raise _refuse(
                text.encode("unicode_escape").decode(),
                "the source contains control characters",
                "give a plain file path or URL",
            )
        if text.lower().startswith("/vsi"):
            raise _refuse(
                text,
                "GDAL virtual file system paths (/vsi…) are not accepted",
                "give a file path or an http(s)/s3 URL; geomesh reads URLs itself",
            )
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            return self._check_url(text, probe=probe)
        if re.match(r"^[A-Za-z][A-Za-z0-9_+.-]*:", text) and not Path(text).exists():
            # GDAL "DRIVER:…" connection strings (GTIFF_DIR:1:x.tif, NETCDF:…, …)
            raise _refuse(
                text,
                "GDAL connection strings (NAME:…) are not accepted",
                "give a file path or an http(s)/s3 URL",
            )
        return self._check_local(text)

    def _check_local(self, text: str) -> CheckedSource:
        resolved = Path(text).expanduser().resolve()
        if str(resolved).lower().startswith("/vsi"):
            raise _refuse(text, "resolves to a GDAL virtual file system path", "rename the file")
        if not self.local_anywhere:
            if not self.import_dirs:
                raise _refuse(
                    text,
                    f"local files cannot be read from {self.context}: no import directory "
                    "is configured",
                    "an administrator can set GEOMESH_IMPORT_DIRS (':'-separated folders)",
                )
            if not any(resolved == d or d in resolved.parents for d in self.import_dirs):
                dirs = ", ".join(str(d) for d in self.import_dirs)
                raise _refuse(
                    text,
                    f"the file (resolved: {resolved}) is outside the import directories "
                    f"({dirs}); {self.context} may read local files only there",
                    "copy the file into an import directory (a symlink out of it does not count)",
                )
        return CheckedSource(source=text, gdal_path=str(resolved), local=True)

    def _match(
        self, text: str, scheme: str, host: str, port: int | None, path: str
    ) -> AllowedSource:
        for allowed in self.allowed_sources:
            if allowed.matches(scheme, host, port, path):
                return allowed
        listed = ", ".join(str(a) for a in self.allowed_sources) or "none"
        raise _refuse(
            text,
            f"{scheme}://{host} is not an allowed source (allowed prefixes: {listed})",
            "an administrator can allow a prefix in GEOMESH_ALLOWED_SOURCES "
            "(comma-separated scheme://host[:port] prefixes)",
        )

    def check_url_hop(self, url: str) -> None:
        """Refuse ``url`` unless its scheme, prefix and resolved addresses are allowed."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _refuse(url, f"not a valid URL ({exc})", "check the URL") from None
        scheme = parts.scheme.lower()
        if scheme not in URL_SCHEMES:
            raise _refuse(
                url,
                f"the {scheme}:// scheme is not accepted (only http, https and s3)",
                "give an http(s) or s3 URL, or a local file path",
            )
        host = (parts.hostname or "").lower()
        if not host:
            raise _refuse(url, "the URL has no host", "check the URL")
        allowed = self._match(url, scheme, host, port, parts.path)
        if scheme == "s3":
            return  # the endpoint is the operator's (AWS_* / GEOMESH_S3_* settings)
        explicit = allowed.address
        for ip in resolve_host(host, port or DEFAULT_PORTS[scheme]):
            if explicit is not None and ip == explicit:
                continue
            if not usable_address(ip):
                raise _refuse(
                    url,
                    f"{host} resolves to {ip}, a loopback, link-local, private or reserved address",
                    "only public addresses are read, unless GEOMESH_ALLOWED_SOURCES names "
                    "the address itself",
                )

    def _check_url(self, text: str, *, probe: bool) -> CheckedSource:
        self.check_url_hop(text)
        scheme = urlsplit(text).scheme.lower()
        if scheme == "s3":
            return CheckedSource(source=text, gdal_path=text, local=False)
        final = self.probe(text).url if probe else text
        return CheckedSource(
            source=text, gdal_path="/vsicurl/" + final, local=False, final_url=final
        )

    def probe(self, url: str) -> Probe:
        """HEAD ``url`` (a 1-byte GET where HEAD is refused), following redirects one hop
        at a time, each hop checked by :meth:`check_url_hop` before it is contacted."""
        current = url
        with httpx2.Client(
            follow_redirects=False, trust_env=False, timeout=PROBE_TIMEOUT_S, verify=_tls()
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_url_hop(current)
                resp = _head_or_range(client, current)
                if resp.is_redirect and "location" in resp.headers:
                    current = urljoin(current, resp.headers["location"])
                    continue
                if resp.status_code >= 400:
                    raise RasterError(
                        f"{_display(current)}: answered HTTP {resp.status_code}",
                        hint="check the URL is readable (signed URLs may have expired)",
                    )
                return Probe(current, resp.status_code, dict(resp.headers.items()))
        raise _refuse(url, f"more than {MAX_REDIRECTS} redirects", "give the final URL")


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every probe of the process: building one reads the system CA
    bundle (~50 ms of CPU, a fixed cost per asset otherwise); contexts are thread-safe."""
    return httpx2.create_ssl_context(trust_env=False)


def _head_or_range(client: httpx2.Client, url: str) -> httpx2.Response:
    headers = {"User-Agent": "geomesh"}
    try:
        resp = client.head(url, headers=headers)
        if resp.status_code in (403, 405, 501):
            # some stores (e.g. presigned GET URLs) refuse HEAD: ask for one byte instead
            with client.stream("GET", url, headers={**headers, "Range": "bytes=0-0"}) as r:
                return r
        return resp
    except httpx2.HTTPError as exc:
        raise RasterError(
            f"{_display(url)}: cannot reach the source ({redact(str(exc), url)[:200]})",
            hint="check the network and the URL",
        ) from None


def _drivers(config: ProductConfig | None, extra: Sequence[str]) -> tuple[str, ...]:
    base = list(config.ingestion.input_drivers) if config is not None else list(STORED_DRIVERS)
    if extra:
        with rasterio.Env() as env:
            known = set(env.drivers())
        for name in extra:
            if not _DRIVER_NAME.match(name) or name not in known:
                raise ConfigError(
                    f"--allow-driver {name!r} is not a GDAL raster driver name",
                    hint="see `gdalinfo --formats` (e.g. VRT, JP2OpenJPEG, PNG)",
                )
    return tuple(dict.fromkeys([*base, *extra]))
