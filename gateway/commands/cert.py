"""Renewing the hub's client certificate over the air (issue 14 part 2).

- `cert/csr`: a new key is made on the hub (`KEY.new`, beside `[mqtt] key_file`, mode
  0600, never in a response or a log) and the CSR for it returned, subject
  CN = gateway id. A second `cert/csr` before an install replaces the pending key
  (the response says so: only the latest CSR can be installed).
- `cert/install {"certificate": PEM, "chain": PEM?}`: refused with nothing changed
  unless the certificate is for the pending key, names the hub, chains to a CA in
  `[mqtt] ca_file` (through `chain`) and is valid by the hub's clock. Then the files
  named by `[mqtt] cert_file` / `key_file` are replaced in place (the old pair kept
  as `.old`) and the uplink reconnects with them; if the broker does not take the
  new certificate within a bounded time the old pair is put back and the uplink
  reconnects with it (gateway.identity, MqttUplink.try_identity).

The response to `cert/install` can only go out on the next connection, whichever
identity made it: the request came on the connection the install ends. The
handler waits for the outcome and returns it as an ok response saying
`installed` or `rolled_back` (with the reason); that response is remembered with
the request id (persisted: the command mutates), so the broker's redelivery of the
request, unacknowledged on the old connection, gets the same answer and applies
nothing again. A backend may thus see the response twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.commands.registry import CommandRegistry, FieldError, FieldProblem
from gateway.config import MqttSection
from gateway.identity import (
    IdentityError,
    RenewalRefused,
    check_renewal,
    finish_interrupted_install,
    install_renewal,
    make_renewal_request,
)
from gateway.reading import utc_iso_ms

log = logging.getLogger(__name__)

#: try_identity(rollback, timeout_s) -> None when the broker took it, else why not
TryIdentity = Callable[[Callable[[], None], float], Awaitable[str | None]]
#: Beyond the connect timeout twice (TLS handshake, then CONNACK): closing the old
#: connection and the hop back to the loop.
TRIAL_MARGIN_S = 5.0


def _no_extra(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise FieldError([FieldProblem(f"args.{key}", "unknown key") for key in unknown])


class CertCommands:
    """`cert/csr` and `cert/install` for one hub."""

    def __init__(
        self,
        gateway_id: str,
        settings: Callable[[], MqttSection],
        try_identity: Callable[[], TryIdentity | None],
        *,
        now: Callable[[], datetime],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.gateway_id = gateway_id
        self._settings = settings
        self._try_identity = try_identity
        self._now = now
        self._on_change = on_change

    def register(self, registry: CommandRegistry) -> None:
        registry.register("cert/csr", self.csr, mutates=True)
        registry.register("cert/install", self.install, mutates=True)

    def _files(self) -> tuple[Path, Path, Path]:
        s = self._settings()
        if s.ca_file is None or s.cert_file is None or s.key_file is None:
            raise FieldError.at(
                "args",
                "the hub has no client certificate to renew ([mqtt] ca_file, cert_file and"
                " key_file)",
            )
        return s.ca_file, s.cert_file, s.key_file

    def finish_interrupted(self) -> None:
        """At start: complete an install a power cut stopped halfway (gateway.identity)."""
        s = self._settings()
        if s.cert_file is None or s.key_file is None:
            return
        try:
            if finish_interrupted_install(s.cert_file, s.key_file):
                log.warning("tls: finished installing the renewed client certificate")
        except OSError as exc:
            log.error("tls: cannot finish the interrupted certificate install: %s", exc.strerror)

    def csr(self, args: dict[str, Any]) -> dict[str, Any]:
        _no_extra(args, set())
        _, cert_file, key_file = self._files()
        try:
            request = make_renewal_request(self.gateway_id, key_file, cert_file)
        except IdentityError as exc:
            raise FieldError.at("args", str(exc)) from None
        if request.replaced:
            log.info("tls: a new pending key replaces the one of the previous cert/csr")
        else:
            log.info("tls: a new key made for renewal; waiting for cert/install")
        return {
            "csr": request.csr_pem,
            "subject": f"CN={self.gateway_id}",
            "replaced_pending": request.replaced,
        }

    async def install(self, args: dict[str, Any]) -> dict[str, Any]:
        _no_extra(args, {"certificate", "chain"})
        certificate, chain = args.get("certificate"), args.get("chain")
        if not isinstance(certificate, str) or not certificate.strip():
            raise FieldError.at("args.certificate", "must be the signed certificate, PEM")
        if chain is not None and not isinstance(chain, str):
            raise FieldError.at("args.chain", "must be PEM certificates")
        ca_file, cert_file, key_file = self._files()
        try:
            cert = check_renewal(
                self.gateway_id,
                certificate,
                chain,
                key_path=key_file,
                ca_file=ca_file,
                now=self._now(),
            )
        except RenewalRefused as exc:
            log.warning("tls: certificate install refused (%s): %s", exc.field, exc.message)
            raise FieldError.at(exc.field, exc.message) from None
        except IdentityError as exc:
            raise FieldError.at("args", str(exc)) from None
        try_identity = self._try_identity()
        if try_identity is None:
            raise FieldError.at("args", "the uplink is not running: nothing to reconnect")
        installed = install_renewal(cert, cert_path=cert_file, key_path=key_file)
        log.info("tls: new client certificate installed; reconnecting with it")
        timeout_s = 2 * self._settings().connect_timeout_s + TRIAL_MARGIN_S
        try:
            why = await try_identity(installed.rollback, timeout_s)
        finally:
            self._on_change()  # the status's tls block: whichever pair is in place
        result: dict[str, Any] = {
            "installed": why is None,
            "rolled_back": why is not None,
            "reason": why,
            "not_after": utc_iso_ms(cert.not_valid_after_utc),
        }
        return result
