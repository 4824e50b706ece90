"""IEEE 11073-10101 (MDC) nomenclature codes and UCUM units used in readings.

The codes and units are those used by the HL7 FHIR Personal Health Device
Implementation Guide, so a backend can map a value to a FHIR Observation without
guessing. Numbers are the 32-bit context-free codes: partition * 65536 + term code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MdcCode:
    """One measured quantity: its MDC number and reference id."""

    number: int
    name: str


PRESS_BLD_NONINV_SYS = MdcCode(150021, "MDC_PRESS_BLD_NONINV_SYS")
PRESS_BLD_NONINV_DIA = MdcCode(150022, "MDC_PRESS_BLD_NONINV_DIA")
PRESS_BLD_NONINV_MEAN = MdcCode(150023, "MDC_PRESS_BLD_NONINV_MEAN")
PULS_RATE_NON_INV = MdcCode(149546, "MDC_PULS_RATE_NON_INV")
PULS_OXIM_SAT_O2 = MdcCode(150456, "MDC_PULS_OXIM_SAT_O2")
PULS_OXIM_PULS_RATE = MdcCode(149530, "MDC_PULS_OXIM_PULS_RATE")
MASS_BODY_ACTUAL = MdcCode(188736, "MDC_MASS_BODY_ACTUAL")
LEN_BODY_ACTUAL = MdcCode(188740, "MDC_LEN_BODY_ACTUAL")
RATIO_MASS_BODY_LEN_SQ = MdcCode(188752, "MDC_RATIO_MASS_BODY_LEN_SQ")
CONC_GLU_CAPILLARY_WHOLEBLOOD = MdcCode(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD")
CONC_GLU_CAPILLARY_PLASMA = MdcCode(160188, "MDC_CONC_GLU_CAPILLARY_PLASMA")
TEMP_BODY = MdcCode(150364, "MDC_TEMP_BODY")
ECG_HEART_RATE = MdcCode(147842, "MDC_ECG_HEART_RATE")
# Temperature by site (IEEE 11073-10408 thermometer; HL7 PHD IG codes).
TEMP_TYMP = MdcCode(150392, "MDC_TEMP_TYMP")
TEMP_RECT = MdcCode(188420, "MDC_TEMP_RECT")
TEMP_ORAL = MdcCode(188424, "MDC_TEMP_ORAL")
TEMP_EAR = MdcCode(188428, "MDC_TEMP_EAR")
TEMP_FINGER = MdcCode(188432, "MDC_TEMP_FINGER")
TEMP_TOE = MdcCode(188448, "MDC_TEMP_TOE")
TEMP_AXILLA = MdcCode(188452, "MDC_TEMP_AXILLA")
TEMP_GIT = MdcCode(188456, "MDC_TEMP_GIT")
# Glucose by sample (IEEE 11073-10417 glucose meter).
CONC_GLU_GEN = MdcCode(160020, "MDC_CONC_GLU_GEN")
CONC_GLU_VENOUS_WHOLEBLOOD = MdcCode(160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD")
CONC_GLU_VENOUS_PLASMA = MdcCode(160196, "MDC_CONC_GLU_VENOUS_PLASMA")
CONC_GLU_ARTERIAL_WHOLEBLOOD = MdcCode(160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD")
CONC_GLU_ARTERIAL_PLASMA = MdcCode(160204, "MDC_CONC_GLU_ARTERIAL_PLASMA")
CONC_GLU_CONTROL = MdcCode(160208, "MDC_CONC_GLU_CONTROL")
CONC_GLU_ISF = MdcCode(160212, "MDC_CONC_GLU_ISF")
# RR interval (ECG, global), for heart-rate sensors.
ECG_TIME_PD_RR_GL = MdcCode(147240, "MDC_ECG_TIME_PD_RR_GL")

ALL_CODES: tuple[MdcCode, ...] = (
    PRESS_BLD_NONINV_SYS,
    PRESS_BLD_NONINV_DIA,
    PRESS_BLD_NONINV_MEAN,
    PULS_RATE_NON_INV,
    PULS_OXIM_SAT_O2,
    PULS_OXIM_PULS_RATE,
    MASS_BODY_ACTUAL,
    LEN_BODY_ACTUAL,
    RATIO_MASS_BODY_LEN_SQ,
    CONC_GLU_CAPILLARY_WHOLEBLOOD,
    CONC_GLU_CAPILLARY_PLASMA,
    TEMP_BODY,
    ECG_HEART_RATE,
    TEMP_TYMP,
    TEMP_RECT,
    TEMP_ORAL,
    TEMP_EAR,
    TEMP_FINGER,
    TEMP_TOE,
    TEMP_AXILLA,
    TEMP_GIT,
    CONC_GLU_GEN,
    CONC_GLU_VENOUS_WHOLEBLOOD,
    CONC_GLU_VENOUS_PLASMA,
    CONC_GLU_ARTERIAL_WHOLEBLOOD,
    CONC_GLU_ARTERIAL_PLASMA,
    CONC_GLU_CONTROL,
    CONC_GLU_ISF,
    ECG_TIME_PD_RR_GL,
)


class Ucum:
    """UCUM unit strings (case-sensitive codes, as FHIR uses them)."""

    MMHG = "mm[Hg]"
    KPA = "kPa"
    PER_MIN = "/min"
    PERCENT = "%"
    KG = "kg"
    LB = "[lb_av]"
    M = "m"
    IN = "[in_i]"
    KG_PER_M2 = "kg/m2"
    MG_PER_DL = "mg/dL"
    MMOL_PER_L = "mmol/L"
    CEL = "Cel"
    DEG_F = "[degF]"
    MS = "ms"
