"""A `homehub.reading/1` document as an HL7 FHIR R4 Bundle of the PHD IG (issue 13).

The store keeps the native payload; this renders it at publish time, so the same
stored reading always gives the same bytes (every resend is identical, and its
identifiers are derived from the reading id: a server recognises it).

**Bundle type: `transaction`**, not `collection`. The IG's notes for uploaders
("Profiles overview", Some Notes for Implementers of Uploaders) recommend a
transaction Bundle for a gateway that cannot wait for server answers: the
Observations reference the PHD and PHG Devices by temporary `urn:uuid:` ids inside
the Bundle, and conditional creates (`request.ifNoneExist`) keep the server free of
duplicates, both of the Devices (included every time) and of the Observations (on
`identifier`, the IG's conditional-create identifier of PhdBaseObservation). The hub
resends after every lost connection, so the server *must* be able to drop a resend;
the IG's own Bundle example is a transaction too. A backend relays it unchanged with
one `POST [base]` (after resolving the patient, below). A `collection` would leave
every backend to invent this.

**Patient.** The hub knows nothing about its patient (ARCHITECTURE.md: no patient
identifiers on the hub). The IG allows the Patient never to be uploaded by the
gateway, the backend supplying the link: `subject` is a logical reference,
`{"type": "Patient", "identifier": {"system": "urn:homehub:gateway-id", "value":
<gateway id>}}`, "the patient this hub follows", which the backend resolves.

The mapping of every kind, code and status flag is in `fhir_codes`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from gateway.reading import utc_iso_ms
from gateway.uplink import fhir_codes as fc

CONTENT_TYPE = "application/fhir+json"
# Namespace of the Bundle's temporary ids (fullUrl). Never change it: a resend would
# get other fullUrls (harmless for a server, but no longer byte-identical).
_FULL_URL_NAMESPACE = uuid.UUID("0b6f3f39-6d7e-5a61-a7a2-5d1f1b6a3e42")
#: Bundle.identifier system: the native reading id, for a backend that drops duplicates.
READING_ID_SYSTEM = "urn:homehub:reading-id"

Json = dict[str, Any]


_NAMESPACE_BYTES = _FULL_URL_NAMESPACE.bytes


def _urn(*parts: str) -> str:
    """`urn:uuid:` + uuid5(namespace, "/".join(parts)), without building UUID objects
    (the uplink makes several per publish; uuid.uuid5 costs ~3 times this)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "/".join(parts).encode()).digest()[:16])  # noqa: S324 - RFC 4122 name-based ids, not security
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# One encoder for every call (json.dumps with options builds a new one each time).
# allow_nan=False: a non-finite number must never reach the backend.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


@functools.lru_cache(maxsize=256)
def _device_urls(gateway: str, device_id: str, driver: str) -> tuple[str, str]:
    return _urn("phg", gateway), _urn("phd", gateway, device_id, driver)


def _coding(system: str, code: str, display: str | None = None) -> Json:
    coding: Json = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _absent(reason: str) -> Json:
    """A dataAbsentReason CodeableConcept (Observation.dataAbsentReason)."""
    return {"coding": [_coding(fc.DATA_ABSENT_SYSTEM, reason, fc.DATA_ABSENT_DISPLAY[reason])]}


def _absent_primitive(reason: str = "unknown") -> Json:
    """The `_element` of a primitive the hub does not know (FHIR data-absent-reason)."""
    return {"extension": [{"url": fc.DATA_ABSENT_EXTENSION, "valueCode": reason}]}


def _entry(full_url: str, resource: Json, identifier: Json) -> Json:
    """A transaction entry: a conditional create on the resource's identifier."""
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource.get("resourceType", "Observation"),
            "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}",
        },
    }


def _mdc_coding(number: int, name: str | None) -> Json:
    return _coding(fc.MDC_SYSTEM, str(number), name)


