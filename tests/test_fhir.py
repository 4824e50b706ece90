"""`[mqtt] payload = "fhir"`: FHIR R4 Bundles of the HL7 PHD IG (issue 13, part 1).

Structure is checked with fhir.resources (its R4B models); codes, systems and profile
URLs against facts copied from the IG's source (github.com/HL7/phd, STU 2):
input/fsh/*.fsh and the examples named at each test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from fhir.resources.R4B.bundle import Bundle
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import mdc
from gateway.drivers.ble.profiles import blood_pressure, glucose, nonin, plx
from gateway.events import EventBus
from gateway.mdc import MdcCode, Ucum
from gateway.reading import Kind, Reading, Value, reading_id
from gateway.sim.broker import MosquittoBroker
from gateway.uplink import fhir, fhir_codes
from gateway.uplink.fhir import reading_bundle, render_fhir
from gateway.uplink.mqtt import _publish_properties, _publish_size, _render
from gateway.uplink.payload import encode_reading
from gateway.uplink.render import renderer_for
from tests.helpers import load, running_hub, sim_device, write_config

# -- facts from the IG ---------------------------------------------------------------------

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
IG = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
NUMERIC = IG + "PhdNumericObservation"
COMPOUND = IG + "PhdCompoundNumericObservation"
BITS = IG + "PhdBitsEnumerationObservation"
CTS = IG + "PhdCoincidentTimeStampObservation"
GATEWAY_EXT = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
CONDITIONAL = IG + "PhdBaseObservation"  # identifier[conditionalCreate].system
# MDC code -> LOINC codes: compound-numeric-blood-pressure.json, bundle-example-1.json,
# numeric-spotnumeric.json, temperature-observation.json; FHIR R4 vital-signs profiles.
EXPECTED_LOINC = {
    150020: {"85354-9"},
    150021: {"8480-6"},
    150022: {"8462-4"},
    150023: {"8478-0"},
    149546: {"8867-4"},
    149530: {"8867-4"},
    147842: {"8867-4"},
    150456: {"59408-5", "2708-6"},
    188736: {"29463-7"},
    188740: {"8302-2"},
    188752: {"39156-5"},
    150364: {"8310-5"},
}
WHEN = datetime(2026, 11, 22, 9, 14, 3, tzinfo=timezone(timedelta(hours=1)))
RECEIVED = datetime(2026, 11, 22, 8, 14, 5, 123000, tzinfo=UTC)


def reading(
    kind: Kind,
    values: list[tuple[MdcCode, float | None, str]],
    status: tuple[str, ...] = (),
    driver: str = "simulated",
    source: str = "device",
) -> Reading:
    return Reading(
        device_id="dev-1",
        driver=driver,
        kind=kind,
        measured_at=WHEN,
        measured_at_source=source,  # type: ignore[arg-type]
        values=tuple(Value.of(c, v, u) for c, v, u in values),
        status=status,
        source_key="rec-1",
    )


def stored(r: Reading, flags: tuple[str, ...] = ()) -> bytes:
    return encode_reading(
        r,
        reading_id=reading_id("hub-test", r),
        gateway_id="hub-test",
        received_at=RECEIVED,
        flags=flags,
    )


def bundle_of(r: Reading, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    out = render_fhir(stored(r, flags), version="0.1.0")
    Bundle.model_validate_json(out)  # FHIR structure: raises on any error
    doc: dict[str, Any] = json.loads(out)
    return doc


def observations(bundle: dict[str, Any], profile: str | None = None) -> list[dict[str, Any]]:
    found = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    return [o for o in found if profile is None or o["meta"]["profile"] == [profile]]


def full_url(bundle: dict[str, Any], profile: str) -> str:
    """The fullUrl of the (first) entry with this profile."""
    url: str = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["meta"]["profile"] == [profile]
    )
    return url


def codes(concept: dict[str, Any], system: str) -> set[str]:
    return {c["code"] for c in concept["coding"] if c["system"] == system}


BP = [
    (mdc.PRESS_BLD_NONINV_SYS, 133.0, Ucum.MMHG),
    (mdc.PRESS_BLD_NONINV_DIA, 91.0, Ucum.MMHG),
    (mdc.PRESS_BLD_NONINV_MEAN, 105.0, Ucum.MMHG),
    (mdc.PULS_RATE_NON_INV, 75.0, Ucum.PER_MIN),
]
EVERY_KIND: dict[Kind, list[tuple[MdcCode, float | None, str]]] = {
    Kind.BLOOD_PRESSURE: BP,
    Kind.PULSE_OXIMETER: [
        (mdc.PULS_OXIM_SAT_O2, 96.0, Ucum.PERCENT),
        (mdc.PULS_OXIM_PULS_RATE, 71.0, Ucum.PER_MIN),
    ],
    Kind.WEIGHT: [
        (mdc.MASS_BODY_ACTUAL, 81.9, Ucum.KG),
        (mdc.RATIO_MASS_BODY_LEN_SQ, 25.3, Ucum.KG_PER_M2),
        (mdc.LEN_BODY_ACTUAL, 1.8, Ucum.M),
    ],
    Kind.GLUCOSE: [(mdc.CONC_GLU_CAPILLARY_PLASMA, 7.2, Ucum.MMOL_PER_L)],
    Kind.TEMPERATURE: [(mdc.TEMP_BODY, 36.9, Ucum.CEL)],
    Kind.HEART_RATE: [
        (mdc.ECG_HEART_RATE, 64.0, Ucum.PER_MIN),
        (mdc.ECG_TIME_PD_RR_GL, 937.5, Ucum.MS),
        (mdc.ECG_TIME_PD_RR_GL, 941.406, Ucum.MS),
    ],
}


@pytest.mark.parametrize("kind", list(EVERY_KIND), ids=lambda k: k.value)
def test_every_kind_is_a_valid_transaction_bundle_with_the_igs_codes(kind: Kind) -> None:
    r = reading(kind, EVERY_KIND[kind])
    bundle = bundle_of(r)
    assert bundle["type"] == "transaction"
    devices = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    profiles = {d["meta"]["profile"][0] for d in devices}
    assert profiles == {IG + "PhdDevice", IG + "PhgDevice"}
    phg = next(d for d in devices if d["meta"]["profile"] == [IG + "PhgDevice"])
    phd = next(d for d in devices if d["meta"]["profile"] == [IG + "PhdDevice"])
    assert codes(phg["type"], MDC) == {"531981"}  # MDC_MOC_VMS_MDS_AHD (PhgDevice.fsh)
    assert codes(phd["type"], MDC) == {"65573"}  # MDC_MOC_VMS_MDS_SIMP (PhdDevice.fsh)
    urls = {e["resource"]["meta"]["profile"][0]: e["fullUrl"] for e in bundle["entry"]}
    obs = observations(bundle)
    measured = []
    for o in obs:
        # Every Observation: PHD category, the gateway extension to the PHG Device,
        # the PHD Device, the conditional-create identifier (PhdBaseObservation.fsh).
        assert {"system": fhir_codes.PHD_CATEGORY_SYSTEM, "code": "phd"} in [
            c for cat in o["category"] for c in cat["coding"]
        ]
        assert o["extension"][0] == {
            "url": GATEWAY_EXT,
            "valueReference": {"reference": urls[IG + "PhgDevice"]},
        }
        assert o["device"] == {"reference": urls[IG + "PhdDevice"]}
        assert o["identifier"][0]["system"] == CONDITIONAL
        assert o["effectiveDateTime"] == "2026-11-22T09:14:03+01:00"
        (number,) = codes(o["code"], MDC)
        measured.append(int(number))
        assert codes(o["code"], LOINC) == EXPECTED_LOINC.get(int(number), set())
        vital = {"system": fhir_codes.OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs"}
        is_vital = any(
            {k: c[k] for k in ("system", "code")} == vital
            for cat in o["category"]
            for c in cat["coding"]
        )
        assert is_vital == (int(number) in EXPECTED_LOINC)
        if o["meta"]["profile"] == [NUMERIC]:
            quantity = o["valueQuantity"]
            assert quantity["system"] == UCUM and quantity["code"] == quantity["unit"]
    expected = [c.number for c, _, _ in EVERY_KIND[kind]]
    if kind is Kind.BLOOD_PRESSURE:
        expected = [150020, mdc.PULS_RATE_NON_INV.number]  # the compound, then the pulse
    assert measured == expected
    # Each entry a conditional create on its identifier (IG: Notes for uploaders).
    for entry in bundle["entry"]:
        ident = entry["resource"]["identifier"][0]
        assert entry["request"] == {
            "method": "POST",
            "url": entry["resource"]["resourceType"],
            "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
        }


def test_blood_pressure_is_one_compound_with_the_igs_components() -> None:
    """compound-numeric-blood-pressure.json: 150020 + 85354-9; components 150021-150023."""
    (compound,) = observations(bundle_of(reading(Kind.BLOOD_PRESSURE, BP)), COMPOUND)
    assert codes(compound["code"], MDC) == {"150020"}
    assert codes(compound["code"], LOINC) == {"85354-9"}
    assert "valueQuantity" not in compound
    assert [(codes(c["code"], MDC), c["valueQuantity"]) for c in compound["component"]] == [
        ({"150021"}, {"value": 133.0, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}),
        ({"150022"}, {"value": 91.0, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}),
        ({"150023"}, {"value": 105.0, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}),
    ]


@pytest.mark.parametrize("code", [c for c in mdc.ALL_CODES], ids=lambda c: c.name)
def test_every_mdc_code_the_hub_knows_renders(code: MdcCode) -> None:
    kind = Kind.TEMPERATURE if code.name.startswith("MDC_TEMP") else Kind.GLUCOSE
    (obs,) = observations(bundle_of(reading(kind, [(code, 1.5, "1")])))
    assert obs["code"]["coding"][0] == {
        "system": MDC,
        "code": str(code.number),
        "display": code.name,
    }


def test_not_available_values_are_data_absent_never_a_number() -> None:
    """FLOATS.md: a special value fills dataAbsentReason and leaves value[x] out."""
    absent = (mdc.PRESS_BLD_NONINV_DIA, mdc.PULS_RATE_NON_INV)
    bp = [(c, None if c in absent else v, u) for c, v, u in BP]
    bundle = bundle_of(reading(Kind.BLOOD_PRESSURE, bp))
    (compound,) = observations(bundle, COMPOUND)
    dia = compound["component"][1]
    assert "valueQuantity" not in dia
    assert codes(dia["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"error"}
    (pulse,) = observations(bundle, NUMERIC)
    assert "valueQuantity" not in pulse
    assert codes(pulse["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"error"}
    # The scale's "measurement unsuccessful" (weight null) says so too.
    scale = reading(
        Kind.WEIGHT, [(mdc.MASS_BODY_ACTUAL, None, "kg")], ("measurement_unsuccessful",)
    )
    (weight,) = observations(bundle_of(scale))
    assert "valueQuantity" not in weight and "note" not in weight
    assert codes(weight["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"error"}


def test_measurement_status_follows_the_igs_table() -> None:
    """PhdBaseObservation notes, Measurement Status table."""
    spo2 = [(mdc.PULS_OXIM_SAT_O2, 96.0, "%"), (mdc.PULS_OXIM_PULS_RATE, 71.0, "/min")]

    def obs(*flags: str) -> dict[str, Any]:
        return observations(bundle_of(reading(Kind.PULSE_OXIMETER, spo2, flags)))[0]

    unavailable = obs("measurement_unavailable")
    assert "valueQuantity" not in unavailable
    assert codes(unavailable["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {
        "not-performed"
    }
    invalid = obs("invalid_measurement")
    assert invalid["status"] == "entered-in-error" and "valueQuantity" not in invalid
    assert codes(invalid["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"error"}
    early = obs("early_estimate", "questionable_measurement")
    assert early["status"] == "preliminary" and early["valueQuantity"]["value"] == 96.0
    assert [codes(i, fhir_codes.MEASUREMENT_STATUS_SYSTEM) for i in early["interpretation"]] == [
        {"early-indication"},
        {"questionable"},
    ]
    test = obs("testing_data")
    assert test["meta"]["security"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "HTEST",
            "display": "test health data",
        }
    ]
    assert obs()["status"] == "final" and "interpretation" not in obs()


def test_status_bits_are_bits_enumeration_observations() -> None:
    """bpm-status.json (8410608.0 body-movement, .5 improper-body-position) and
    bits-observation.json (150604.2 sensor-displaced, .10 signal-low-perfusion)."""
    bp = bundle_of(reading(Kind.BLOOD_PRESSURE, BP, ("body_movement", "improper_position")))
    (bits,) = observations(bp, BITS)
    (compound,) = observations(bp, COMPOUND)
    assert codes(bits["code"], MDC) == {"8410608"}
    assert [(c["code"]["coding"][0]["code"], c["valueBoolean"]) for c in bits["component"]] == [
        ("8410608.0", True),
        ("8410608.5", True),
    ]
    compound_url = full_url(bp, COMPOUND)
    assert bits["derivedFrom"] == [{"reference": compound_url}]
    assert "component" in compound and "note" not in compound
    ox = reading(
        Kind.PULSE_OXIMETER,
        [(mdc.PULS_OXIM_SAT_O2, 96.0, "%")],
        ("sensor_displaced", "low_perfusion"),
    )
    (bits,) = observations(bundle_of(ox), BITS)
    assert codes(bits["code"], MDC) == {"150604"}
    assert [c["code"]["coding"][0]["code"] for c in bits["component"]] == ["150604.2", "150604.10"]


# Every status flag the hub's decoders and drivers produce (issue 13: each maps to the IG).
EVERY_FLAG: dict[Kind, set[str]] = {
    Kind.BLOOD_PRESSURE: {
        *blood_pressure._STATUS_BITS.values(),
        *blood_pressure._PULSE_RANGE.values(),
        "device_clock_ahead",
    },
    Kind.PULSE_OXIMETER: {
        *plx.MEASUREMENT_STATUS.values(),
        *plx.DEVICE_SENSOR_STATUS.values(),
        # Nonin 3230 (ble/live.py keeps these two), Nonin and Contec serial (nonin_proto).
        *(set(nonin.STATUS_BITS.values()) & {"weak_signal", "low_battery"}),
        "low_perfusion",
        "marginal_perfusion",
        "artifact",
        "device_clock_ahead",
    },
    Kind.GLUCOSE: {*glucose.SENSOR_STATUS.values(), "control_solution", "device_clock_ahead"},
    Kind.WEIGHT: {"measurement_unsuccessful", "device_clock_ahead"},
    Kind.TEMPERATURE: {"device_clock_ahead"},
    Kind.HEART_RATE: {"no_skin_contact"},
}


@pytest.mark.parametrize("kind", list(EVERY_FLAG), ids=lambda k: k.value)
def test_every_status_flag_maps_to_the_ig(kind: Kind) -> None:
    for flag in sorted(EVERY_FLAG[kind]):
        bundle = bundle_of(reading(kind, EVERY_KIND[kind][:1], (flag,)))
        resources = [e["resource"] for e in bundle["entry"]]
        notes = [n["text"] for r in resources for n in r.get("note", [])]
        # Only two flags have no IG element and are said in a note, by name.
        assert not any(n.startswith("device status flag") for n in notes), flag
        bits = observations(bundle, BITS)
        cts = observations(bundle, CTS)
        obs = observations(bundle)[len(cts)]
        mapped = (
            bool(bits)
            or bool(cts)
            or obs["status"] != "final"
            or "interpretation" in obs
            or "security" in obs["meta"]
            or "dataAbsentReason" in obs
            or bool(notes)
        )
        assert mapped, flag
        for b in bits:
            for component in b["component"]:
                code = component["code"]["coding"][0]
                assert code["system"] == fhir_codes.ASN1_SYSTEM
                assert code["code"].startswith(b["code"]["coding"][0]["code"] + ".")


def _renders_as_the_reference(payload: bytes) -> None:
    doc = json.loads(payload)
    # A template exists for the shape (else render_fhir encodes the reference whole).
    assert fhir._template(fhir._shape(doc), "0.1.0") is not None
    reference = reading_bundle(doc, version="0.1.0")
    assert json.loads(render_fhir(payload, version="0.1.0")) == reference


@pytest.mark.parametrize("kind", list(EVERY_FLAG), ids=lambda k: k.value)
def test_the_fast_render_is_the_reference_bundle(kind: Kind) -> None:
    """render_fhir fills a per-shape template; it must say exactly what reading_bundle
    builds, for every reading of the shape (the template is cached from the first)."""
    nulls = [(c, None, u) for c, _, u in EVERY_KIND[kind]]
    for flags in [(), tuple(sorted(EVERY_FLAG[kind])), ("testing_data", "device_clock_ahead")]:
        for source in ("device", "hub"):
            for values in (EVERY_KIND[kind], nulls[:1] + EVERY_KIND[kind][1:]):
                r = reading(kind, values, flags, source=source)
                _renders_as_the_reference(stored(r))
                # Same shape, other id, time, numbers (an int too) and quality.
                other = r.model_copy(
                    update={
                        "source_key": "rec-2",
                        "measured_at": WHEN + timedelta(seconds=1, microseconds=7),
                        "values": tuple(
                            v.model_copy(update={"value": None if v.value is None else i + 0.1 * i})
                            for i, v in enumerate(r.values)
                        ),
                    }
                )
                _renders_as_the_reference(stored(other))
        _renders_as_the_reference(stored(reading(kind, nulls, flags)))


def test_the_template_fills_any_id_time_and_number_exactly() -> None:
    """Escaping and number spelling as json.dumps, and a fullUrl of each reading's own."""
    base = json.loads(stored(reading(Kind.BLOOD_PRESSURE, BP, ("body_movement",))))
    first = render_fhir(json.dumps(base).encode(), version="1")
    doc = dict(base, id='id "quoted" \\ é', measured_at="2026-11-22T09:14:03.5+01:00")
    doc["values"] = [
        dict(v, value=n) for v, n in zip(base["values"], [120, 1e-07, 3e20, -0.0], strict=True)
    ]
    payload = json.dumps(doc).encode()
    assert json.loads(render_fhir(payload, version="1")) == reading_bundle(doc, version="1")
    urls = [
        json.loads(b)["entry"][2]["fullUrl"] for b in (first, render_fhir(payload, version="1"))
    ]
    assert urls[0] != urls[1]
    with pytest.raises(ValueError):  # never a non-finite number on the wire
        render_fhir(payload.replace(b"120", b"NaN"), version="1")


