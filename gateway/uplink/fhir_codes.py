"""Codes, systems and profile URLs of the HL7 FHIR Personal Health Device IG (issue 13).

Facts copied from the IG's source (github.com/HL7/phd, STU 2, version 2.0.0, FHIR R4
4.0.1): `input/fsh/*.fsh` (profiles, the ASN1ToHL7 code system) and
`input/examples/*.json` (LOINC codes, displays), and from the IG pages named at
each table. Nothing here depends on the rest of the hub but `gateway.mdc`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway import mdc

# -- systems -------------------------------------------------------------------------

MDC_SYSTEM: Final = "urn:iso:std:iso:11073:10101"
LOINC_SYSTEM: Final = "http://loinc.org"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
ASN1_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
DATA_ABSENT_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# The FHIR core extension that marks any element, primitives included, as absent.
DATA_ABSENT_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
# PhdBaseObservation: interpretation.coding[MsmtStatusInterpretation].system (exactly).
MEASUREMENT_STATUS_SYSTEM: Final = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
ACT_REASON_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
# FHIR R4 Observation.interpretation (and .component.interpretation): the care plan's flags.
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY_SYSTEM: Final = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
YES_NO_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0136"
# PhdBaseObservation: identifier[conditionalCreate].system (exactly).
CONDITIONAL_CREATE_SYSTEM: Final = (
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
)
# homehub's own identifier systems (the hub has no IEEE EUI-64 System-Id of its own, and
# a serial device has none to read): the gateway id, and gateway/device/driver for a PHD.
GATEWAY_ID_SYSTEM: Final = "urn:homehub:gateway-id"
DEVICE_ID_SYSTEM: Final = "urn:homehub:device-id"
# RFC 3986: the identifier value is itself a URI (here urn:uuid:...).
URI_SYSTEM: Final = "urn:ietf:rfc:3986"

# -- profiles and extensions (StructureDefinition ^url in the FSH) ---------------------

_SD: Final = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
NUMERIC_PROFILE: Final = _SD + "PhdNumericObservation"
COMPOUND_NUMERIC_PROFILE: Final = _SD + "PhdCompoundNumericObservation"
BITS_PROFILE: Final = _SD + "PhdBitsEnumerationObservation"
COINCIDENT_TIMESTAMP_PROFILE: Final = _SD + "PhdCoincidentTimeStampObservation"
PHD_DEVICE_PROFILE: Final = _SD + "PhdDevice"
PHG_DEVICE_PROFILE: Final = _SD + "PhgDevice"
COINCIDENT_TIMESTAMP_EXTENSION: Final = _SD + "CoincidentTimeStampReference"
# PhdBaseObservation: extension[GatewayDevice], the FHIR core extension (R4 4.0.1).
GATEWAY_DEVICE_EXTENSION: Final = (
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
)

# -- MDC codes that are not measurement types (IG examples and FSH) --------------------


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    display: str


MDS_AHD: Final = Code("531981", "MDC_MOC_VMS_MDS_AHD")  # PhgDevice.type (exactly)
MDS_SIMP: Final = Code("65573", "MDC_MOC_VMS_MDS_SIMP")  # PhdDevice.type.coding[PhdCode]
PRESS_BLD_NONINV: Final = Code("150020", "MDC_PRESS_BLD_NONINV")  # the BP compound's type
ATTR_TIME_ABS: Final = Code("67975", "MDC_ATTR_TIME_ABS")  # coincident timestamp, wall clock
TIME_SYNC_PROTOCOL: Final = Code("68220", "MDC_TIME_SYNC_PROTOCOL")
# ValueSet MDCTimeSyncMethods. A Pi sets its clock with systemd-timesyncd, an SNTP
# client (RFC 4330), not a full NTPv4 one.
TIME_SYNC_SNTP: Final = Code("532228", "MDC_TIME_SYNC_SNTPV4330")
ID_PROD_SPEC_SW: Final = Code("531975", "MDC_ID_PROD_SPEC_SW")  # ValueSet MDCDeviceVersionTypes
ID_PROD_SPEC_FW: Final = Code("531976", "MDC_ID_PROD_SPEC_FW")
DEV_SPEC_PROFILE_GENERIC: Final = Code("528457", "MDC_DEV_SPEC_PROFILE_GENERIC")
# ASN1ToHL7 68219.0: the device has a real-time clock (PhdDevice.property[clockBitProperty]).
CLOCK_REAL_TIME: Final = Code("68219.0", "mds-time-capab-real-time-clock")
# ASN1ToHL7 68219.8: the absolute time has been synced (PhgDevice.property[clockBitProperty]).
CLOCK_ABS_TIME_SYNCED: Final = Code("68219.8", "mds-time-state-abs-time-synced")
#: Observation.note of a reading the hub stamped while its clock was not synchronised.
UNSYNCED_NOTE: Final = (
    "stamped by the gateway while its clock was not synchronised: the time may be wrong"
)
#: issue 13: held while unsynchronised, then corrected from the monotonic clock at sync
CORRECTED_NOTE: Final = (
    "stamped by the gateway before its clock was synchronised, and corrected when it was"
)

# Device.specialization[MDCType].systemType per reading kind (ValueSet DeviceTypes11073MDC).
SPECIALIZATIONS: Final[dict[str, Code]] = {
    "blood_pressure": Code("528391", "MDC_DEV_SPEC_PROFILE_BP"),
    "pulse_oximeter": Code("528388", "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
    "weight": Code("528399", "MDC_DEV_SPEC_PROFILE_SCALE"),
    "glucose": Code("528401", "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
    "temperature": Code("528392", "MDC_DEV_SPEC_PROFILE_TEMP"),
    # A heart-rate strap has no 11073 specialization of its own; its cardio profile.
    "heart_rate": Code("528425", "MDC_DEV_SPEC_PROFILE_HF_CARDIO"),
}

# -- LOINC (IG "Nomenclature codes": a Type with a FHIR vital-signs profile also carries
# its LOINC code). Codes from the IG examples (bundle-example-1, compound-numeric-blood-
# pressure, temperature-observation) and FHIR R4's vital-signs profiles. Glucose has no
# vital-signs profile and the IG's glucose example carries no LOINC: none here either.

_BODY_TEMPERATURE = (Code("8310-5", "Body temperature"),)
LOINC: Final[dict[int, tuple[Code, ...]]] = {
    mdc.PRESS_BLD_NONINV_SYS.number: (Code("8480-6", "Systolic blood pressure"),),
    mdc.PRESS_BLD_NONINV_DIA.number: (Code("8462-4", "Diastolic blood pressure"),),
    mdc.PRESS_BLD_NONINV_MEAN.number: (Code("8478-0", "Mean blood pressure"),),
    mdc.PULS_RATE_NON_INV.number: (Code("8867-4", "Heart rate"),),
    mdc.PULS_OXIM_PULS_RATE.number: (Code("8867-4", "Heart rate"),),
    mdc.ECG_HEART_RATE.number: (Code("8867-4", "Heart rate"),),
    mdc.PULS_OXIM_SAT_O2.number: (
        Code("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        Code("2708-6", "Oxygen saturation in Arterial blood"),
    ),
    mdc.MASS_BODY_ACTUAL.number: (Code("29463-7", "Body weight"),),
    mdc.LEN_BODY_ACTUAL.number: (Code("8302-2", "Body height"),),
    mdc.RATIO_MASS_BODY_LEN_SQ.number: (Code("39156-5", "Body mass index (BMI) [Ratio]"),),
    mdc.TEMP_BODY.number: _BODY_TEMPERATURE,
    # Every measuring site is still a body temperature (the vital-signs profile's code).
    mdc.TEMP_TYMP.number: _BODY_TEMPERATURE,
    mdc.TEMP_RECT.number: _BODY_TEMPERATURE,
    mdc.TEMP_ORAL.number: _BODY_TEMPERATURE,
    mdc.TEMP_EAR.number: _BODY_TEMPERATURE,
    mdc.TEMP_FINGER.number: _BODY_TEMPERATURE,
    mdc.TEMP_TOE.number: _BODY_TEMPERATURE,
    mdc.TEMP_AXILLA.number: _BODY_TEMPERATURE,
    mdc.TEMP_GIT.number: _BODY_TEMPERATURE,
}
BP_PANEL_LOINC: Final = Code("85354-9", "Blood pressure panel with all children optional")
#: The components of the blood-pressure compound (PhdCompoundNumericObservation).
BP_COMPONENTS: Final = frozenset(
    {
        mdc.PRESS_BLD_NONINV_SYS.number,
        mdc.PRESS_BLD_NONINV_DIA.number,
        mdc.PRESS_BLD_NONINV_MEAN.number,
    }
)

# -- status flags ----------------------------------------------------------------------
# Every `status` string a hub driver produces maps to the IG (issue 13). Three ways:
#
# 1. A bit of an 11073 BITs attribute -> one PhdBitsEnumerationObservation per attribute,
#    a component per set bit (code ASN1ToHL7 "<MDC type>.<bit>", valueBoolean true;
#    cleared event bits are not reported: IG "DIM to FHIR Mapping", Multiple Boolean).
#    The Bluetooth SIG fields are transcoded to the 11073 bits as the IG's page
#    "Non-IEEE 11073-10206 PHD Devices" requires (Bluetooth PHD transcoding white paper).
# 2. A Measurement-Status condition -> Observation.status / dataAbsentReason /
#    interpretation / meta.security, by the table in the IG's PhdBaseObservation notes.
# 3. A clock condition -> a PhdCoincidentTimeStampObservation whose value is absent
#    (dataAbsentReason "unknown", the IG's coin-example-timefault).


@dataclass(frozen=True, slots=True)
class BitsType:
    """An 11073 BITs attribute: the MDC type of its PhdBitsEnumerationObservation.

    `display` is the reference id where the IG's examples give it; the IG makes the
    display optional (an uploader may not know a code's name), so none is guessed.
    """

    code: str
    display: str | None


BPM_STATUS: Final = BitsType("8410608", "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS")
PULS_OXIM_DEV_STATUS: Final = BitsType("150604", "MDC_PULS_OXIM_DEV_STATUS")
# The types below are the ASN1ToHL7 code system's MDCCode properties; no IG example names them.
PULS_OXIM_PULS_CHAR: Final = BitsType("150605", None)
GLU_METER_DEV_STATUS: Final = BitsType("8417752", None)
ECG_DEV_STAT: Final = BitsType("8410584", None)
DEV_STATUS: Final = BitsType("8408608", None)


@dataclass(frozen=True, slots=True)
class Bit:
    type: BitsType
    bit: int
    display: str  # the ASN1ToHL7 code's display

    @property
    def code(self) -> str:
        return f"{self.type.code}.{self.bit}"


def _bits(kind: BitsType, table: dict[str, tuple[int, str]]) -> dict[str, Bit]:
    return {flag: Bit(kind, bit, display) for flag, (bit, display) in table.items()}


BIT_FLAGS: Final[dict[str, Bit]] = {
    # GSS blood_pressure_measurement Measurement Status -> 8410608 (same bit order).
    **_bits(
        BPM_STATUS,
        {
            "body_movement": (0, "body-movement"),
            "cuff_too_loose": (1, "cuff-too-loose"),
            "irregular_pulse": (2, "irregular-pulse"),
            "pulse_rate_above_range": (3, "pulse-over-range-limit"),
            "pulse_rate_below_range": (4, "pulse-under-range-limit"),
            "improper_position": (5, "improper-body-position"),
        },
    ),
    # GSS PLX Device and Sensor Status (bits 0-15) -> 150604, whose bit order is the
    # reverse of the GSS field's; matched by meaning.
    **_bits(
        PULS_OXIM_DEV_STATUS,
        {
            "sensor_disconnected": (0, "sensor-disconnected"),
            "sensor_malfunction": (1, "sensor-malfunction"),
            "sensor_displaced": (2, "sensor-displaced"),
            "unknown_sensor": (3, "sensor-unsupported"),
            "sensor_unconnected": (4, "sensor-off"),  # GSS: "not connected to the user"
            "sensor_interference": (5, "sensor-interference"),
            "signal_analysis_ongoing": (6, "signal-searching"),
            "questionable_pulse": (7, "signal-pulse-questionable"),
            # Nonin serial ARTF: an artifact in the pulse, i.e. the pulse is questionable.
            "artifact": (7, "signal-pulse-questionable"),
            "nonpulsatile_signal": (8, "signal-non-pulsatile"),
            "erratic_signal": (9, "signal-erratic"),
            "low_perfusion": (10, "signal-low-perfusion"),
            "poor_signal": (11, "signal-poor"),
            # Nonin 3230 "weak signal": a poor pulse signal (its perfusion is not stated).
            "weak_signal": (11, "signal-poor"),
            "inadequate_signal": (12, "signal-inadequate"),
            "signal_processing_irregularity": (13, "signal-processing-irregularity"),
            "equipment_malfunction": (14, "device-equipment-malfunction"),
            "extended_display_update": (15, "device-extended-update"),
        },
    ),
    # Nonin serial perfusion "yellow" (marginal) -> the 10404 pulse quality bits.
    **_bits(PULS_OXIM_PULS_CHAR, {"marginal_perfusion": (1, "pulse-qual-marginal")}),
    # GSS glucose_measurement Sensor Status Annunciation -> 8417752 (same bit order up to
    # bit 10; bit 11 "time fault" is a clock condition, below).
    **_bits(
        GLU_METER_DEV_STATUS,
        {
            "battery_low": (0, "device-battery-low"),
            "sensor_malfunction_glucose": (1, "sensor-malfunction"),
            "sample_size_insufficient": (2, "sensor-sample-size-insufficient"),
            "strip_insertion_error": (3, "sensor-strip-insertion"),
            "strip_type_incorrect": (4, "sensor-strip-type-incorrect"),
            "result_too_high": (5, "sensor-result-too-high"),
            "result_too_low": (6, "sensor-result-too-low"),
            "temperature_too_high": (7, "sensor-temp-too-high"),
            "temperature_too_low": (8, "sensor-temp-too-low"),
            "strip_pulled_too_soon": (9, "sensor-read-interrupt"),
            "device_fault": (10, "device-gen-fault"),
        },
    ),
    # Heart-rate strap without skin contact: its electrodes have lost contact.
    **_bits(ECG_DEV_STAT, {"no_skin_contact": (0, "leadwire-loss")}),
    # Nonin 3230 low battery: the generic device status attribute (GHS).
    **_bits(DEV_STATUS, {"low_battery": (25, "device-status-battery-low")}),
}
# The glucose meter's "sensor_malfunction" shares its name with the PLX one: the kind
# of the reading picks the attribute (see bit_for).
_GLUCOSE_ONLY = {"sensor_malfunction": "sensor_malfunction_glucose"}


def bit_for(kind: str, flag: str) -> Bit | None:
    if kind == "glucose":
        flag = _GLUCOSE_ONLY.get(flag, flag)
    return BIT_FLAGS.get(flag)


@dataclass(frozen=True, slots=True)
class MeasurementStatus:
    """What one Measurement-Status condition sets (IG, PhdBaseObservation notes, table)."""

    interpretation: str | None = None  # MEASUREMENT_STATUS_SYSTEM code
    status: str | None = None  # Observation.status instead of "final"
    data_absent: str | None = None  # the value is dropped, this DAR code given instead
    test_data: bool = False  # meta.security ActReason#HTEST
    note: str | None = None  # no IG element: said in Observation.note


MEASUREMENT_STATUS_FLAGS: Final[dict[str, MeasurementStatus]] = {
    # GSS PLX Measurement Status (bits 5-15).
    "measurement_ongoing": MeasurementStatus(interpretation="msmt-ongoing", status="preliminary"),
    "early_estimate": MeasurementStatus(interpretation="early-indication", status="preliminary"),
    "validated": MeasurementStatus(interpretation="validated-data"),
    "fully_qualified": MeasurementStatus(note="the device marks this data fully qualified"),
    "from_storage": MeasurementStatus(note="the device sent this from its storage"),
    "demonstration_data": MeasurementStatus(test_data=True),
    "testing_data": MeasurementStatus(test_data=True),
    "calibration_ongoing": MeasurementStatus(interpretation="calibration-ongoing"),
    "measurement_unavailable": MeasurementStatus(data_absent="not-performed"),
    "questionable_measurement": MeasurementStatus(interpretation="questionable"),
    "invalid_measurement": MeasurementStatus(data_absent="error", status="entered-in-error"),
    # A glucose control-solution test checks the meter: test data, never a patient value.
    "control_solution": MeasurementStatus(test_data=True),
    # A scale's "measurement unsuccessful" (weight 0xFFFF): its value is already null;
    # the IG's generic code for a value in error.
    "measurement_unsuccessful": MeasurementStatus(data_absent="error"),
}

#: Clock conditions -> a coincident timestamp with a time fault, and its text.
CLOCK_FLAGS: Final[dict[str, str]] = {
    # The hub refused a device timestamp ahead of its own clock and stamped the
    # reading with its time of reception (gateway.drivers.ble.base.measured_at).
    "device_clock_ahead": "device clock ahead of the gateway's: stamped at reception",
    # GSS glucose Sensor Status Annunciation bit 11: the meter's time may be wrong.
    "time_fault": "device time fault: its timestamp may be inaccurate",
    # Issue 13: a record dated before the device's clock was set (over a year before the
    # hub's build date); its time is kept as the device gave it, never shifted.
    "device_clock_unset": "device clock not set when this was recorded: its time is the device's",
}

# -- dataAbsentReason for a null value -------------------------------------------------
# The native payload keeps only "not available" (null) for SFLOAT/FLOAT NaN, NRes and
# +-INF (IG "FLOATs and SFLOATs": not-a-number, error, +/-infinity), and a serial line
# device's "---": the generic code the IG uses for a value in error.
NULL_VALUE_REASON: Final = "error"
DATA_ABSENT_DISPLAY: Final[dict[str, str]] = {
    "error": "Error",
    "not-performed": "Not Performed",
    "unknown": "Unknown",
}

# -- what the hub knows of each driver's device (PhdDevice manufacturer/modelNumber) ---
# None: not known to the hub (the Bluetooth profiles do not say; reading the Device
# Information Service is not built), sent as a data-absent-reason extension.
DRIVER_DEVICES: Final[dict[str, tuple[str | None, str | None]]] = {
    "simulated": ("homehub", "simulated device"),
    "serial.contec_cms50": ("Contec Medical Systems", "CMS50D+/E/F"),
    "serial.nonin": ("Nonin Medical, Inc.", None),
    "ble.nonin_3230": ("Nonin Medical, Inc.", "3230"),
}


# -- the care plan's flags (issue 10's native `flags`) -> Observation.interpretation ------
#
# `above:<mdc>` / `below:<mdc>`: H / L on the Observation (or the compound's component) of
# that MDC code: outside the plan's threshold, which is this patient's reference range.
# `weight_gain`: U "Significant change up" on the body weight. Not H: the weight itself may
# be in any range; what the rule saw is a rise over days (ObservationInterpretation's
# change codes are for a change against earlier results). The text says the hub's care
# plan, not the device, put it there.
PLAN_THRESHOLD: Final = {
    "above": (Code("H", "High"), "above the care plan's threshold"),
    "below": (Code("L", "Low"), "below the care plan's threshold"),
}
WEIGHT_GAIN_FLAG: Final = "weight_gain"
WEIGHT_GAIN: Final = (Code("U", "Significant change up"), "weight gain over the care plan's limit")
WEIGHT_GAIN_MDC: Final = mdc.MASS_BODY_ACTUAL.number