class _Reading:
    """One native reading and what the IG makes of its status flags."""

    def __init__(self, doc: Json) -> None:
        self.doc = doc
        self.id: str = doc["id"]
        self.gateway: str = doc["gateway"]
        self.kind: str = doc["kind"]
        self.device_id: str = doc["device"]["id"]
        self.driver: str = doc["device"]["driver"]
        self.phg_url, self.phd_url = _device_urls(self.gateway, self.device_id, self.driver)
        self.bits: dict[str, tuple[fc.BitsType, dict[str, fc.Bit]]] = {}
        self.conditions: list[fc.MeasurementStatus] = []
        self.clock_faults: list[str] = []
        #: issue 13: the device's clock minus the hub's, read at this connection
        self.device_offset: float | str | None = doc.get("device_clock_offset_s")
        self.notes: list[str] = []
        for flag in doc.get("status", ()):
            self._classify(flag)
        # The care plan's flags: interpretations of the value they name (fhir_codes).
        self.plan: dict[int, list[Json]] = {}
        numbers = {v["mdc"] for v in doc["values"] if v["value"] is not None}
        for flag in doc.get("flags", ()):
            self._plan_flag(flag, numbers)
        quality, source = doc.get("measured_at_quality"), doc.get("measured_at_source")
        if quality == "unsynced" and source == "hub":
            # Issue 13: the gateway stamped it with a clock not yet synchronised.
            self.notes.append(fc.UNSYNCED_NOTE)
        elif quality == "corrected" and source == "hub":
            self.notes.append(fc.CORRECTED_NOTE)

    @functools.cached_property
    def cts_url(self) -> str:
        return _urn("cts", self.id)

    @property
    def has_cts(self) -> bool:
        """A coincident timestamp goes with the reading: a clock fault, or a measured offset."""
        return bool(self.clock_faults) or self.device_offset is not None

    def _classify(self, flag: str) -> None:
        bit = fc.bit_for(self.kind, flag)
        if bit is not None:
            _, bits = self.bits.setdefault(bit.type.code, (bit.type, {}))
            bits.setdefault(bit.code, bit)  # two hub flags may name one bit
        elif flag in fc.MEASUREMENT_STATUS_FLAGS:
            condition = fc.MEASUREMENT_STATUS_FLAGS[flag]
            self.conditions.append(condition)
            if condition.note is not None:
                self.notes.append(condition.note)
        elif flag in fc.CLOCK_FLAGS:
            self.clock_faults.append(fc.CLOCK_FLAGS[flag])
        else:
            # A flag newer than this mapping: said, never silently dropped.
            self.notes.append(f"device status flag: {flag}")

    def _plan_flag(self, flag: str, numbers: set[int]) -> None:
        side, _, number = flag.partition(":")
        meaning = None
        if side in fc.PLAN_THRESHOLD and number.isdigit() and int(number) in numbers:
            target, meaning = int(number), fc.PLAN_THRESHOLD[side]
        elif flag == fc.WEIGHT_GAIN_FLAG and fc.WEIGHT_GAIN_MDC in numbers:
            target, meaning = fc.WEIGHT_GAIN_MDC, fc.WEIGHT_GAIN
        if meaning is None:
            # Newer than this mapping, or naming no value here: said, never dropped.
            self.notes.append(f"care plan flag: {flag}")
            return
        code, text = meaning
        concept = {"coding": [_coding(fc.INTERPRETATION_SYSTEM, code.code, code.display)]}
        concepts = self.plan.setdefault(target, [])
        if concept | {"text": text} not in concepts:
            concepts.append(concept | {"text": text})

    def plan_interpretations(self, value: Json) -> list[Json]:
        return self.plan.get(value["mdc"], []) if value["value"] is not None else []

    # -- the Observations' common parts ------------------------------------------------

    @property
    def status(self) -> str:
        wanted = {c.status for c in self.conditions if c.status}
        for status in ("entered-in-error", "preliminary"):
            if status in wanted:
                return status
        return "final"

    @property
    def data_absent(self) -> str | None:
        """A Measurement-Status condition that voids every value (it takes precedence)."""
        reasons = [c.data_absent for c in self.conditions if c.data_absent]
        return reasons[0] if reasons else None

    def extensions(self) -> list[Json]:
        ext: list[Json] = [
            {"url": fc.GATEWAY_DEVICE_EXTENSION, "valueReference": {"reference": self.phg_url}}
        ]
        if self.has_cts:
            ext.append(
                {
                    "url": fc.COINCIDENT_TIMESTAMP_EXTENSION,
                    "valueReference": {"reference": self.cts_url},
                }
            )
        return ext

    def observation(self, profile: str, code: Json, identifier: str, vital: bool) -> Json:
        """An Observation whose parts shared by a device's readings are left to `_shared`."""
        test_data = any(c.test_data for c in self.conditions)
        key = (self.gateway, self.phg_url, self.phd_url, profile, vital, test_data)
        obs: Json = {
            _SHARED: (*key, not self.has_cts),
            "identifier": [{"system": fc.CONDITIONAL_CREATE_SYSTEM, "value": identifier}],
            "status": "final",
            "code": code,
            "effectiveDateTime": self.doc["measured_at"],
        }
        if self.has_cts:
            obs["extension"] = self.extensions()
        return obs

    def add_conditions(self, obs: Json) -> None:
        """Measurement-Status conditions of a value Observation (IG base notes, table)."""
        obs["status"] = self.status
        codes = dict.fromkeys(c.interpretation for c in self.conditions if c.interpretation)
        if codes:
            obs["interpretation"] = [
                {"coding": [_coding(fc.MEASUREMENT_STATUS_SYSTEM, code)]} for code in codes
            ]
        if self.notes:
            obs["note"] = [{"text": note} for note in self.notes]