def test_a_shape_holding_the_placeholder_mark_is_rendered_whole() -> None:
    doc = json.loads(stored(reading(Kind.TEMPERATURE, [(mdc.TEMP_BODY, 36.9, "Cel")])))
    doc["device"]["id"] = "dev\ue000t\ue000"
    assert fhir._template(fhir._shape(doc), "1") is None
    payload = json.dumps(doc).encode()
    assert json.loads(render_fhir(payload, version="1")) == reading_bundle(doc, version="1")


def test_full_urls_are_rfc_4122_name_based_uuids() -> None:
    for parts in [("obs", "abc", "0"), ("cts", "x" * 40), ("phd", "g", "d", "simulated")]:
        expected = uuid.uuid5(fhir._FULL_URL_NAMESPACE, "/".join(parts))
        assert fhir._urn(*parts) == f"urn:uuid:{expected}"


@pytest.mark.parametrize("quality", ["synced", "unsynced", "corrected", "unknown"])
def test_the_hubs_clock_state_is_in_its_device_and_a_note(quality: str) -> None:
    """PhgDevice clockBitProperty 68219.8 mds-time-state-abs-time-synced (ASN1ToHL7)."""
    r = reading(Kind.TEMPERATURE, [(mdc.TEMP_BODY, 36.9, "Cel")], source="hub")
    r = r.model_copy(update={"measured_at_quality": quality})
    bundle = bundle_of(r)
    phg = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["meta"]["profile"] == [IG + "PhgDevice"]
    )
    synced = [p for p in phg["property"] if p["type"]["coding"][0]["code"] == "68219.8"]
    (obs,) = observations(bundle)
    if quality == "unknown":
        assert synced == [] and "note" not in obs
        return
    assert synced[0]["valueCode"][0]["coding"][0]["code"] == ("N" if quality == "unsynced" else "Y")
    assert ("note" in obs) == (quality in ("unsynced", "corrected"))
    if quality == "corrected":
        assert "corrected" in obs["note"][0]["text"]
    payload = stored(r)
    reference = reading_bundle(json.loads(payload), version="0.1.0")
    assert json.loads(render_fhir(payload, version="0.1.0")) == reference


INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def plan_codes(element: dict[str, Any]) -> list[str]:
    return [
        c["code"]
        for concept in element.get("interpretation", [])
        for c in concept["coding"]
        if c["system"] == INTERPRETATION
    ]


def test_care_plan_flags_are_interpretations_of_the_value_they_name() -> None:
    """above/below: H/L (v3-ObservationInterpretation) on the Observation, or the
    compound's component, of that MDC code; weight_gain: U on the body weight."""
    flags = ("above:150021", "below:149546")  # systolic (a component), pulse (its own)
    bundle = bundle_of(reading(Kind.BLOOD_PRESSURE, BP), flags)
    (compound,) = observations(bundle, COMPOUND)
    assert [plan_codes(c) for c in compound["component"]] == [["H"], [], []]
    assert "interpretation" not in compound
    (pulse,) = observations(bundle, NUMERIC)
    assert plan_codes(pulse) == ["L"]
    assert pulse["interpretation"][0]["text"] == "below the care plan's threshold"
    weight = [(mdc.MASS_BODY_ACTUAL, 84.0, Ucum.KG), (mdc.LEN_BODY_ACTUAL, 1.8, Ucum.M)]
    mass, length = observations(
        bundle_of(reading(Kind.WEIGHT, weight), ("weight_gain", "above:188736"))
    )
    assert plan_codes(mass) == ["U", "H"] and plan_codes(length) == []
    # After the Measurement-Status interpretations, which keep their own system.
    spo2 = [(mdc.PULS_OXIM_SAT_O2, 86.0, Ucum.PERCENT)]
    (ox,) = observations(
        bundle_of(
            reading(Kind.PULSE_OXIMETER, spo2, ("questionable_measurement",)), ("below:150456",)
        )
    )
    assert [c["coding"][0]["code"] for c in ox["interpretation"]] == ["questionable", "L"]
    # A flag naming no value here, or newer than this mapping: a note, never dropped.
    (temp,) = observations(
        bundle_of(reading(Kind.TEMPERATURE, [(mdc.TEMP_BODY, 38.9, "Cel")]), ("above:1", "new"))
    )
    assert "interpretation" not in temp
    assert [n["text"] for n in temp["note"]] == ["care plan flag: above:1", "care plan flag: new"]


