"""FHIR payloads: a hub with `[mqtt] payload = "fhir"` (issue 13 part 1) sends each reading
as an HL7 FHIR R4 transaction Bundle (PHD IG), MQTT 5 Content Type `application/fhir+json`.

The backend stores it in the same `readings` table as the native payload: the whole Bundle
in `payload` (jsonb), `format` 'fhir', and the typed columns read from it. What makes it the
*same reading* as its native form, so that resends de-duplicate and the confirmation names
the hub's own ids, is `Bundle.identifier` (`urn:homehub:reading-id` | the homehub reading
id); every PHD Observation's identifier is that id plus `-{code}` (gateway/uplink/fhir.py),
which is checked too.

Lightweight structural checks, not a FHIR validator: the shape the backend relies on
(resourceType Bundle, type transaction, POST entries, Observations with identifiers, the
gateway's PhgDevice, the measuring PhdDevice, an effective time). fhir.resources would add
a large dependency and milliseconds per Bundle for checks the hub's own test suite already
makes against it and the IG's examples (tests/test_fhir.py). A Bundle that fails a check
is rejected with the reason, like a native reading that fails its schema.

`received_at` (when the hub stored the reading) is not in the Bundle unless a clock fault
brought a coincident timestamp: the column is NULL then, never a made-up time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

CONTENT_TYPE: Final = "application/fhir+json"
READING_ID_SYSTEM: Final = "urn:homehub:reading-id"
GATEWAY_ID_SYSTEM: Final = "urn:homehub:gateway-id"
OBSERVATION_ID_SYSTEM: Final = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
_PHD: Final = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
PHG_DEVICE_PROFILE: Final = _PHD + "PhgDevice"
PHD_DEVICE_PROFILE: Final = _PHD + "PhdDevice"
COINCIDENT_TIMESTAMP_PROFILE: Final = _PHD + "PhdCoincidentTimeStampObservation"
MDC_SYSTEM: Final = "urn:iso:std:iso:11073:10101"
#: The contract's reading-1 `id` limit.
MAX_ID_LENGTH: Final = 64

#: PhdDevice.specialization systemType (MDC) -> the reading's kind (the contract's enum).
#: The hub's side is gateway/uplink/fhir_codes.py SPECIALIZATIONS; a test holds them equal.
KINDS: Final[dict[str, str]] = {
    "528391": "blood_pressure",
    "528388": "pulse_oximeter",
    "528399": "weight",
    "528401": "glucose",
    "528392": "temperature",
    "528425": "heart_rate",
}


class BadBundle(ValueError):
    """Why a Bundle is rejected: a path and a rule, never a value (reasons are logged)."""


@dataclass(frozen=True, slots=True)
class BundleFacts:
    id: str
    gateway: str
    device: str
    kind: str
    measured_at: datetime
    received_at: datetime | None


def _profiles(resource: dict[str, Any]) -> list[Any]:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return profiles if isinstance(profiles, list) else []


def _identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = resource.get("identifier")
    if not isinstance(found, list):
        return []
    return [i for i in found if isinstance(i, dict)]


def _value_of(resource: dict[str, Any], system: str) -> str | None:
    for ident in _identifiers(resource):
        if ident.get("system") == system and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return None


def _moment(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise BadBundle(f"fhir: {where} is missing")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadBundle(f"fhir: {where} is not a date-time") from None
    if moment.tzinfo is None:
        raise BadBundle(f"fhir: {where} has no UTC offset")
    return moment


def bundle_facts(doc: Any) -> BundleFacts:
    """The row's facts from a hub's transaction Bundle; BadBundle(reason) if it is not one."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise BadBundle("fhir: not a Bundle (resourceType)")
    if doc.get("type") != "transaction":
        raise BadBundle("fhir: Bundle.type is not 'transaction'")
    head = doc.get("identifier")
    if not (
        isinstance(head, dict)
        and head.get("system") == READING_ID_SYSTEM
        and isinstance(head.get("value"), str)
        and 0 < len(head["value"]) <= MAX_ID_LENGTH
    ):
        raise BadBundle(f"fhir: Bundle.identifier is not a {READING_ID_SYSTEM} of 1..64 chars")
    reading_id: str = head["value"]
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        raise BadBundle("fhir: Bundle.entry is missing or empty")
    gateway = device = kind = None
    measured_at: datetime | None = None
    received_at: datetime | None = None
    observations = 0
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise BadBundle(f"fhir: entry[{n}].resource is missing its resourceType")
        request = entry.get("request")
        if not isinstance(request, dict) or request.get("method") != "POST":
            raise BadBundle(f"fhir: entry[{n}].request is not a POST (a transaction's create)")
        rtype, profiles = resource["resourceType"], _profiles(resource)
        if rtype == "Device" and PHG_DEVICE_PROFILE in profiles:
            gateway = _value_of(resource, GATEWAY_ID_SYSTEM)
        elif rtype == "Device" and PHD_DEVICE_PROFILE in profiles:
            device, kind = _phd_device(resource, n)
        elif rtype == "Observation":
            if not _identifiers(resource):
                raise BadBundle(f"fhir: entry[{n}] Observation has no identifier")
            if COINCIDENT_TIMESTAMP_PROFILE in profiles:
                # The hub's own time at storing (gateway/uplink/fhir.py): its received_at.
                received_at = _moment(resource.get("effectiveDateTime"), f"entry[{n}] effective")
                continue
            own = _value_of(resource, OBSERVATION_ID_SYSTEM)
            if own is None or not own.startswith(reading_id + "-"):
                raise BadBundle(
                    f"fhir: entry[{n}] Observation.identifier is not the reading id + '-code'"
                )
            observations += 1
            if measured_at is None:
                measured_at = _moment(
                    resource.get("effectiveDateTime"), f"entry[{n}] Observation.effectiveDateTime"
                )
    if observations == 0 or measured_at is None:
        raise BadBundle("fhir: no PHD Observation in the Bundle")
    if gateway is None:
        raise BadBundle(f"fhir: no PhgDevice with a {GATEWAY_ID_SYSTEM} identifier")
    if device is None or kind is None:
        raise BadBundle("fhir: no PhdDevice in the Bundle")
    return BundleFacts(reading_id, gateway, device, kind, measured_at, received_at)


def _phd_device(resource: dict[str, Any], n: int) -> tuple[str, str]:
    """(the device's configured id, the reading kind) from the PhdDevice."""
    names = resource.get("deviceName")
    name = next(
        (
            d.get("name")
            for d in names or []
            if isinstance(d, dict) and d.get("type") == "user-friendly-name"
        ),
        None,
    )
    if not isinstance(name, str) or not name:
        raise BadBundle(f"fhir: entry[{n}] PhdDevice has no user-friendly-name deviceName")
    for spec in resource.get("specialization") or []:
        system_type = spec.get("systemType") if isinstance(spec, dict) else None
        codings = system_type.get("coding") if isinstance(system_type, dict) else None
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict) and coding.get("system") == MDC_SYSTEM:
                kind = KINDS.get(str(coding.get("code")))
                if kind is not None:
                    return name, kind
    raise BadBundle(f"fhir: entry[{n}] PhdDevice has no specialization of a known kind")