# The key, in an Observation under construction, of its shared parts (see _shared).
_SHARED = "_shared"
_SharedKey = tuple[str, str, str, str, bool, bool, bool]


@functools.lru_cache(maxsize=1024)
def _shared(key: _SharedKey) -> Json:
    """The parts of an Observation that all of one device's readings of a sort share."""
    gateway, phg_url, phd_url, profile, vital, test_data, with_extension = key
    meta: Json = {"profile": [profile]}
    if test_data:
        meta["security"] = [_coding(fc.ACT_REASON_SYSTEM, "HTEST", "test health data")]
    category = [{"coding": [_coding(fc.PHD_CATEGORY_SYSTEM, "phd")]}]
    if vital:
        category.append(
            {"coding": [_coding(fc.OBSERVATION_CATEGORY_SYSTEM, "vital-signs", "Vital Signs")]}
        )
    shared: Json = {"resourceType": "Observation", "meta": meta}
    if with_extension:
        shared["extension"] = [
            {"url": fc.GATEWAY_DEVICE_EXTENSION, "valueReference": {"reference": phg_url}}
        ]
    return shared | {
        "category": category,
        "subject": {
            "type": "Patient",
            "identifier": {"system": fc.GATEWAY_ID_SYSTEM, "value": gateway},
        },
        "device": {"reference": phd_url},
    }


def _expand(resource: Json) -> Json:
    if _SHARED not in resource:
        return resource
    rest = dict(resource)
    return _shared(rest.pop(_SHARED)) | rest


def _quantity(value: float, unit: str) -> Json:
    return {"value": value, "unit": unit, "system": fc.UCUM_SYSTEM, "code": unit}


def _value_code(value: Json) -> Json:
    return _code_of(value["mdc"], value["code"])


@functools.lru_cache(maxsize=256)
def _code_of(number: int, name: str) -> Json:
    coding = [_mdc_coding(number, name)]
    coding += [_coding(fc.LOINC_SYSTEM, c.code, c.display) for c in fc.LOINC.get(number, ())]
    return {"coding": coding}


class _Identifiers:
    """`<reading id>-<MDC type>`, with `-<n>` for the n-th repeat of a type (RR intervals)."""

    def __init__(self, reading_id: str) -> None:
        self._reading_id = reading_id
        self._seen: dict[str, int] = {}

    def __call__(self, code: str) -> str:
        n = self._seen.get(code, 0)
        self._seen[code] = n + 1
        return f"{self._reading_id}-{code}" + (f"-{n}" if n else "")


def _numeric(r: _Reading, value: Json, identifier: str) -> Json:
    obs = r.observation(
        fc.NUMERIC_PROFILE, _value_code(value), identifier, value["mdc"] in fc.LOINC
    )
    r.add_conditions(obs)
    reason = r.data_absent
    if reason is None and (plan := r.plan_interpretations(value)):
        obs["interpretation"] = obs.get("interpretation", []) + plan
    if reason is None and value["value"] is not None:
        obs["valueQuantity"] = _quantity(value["value"], value["unit"])
    else:
        obs["dataAbsentReason"] = _absent(reason or fc.NULL_VALUE_REASON)
    return obs


