"""TLS and mutual TLS for canarycast's gRPC ports and clients, from PEM files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from canarycast.files import Stamp, stamp

log = structlog.get_logger("canarycast.tls")


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class ServerTLS:
    """A server certificate and key; with `client_ca`, clients must present a
    certificate signed by it (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that follow the files: when one of them changes (cert-manager
        renewing a mounted Secret swaps all of them at once), the next handshake uses the
        new ones; connections already open keep theirs. A set that cannot be read keeps
        the last good one (logged once per change of the files)."""
        config = self._configuration()  # a missing file: ValueError naming it, at start-up
        seen = {"stamp": self._stamp()}  # the files as last looked at, loaded or refused

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            now = self._stamp()
            if now == seen["stamp"]:
                return None
            seen["stamp"] = now
            try:
                config = self._configuration()
            except ValueError as exc:
                log.warning("tls_reload_failed", cert=str(self.cert), error=str(exc))
                return None
            log.info("tls_reloaded", cert=str(self.cert))
            return config

        return grpc.dynamic_ssl_server_credentials(
            config, fetch, require_client_authentication=self.client_ca is not None
        )

    def _files(self) -> list[Path]:
        return [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])

    def _stamp(self) -> tuple[Stamp, ...]:
        return tuple(stamp(f) for f in self._files())

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as gRPC's configuration, checked first: PEM that parses, a key that
        belongs to the certificate (ValueError naming the file otherwise)."""
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        ca = _read(self.client_ca, "client CA") if self.client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ValueError(f"TLS certificate {self.cert} and key {self.key}: {exc}") from exc
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError as exc:
                raise ValueError(f"client CA {self.client_ca}: {exc}") from exc
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def channel_credentials(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Trust `ca` (default: the system roots); present `cert`/`key` for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate and its key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca else None,
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )


@dataclass(frozen=True)
class ClientTLS:
    """The client side: trust `ca` (default: the system roots); present `cert`/`key` for mTLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.ca, self.cert, self.key)


def server_tls_from_flags(
    cert: Path | None, key: Path | None, client_ca: Path | None, flags: str = "--tls"
) -> ServerTLS | None:
    """`ServerTLS` from a port's `FLAGS-cert/-key/-client-ca` flags (None: plaintext);
    a half-given pair is refused, naming the flags."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError(f"{flags}-client-ca needs {flags}-cert and {flags}-key")
        return None
    if cert is None or key is None:
        raise ValueError(f"{flags}-cert and {flags}-key go together")
    return ServerTLS(cert, key, client_ca)


def client_tls_from_flags(
    ca: Path | None, cert: Path | None, key: Path | None, flags: str = "--tls"
) -> ClientTLS | None:
    """`ClientTLS` from `FLAGS-ca/-cert/-key` (None: plaintext); checks the files now."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError(f"{flags}-cert and {flags}-key go together")
    tls = ClientTLS(ca, cert, key)
    tls.credentials()  # a missing or unreadable file is named at start-up, not on first call
    return tls