@pytest.mark.parametrize(
    "flags", [("above:150021", "below:150022", "above:149546"), ("weight_gain",), ("x",)]
)
def test_a_flagged_reading_renders_as_the_reference(flags: tuple[str, ...]) -> None:
    for kind in (Kind.BLOOD_PRESSURE, Kind.WEIGHT):
        for status in ((), tuple(sorted(EVERY_FLAG[kind]))):
            _renders_as_the_reference(stored(reading(kind, EVERY_KIND[kind], status), flags))


def test_a_flag_newer_than_the_mapping_is_kept_in_a_note() -> None:
    r = reading(Kind.TEMPERATURE, [(mdc.TEMP_BODY, 36.9, "Cel")], ("brand_new_flag",))
    (obs,) = observations(bundle_of(r))
    assert obs["note"] == [{"text": "device status flag: brand_new_flag"}]


def test_a_device_clock_ahead_gives_a_coincident_timestamp_with_a_time_fault() -> None:
    """coin-example-timefault.json: MDC_ATTR_TIME_ABS 67975, dataAbsentReason unknown."""
    r = reading(
        Kind.TEMPERATURE, [(mdc.TEMP_BODY, 36.9, "Cel")], ("device_clock_ahead",), source="hub"
    )
    bundle = bundle_of(r)
    (cts,) = observations(bundle, CTS)
    assert codes(cts["code"], MDC) == {"67975"}
    assert codes(cts["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"unknown"}
    assert "valueDateTime" not in cts and cts["effectiveDateTime"] == "2026-11-22T08:14:05.123Z"
    cts_url = full_url(bundle, CTS)
    (temp,) = observations(bundle, NUMERIC)
    assert {
        "url": IG + "CoincidentTimeStampReference",
        "valueReference": {"reference": cts_url},
    } in temp["extension"]


def test_a_resend_is_the_same_message_with_the_same_identifiers() -> None:
    """The store gives a re-read record the same id; the render of it is identical."""
    first = reading(Kind.WEIGHT, [(mdc.MASS_BODY_ACTUAL, 81.9, "kg")])
    again = reading(Kind.WEIGHT, [(mdc.MASS_BODY_ACTUAL, 81.9, "kg")])
    assert render_fhir(stored(first), version="1") == render_fhir(stored(again), version="1")
    bundle = bundle_of(first)
    rid = reading_id("hub-test", first)
    assert bundle["identifier"] == {"system": "urn:homehub:reading-id", "value": rid}
    (obs,) = observations(bundle)
    assert obs["identifier"] == [{"system": CONDITIONAL, "value": f"{rid}-188736"}]
    # Repeated codes (RR intervals) stay distinct, still derived from the id.
    hr = observations(bundle_of(reading(Kind.HEART_RATE, EVERY_KIND[Kind.HEART_RATE])))
    rid = reading_id("hub-test", reading(Kind.HEART_RATE, EVERY_KIND[Kind.HEART_RATE]))
    assert [o["identifier"][0]["value"] for o in hr] == [
        f"{rid}-147842",
        f"{rid}-147240",
        f"{rid}-147240-1",
    ]


def test_the_native_payload_is_untouched_and_fhir_has_its_content_type() -> None:
    payload = stored(reading(Kind.WEIGHT, [(mdc.MASS_BODY_ACTUAL, 81.9, "kg")]))
    assert renderer_for("homehub", version="1")(payload) == (payload, None)
    body, content_type = renderer_for("fhir", version="1")(payload)
    assert content_type == "application/fhir+json"
    assert json.loads(body)["resourceType"] == "Bundle"
    rendered = _render(renderer_for("fhir", version="1"), payload)
    assert not isinstance(rendered, str)
    _, properties = rendered
    assert properties is not None
    assert properties.ContentType == "application/fhir+json"
    assert properties.PayloadFormatIndicator == 1
    # Packed once (paho packs on every publish), to the bytes paho's own packing gives.
    fresh = Properties(PacketTypes.PUBLISH)
    fresh.PayloadFormatIndicator = 1
    fresh.ContentType = "application/fhir+json"
    assert properties.pack() == fresh.pack()
    # The Maximum Packet Size check counts the properties (MQTT 5 §3.3.2.3).
    assert (
        _publish_size("t", b"x", properties)
        == _publish_size("t", b"x") + len(properties.pack()) - 1
    )
    assert _publish_properties(None) is None


def test_a_payload_that_cannot_be_rendered_is_held_back_not_raised() -> None:
    assert _render(renderer_for("fhir", version="1"), b"not json") == (
        "cannot be rendered for [mqtt] payload: JSONDecodeError"
    )


async def test_end_to_end_bundles_with_content_type_through_mosquitto(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Simulated devices -> store -> uplink -> real mosquitto -> a plain subscriber."""
    kinds = ["blood_pressure", "pulse_oximeter", "weight", "glucose", "temperature"]
    config = write_config(
        tmp_path / "hub.toml",
        broker=broker,
        state_dir=tmp_path / "state",
        mqtt={"payload": "fhir"},
        devices=[sim_device(f"d-{k}", k, interval_s=0, count=2, seed=3) for k in kinds],
    )
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
    subscribed = asyncio.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe("homehub/hub-test/readings/#", qos=1)
    client.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(got.put_nowait, m)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with running_hub(config, EventBus()) as hub:
            messages = [await asyncio.wait_for(got.get(), 15) for _ in range(2 * len(kinds))]
            assert hub.store is not None
        ids = set()
        for message in messages:
            assert message.properties.ContentType == "application/fhir+json"
            assert message.properties.PayloadFormatIndicator == 1
            Bundle.model_validate_json(message.payload)
            bundle = json.loads(message.payload)
            ids.add(bundle["identifier"]["value"])
            device = message.topic.rsplit("/", 1)[1]
            phd = next(
                e["resource"]
                for e in bundle["entry"]
                if e["resource"]["meta"]["profile"] == [IG + "PhdDevice"]
            )
            assert phd["deviceName"] == [{"name": device, "type": "user-friendly-name"}]
        assert len(ids) == 2 * len(kinds)
    finally:
        client.disconnect()
        client.loop_stop()


def test_payload_is_a_checked_config_key(tmp_path: Path) -> None:
    good = write_config(
        tmp_path / "a.toml", broker=None, state_dir=tmp_path, mqtt={"payload": "fhir"}
    )
    assert load(good).mqtt.payload == "fhir"
    assert (
        load(write_config(tmp_path / "b.toml", broker=None, state_dir=tmp_path)).mqtt.payload
        == "homehub"
    )
    from gateway.errors import ConfigError

    bad = write_config(
        tmp_path / "c.toml", broker=None, state_dir=tmp_path, mqtt={"payload": "hl7"}
    )
    with pytest.raises(ConfigError, match=r"mqtt\.payload"):
        load(bad)


def test_a_measured_device_clock_offset_is_the_coincident_timestamp() -> None:
    """coin-example.json: the gateway's time (effectiveDateTime) against the device's
    (valueDateTime); here a cuff 6 minutes behind (issue 13 part 2), offset -360 s."""
    base = reading(Kind.BLOOD_PRESSURE, BP, source="device")
    r = base.model_copy(update={"device_clock_offset_s": -360.0})
    bundle = bundle_of(r)
    (cts,) = observations(bundle, CTS)
    assert codes(cts["code"], MDC) == {"67975"}
    assert cts["effectiveDateTime"] == "2026-11-22T08:14:05.123Z"
    assert cts["valueDateTime"] == "2026-11-22T08:08:05.123Z"
    assert "dataAbsentReason" not in cts
    cts_url = full_url(bundle, CTS)
    measured = [o for o in observations(bundle) if CTS not in o["meta"]["profile"]]
    assert measured
    for obs in measured:
        assert {
            "url": IG + "CoincidentTimeStampReference",
            "valueReference": {"reference": cts_url},
        } in obs["extension"]
    # The template agrees with the reference, for this offset and another one (ahead).
    _renders_as_the_reference(stored(r))
    ahead = r.model_copy(update={"device_clock_offset_s": 75.5})
    _renders_as_the_reference(stored(ahead))
    (cts,) = observations(bundle_of(ahead), CTS)
    assert cts["valueDateTime"] == "2026-11-22T08:15:20.623Z"
    # Without an offset, no coincident timestamp at all.
    assert observations(bundle_of(base), CTS) == []


def test_a_record_from_before_the_device_clock_was_set_is_a_clock_fault() -> None:
    """Issue 13: `device_clock_unset` keeps the device's time; FHIR says it cannot be trusted."""
    r = reading(Kind.GLUCOSE, EVERY_KIND[Kind.GLUCOSE], ("device_clock_unset",))
    bundle = bundle_of(r)
    (cts,) = observations(bundle, CTS)
    assert codes(cts["dataAbsentReason"], fhir_codes.DATA_ABSENT_SYSTEM) == {"unknown"}
    assert "clock not set" in cts["dataAbsentReason"]["text"]
    _renders_as_the_reference(stored(r))