def _compound_bp(r: _Reading, parts: list[Json], identifier: str) -> Json:
    code = {
        "coding": [
            _mdc_coding(int(fc.PRESS_BLD_NONINV.code), fc.PRESS_BLD_NONINV.display),
            _coding(fc.LOINC_SYSTEM, fc.BP_PANEL_LOINC.code, fc.BP_PANEL_LOINC.display),
        ]
    }
    obs = r.observation(fc.COMPOUND_NUMERIC_PROFILE, code, identifier, vital=True)
    r.add_conditions(obs)
    reason = r.data_absent
    if reason is not None:
        # IG: no components when the Measurement-Status says the measurement failed.
        obs["dataAbsentReason"] = _absent(reason)
        return obs
    components = []
    for value in parts:
        component: Json = {"code": _value_code(value)}
        if value["value"] is None:
            component["dataAbsentReason"] = _absent(fc.NULL_VALUE_REASON)
        else:
            component["valueQuantity"] = _quantity(value["value"], value["unit"])
        if plan := r.plan_interpretations(value):
            component["interpretation"] = plan
        components.append(component)
    obs["component"] = components
    return obs


def _bits(r: _Reading, kind: fc.BitsType, bits: Iterable[fc.Bit], derived: str) -> Json:
    code = {"coding": [_mdc_coding(int(kind.code), kind.display)]}
    obs = r.observation(fc.BITS_PROFILE, code, f"{r.id}-{kind.code}", vital=False)
    obs["derivedFrom"] = [{"reference": derived}]
    obs["component"] = [
        {"code": {"coding": [_coding(fc.ASN1_SYSTEM, b.code, b.display)]}, "valueBoolean": True}
        for b in sorted(bits, key=lambda b: b.bit)
    ]
    return obs


def device_time(received_at: str, offset_s: float) -> str:
    """The device's clock when the hub's read `received_at`: that plus the measured offset."""
    return utc_iso_ms(datetime.fromisoformat(received_at) + timedelta(seconds=offset_s))


def _coincident_timestamp(r: _Reading) -> Json:
    """The PHD IG's coincident timestamp: the device's clock against the gateway's.

    A clock fault: the device's time cannot be trusted, so the value is absent (as in the
    IG's coin-example-timefault). Otherwise the offset the hub measured at this
    connection (issue 13 part 2, `device_clock_offset_s`): `effectiveDateTime` is the
    hub's time, `valueDateTime` the device's at that moment (the IG's coin-example).
    """
    code = {"coding": [_mdc_coding(int(fc.ATTR_TIME_ABS.code), fc.ATTR_TIME_ABS.display)]}
    cts: Json = {
        "resourceType": "Observation",
        "meta": {"profile": [fc.COINCIDENT_TIMESTAMP_PROFILE]},
        "identifier": [{"system": fc.URI_SYSTEM, "value": r.cts_url}],
        "status": "final",
        "code": code,
        "subject": {"reference": r.phd_url},
        "effectiveDateTime": r.doc["received_at"],
    }
    if r.clock_faults or not isinstance(r.device_offset, int | float):
        if r.clock_faults:
            absent = _absent("unknown")
            absent["text"] = "; ".join(dict.fromkeys(r.clock_faults))
            cts["dataAbsentReason"] = absent
        else:  # a template's placeholder (see _template_doc)
            cts["valueDateTime"] = r.device_offset
    else:
        cts["valueDateTime"] = device_time(r.doc["received_at"], r.device_offset)
    cts["device"] = {"reference": r.phg_url}
    return cts


def _specializations() -> list[Json]:
    return [
        {"systemType": {"coding": [_coding(fc.MDC_SYSTEM, spec.code, spec.display)]}}
        for spec in fc.SPECIALIZATIONS.values()
    ]


def _phg_device(gateway: str, version: str, quality: str | None) -> Json:
    """The hub itself (PhgDevice): system id, software version, time synchronisation
    (method, and whether its clock was synchronised when it stored the reading)."""
    device: Json = {
        "resourceType": "Device",
        "meta": {"profile": [fc.PHG_DEVICE_PROFILE]},
        "identifier": [{"system": fc.GATEWAY_ID_SYSTEM, "value": gateway}],
        "manufacturer": "homehub",
        "modelNumber": "homehub",
        "type": {"coding": [_coding(fc.MDC_SYSTEM, fc.MDS_AHD.code, fc.MDS_AHD.display)]},
        "specialization": _specializations(),
        "version": [
            {
                "type": {"coding": [_coding(fc.MDC_SYSTEM, *_pair(fc.ID_PROD_SPEC_SW))]},
                "value": version,
            }
        ],
        "property": [
            {
                "type": {"coding": [_coding(fc.MDC_SYSTEM, *_pair(fc.TIME_SYNC_PROTOCOL))]},
                "valueCode": [{"coding": [_coding(fc.MDC_SYSTEM, *_pair(fc.TIME_SYNC_SNTP))]}],
            }
        ],
    }
    if quality in ("synced", "unsynced", "corrected"):
        # "corrected": the clock is synchronised now, and the reading's time was set by it.
        device["property"].append(
            {
                "type": {"coding": [_coding(fc.ASN1_SYSTEM, *_pair(fc.CLOCK_ABS_TIME_SYNCED))]},
                "valueCode": [{"coding": [_yes_no(quality != "unsynced")]}],
            }
        )
    return device


def _yes_no(yes: bool) -> Json:
    return _coding(fc.YES_NO_SYSTEM, "Y", "Yes") if yes else _coding(fc.YES_NO_SYSTEM, "N", "No")


def _pair(code: fc.Code) -> tuple[str, str]:
    return code.code, code.display


def _phd_device(r: _Reading, version: str) -> Json:
    """The measuring device (PhdDevice), as far as the hub knows it."""
    manufacturer, model = fc.DRIVER_DEVICES.get(r.driver, (None, None))
    device: Json = {
        "resourceType": "Device",
        "meta": {"profile": [fc.PHD_DEVICE_PROFILE]},
        "identifier": [
            {"system": fc.DEVICE_ID_SYSTEM, "value": f"{r.gateway}/{r.device_id}/{r.driver}"}
        ],
    }
    if manufacturer is None:
        device["_manufacturer"] = _absent_primitive()
    else:
        device["manufacturer"] = manufacturer
    if model is None:
        device["_modelNumber"] = _absent_primitive()
    else:
        device["modelNumber"] = model
    spec = fc.SPECIALIZATIONS[r.kind]
    software = r.driver == "simulated"  # the simulated device is the hub's own software
    device |= {
        "deviceName": [{"name": r.device_id, "type": "user-friendly-name"}],
        "type": {"coding": [_coding(fc.MDC_SYSTEM, fc.MDS_SIMP.code, fc.MDS_SIMP.display)]},
        "specialization": [
            {
                "systemType": {"coding": [_coding(fc.MDC_SYSTEM, spec.code, spec.display)]},
                "_version": _absent_primitive(),
            }
        ],
        "version": [
            {
                "type": {
                    "coding": [
                        _coding(
                            fc.MDC_SYSTEM,
                            *_pair(fc.ID_PROD_SPEC_SW if software else fc.ID_PROD_SPEC_FW),
                        )
                    ]
                },
                **({"value": version} if software else {"_value": _absent_primitive()}),
            }
        ],
    }
    if r.doc.get("measured_at_source") == "device":
        # Its own clock stamped the reading (PhdDevice.property[clockBitProperty]).
        device["property"] = [
            {
                "type": {"coding": [_coding(fc.ASN1_SYSTEM, *_pair(fc.CLOCK_REAL_TIME))]},
                "valueCode": [{"coding": [_yes_no(True)]}],
            }
        ]
    return device


def _device_entries(r: _Reading, version: str) -> list[Json]:
    phg = _phg_device(r.gateway, version, r.doc.get("measured_at_quality"))
    phd = _phd_device(r, version)
    return [
        _entry(r.phg_url, phg, phg["identifier"][0]),
        _entry(r.phd_url, phd, phd["identifier"][0]),
    ]


def _observation_entries(r: _Reading) -> list[Json]:
    """The Observation entries in Bundle order."""
    doc = r.doc
    entries: list[Json] = []
    if r.has_cts:
        cts = _coincident_timestamp(r)
        entries.append(_entry(r.cts_url, cts, cts["identifier"][0]))
    identifiers = _Identifiers(r.id)
    observations: list[Json] = []
    urls: list[str] = []
    values: list[Json] = list(doc["values"])
    compound = [v for v in values if v["mdc"] in fc.BP_COMPONENTS]
    if r.kind == "blood_pressure" and compound:
        urls.append(_urn("obs", r.id, "0"))
        observations.append(_compound_bp(r, compound, identifiers(fc.PRESS_BLD_NONINV.code)))
        values = [v for v in values if v["mdc"] not in fc.BP_COMPONENTS]
    for v in values:
        urls.append(_urn("obs", r.id, str(len(observations))))
        observations.append(_numeric(r, v, identifiers(str(v["mdc"]))))
    for kind, bits in r.bits.values():
        observations.append(_bits(r, kind, bits.values(), derived=urls[0]))
        urls.append(_urn("obs", r.id, kind.code))
    for url, obs in zip(urls, observations, strict=True):
        entries.append(_entry(url, _expand(obs), obs["identifier"][0]))
    return entries


def _bundle_head(reading_id: str) -> Json:
    return {
        "resourceType": "Bundle",
        "identifier": {"system": READING_ID_SYSTEM, "value": reading_id},
        "type": "transaction",
    }


def reading_bundle(doc: Json, *, version: str) -> Json:
    """The transaction Bundle for one `homehub.reading/1` document (the reference)."""
    r = _Reading(doc)
    entries = _device_entries(r, version) + _observation_entries(r)
    return {**_bundle_head(r.id), "entry": entries}


# -- the fast render: one template per shape of reading ---------------------------------
#
# A Bundle depends on a reading's *shape* (gateway, device, driver, kind, clock source and
# quality, status flags, and per value its MDC code, name, unit and whether it is null),
# and, within a shape, only on the reading id (identifiers, and the urn:uuid fullUrls
# derived from it), the two timestamps and the numbers. So the reference Bundle is built
# once per shape from a document whose variable parts are placeholders, encoded, and cut
# at the placeholders into a str.format template; a reading then costs its JSON decode,
# its shape, its fullUrls' SHA-1s and one format (issue 13: the drain renders every
# publish on the event loop). A device's readings have a handful of shapes.

#: Marks a placeholder (a private-use character: no id, code or unit holds it, and
#: a shape that does is rendered whole). JSON-encoded (ASCII) it is `\\ue000`.
_MARK = "\ue000"
_MARK_JSON = _string(_MARK)[1:-1]

_ValueShape = tuple[int, str, str, bool]  # mdc, code (its name), unit, value is null
_Shape = tuple[
    str,
    str,
    str,
    str,
    str | None,
    str | None,
    tuple[str, ...],
    tuple[_ValueShape, ...],
    tuple[str, ...],
    bool,  # a measured device clock offset (a coincident timestamp with a value)
]


def _shape(doc: Json) -> _Shape:
    device = doc["device"]
    return (
        doc["gateway"],
        device["id"],
        device["driver"],
        doc["kind"],
        doc.get("measured_at_source"),
        doc.get("measured_at_quality"),
        tuple(doc.get("status", ())),
        tuple((v["mdc"], v["code"], v["unit"], v["value"] is None) for v in doc["values"]),
        tuple(doc.get("flags", ())),
        "device_clock_offset_s" in doc,
    )


def _placeholder(name: str) -> str:
    return f"{_MARK}{name}{_MARK}"


def _template_doc(shape: _Shape, reading_id: str) -> Json:
    """A native document of this shape, its variable parts placeholders."""
    gateway, device_id, driver, kind, source, quality, status, values, flags, offset = shape
    doc: Json = {
        "flags": list(flags),
        "id": reading_id,
        "gateway": gateway,
        "kind": kind,
        "device": {"id": device_id, "driver": driver},
        "measured_at": _placeholder("t"),
        "measured_at_source": source,
        "measured_at_quality": quality,
        "received_at": _placeholder("r"),
        "status": list(status),
        "values": [
            {
                "mdc": number,
                "code": code,
                "unit": unit,
                "value": None if null else _placeholder(f"v{i}"),
            }
            for i, (number, code, unit, null) in enumerate(values)
        ],
    }
    if offset:
        doc["device_clock_offset_s"] = _placeholder("c")
    return doc


class _Template:
    """One shape's Bundle cut at its variable parts, and the fullUrls it needs.

    `pieces` alternates literal text and field names (odd indexes); a render puts each
    field's text in its place and joins (str.format would parse 5 KB on every call).
    """

    __slots__ = ("fields", "pieces", "urns")

    def __init__(self, text: str, urns: tuple[tuple[str, str], ...]) -> None:
        pieces: list[str] = []
        literal = ""
        for text_part, field, _, _ in string.Formatter().parse(text):
            literal += text_part  # "{{" comes as a literal of its own
            if field is not None:
                pieces += [literal, field]
                literal = ""
        pieces.append(literal)
        self.pieces = pieces
        self.fields = tuple(pieces[1::2])
        self.urns = urns  # (field, urn kind/suffix) for `_urn(kind, reading id, suffix)`


def _build_template(shape: _Shape, version: str, reading_id: str) -> _Template | None:
    doc = _template_doc(shape, reading_id)
    r = _Reading(doc)
    # Every fullUrl derived from the reading id (see _observation_entries, cts_url).
    suffixes = [str(i) for i in range(len(shape[7]) + 1)] + list(r.bits)
    candidates = {_urn("cts", reading_id): ("u_cts", "cts")}
    candidates |= {_urn("obs", reading_id, s): (f"u_{s}", s) for s in suffixes}
    text = _dumps(reading_bundle(doc, version=version)).replace("{", "{{").replace("}", "}}")
    urns = []
    for urn, (field, suffix) in candidates.items():
        if urn in text:
            text = text.replace(urn, f"{{{field}}}")
            urns.append((field, suffix))
    for i in range(len(shape[7])):
        text = text.replace(f'"{_MARK_JSON}v{i}{_MARK_JSON}"', f"{{v{i}}}")
    id_json = _string(reading_id)[1:-1]
    text = text.replace(id_json, "{id}")
    for name in ("t", "r", "c"):
        text = text.replace(f"{_MARK_JSON}{name}{_MARK_JSON}", f"{{{name}}}")
    if _MARK_JSON in text:
        return None  # a placeholder in a place this does not know: no template
    return _Template(text, tuple(urns))


@functools.lru_cache(maxsize=512)
def _template(shape: _Shape, version: str) -> _Template | None:
    """The shape's template, or None (render it whole) when the shape is unsafe to cut:
    a constant part holding the mark, or a variable part the cut missed (checked by
    building it for two reading ids: they must give the same template)."""
    gateway, device_id, driver, kind, source, quality, status, values, flags, _ = shape
    constants = [gateway, device_id, driver, kind, source or "", quality or "", *status, *flags]
    constants += [f"{code}{unit}" for _, code, unit, _ in values]
    if any(_MARK in c for c in constants):
        return None
    first = _build_template(shape, version, _placeholder("id"))
    second = _build_template(shape, version, _placeholder("other-id"))
    if first is None or second is None or first.pieces != second.pieces:
        return None
    if first.urns != second.urns:
        return None
    return first


def _number(value: Any) -> str:
    """A value as json.dumps writes it (allow_nan=False), faster for the usual float."""
    if type(value) is float and value - value == 0.0:  # finite
        return float.__repr__(value)
    if type(value) is int:
        return int.__repr__(value)
    return _dumps(value)


def render_fhir(payload: bytes, *, version: str) -> bytes:
    """Stored `homehub.reading/1` bytes -> FHIR JSON bytes (compact UTF-8).

    The same document as `json.dumps(reading_bundle(...))` (tests check that the two
    agree for every kind and flag), filled into its shape's template.
    """
    doc = json.loads(payload)
    template = _template(_shape(doc), version)
    if template is None:
        return _dumps(reading_bundle(doc, version=version)).encode()
    rid: str = doc["id"]
    fields = {
        "id": _string(rid)[1:-1],
        "t": _string(doc["measured_at"])[1:-1],
        "r": _string(doc.get("received_at", ""))[1:-1],
    }
    if "device_clock_offset_s" in doc:
        offset = doc["device_clock_offset_s"]
        fields["c"] = _string(device_time(doc["received_at"], offset))[1:-1]
    for i, value in enumerate(doc["values"]):
        if value["value"] is not None:
            fields[f"v{i}"] = _number(value["value"])
    for field, kind in template.urns:
        fields[field] = _urn(kind, rid) if kind == "cts" else _urn("obs", rid, kind)
    pieces = template.pieces.copy()
    pieces[1::2] = [fields[f] for f in template.fields]
    return "".join(pieces).encode()
