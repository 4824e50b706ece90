"""The care plan (issue 10): what to measure when, thresholds, quiet hours.

`CarePlanService` is the public interface (`get`, `set`, `flags`, `stored`, `evaluate`, `run`,
`status`); the document is validated by `gateway.careplan.model`, windows come from
`gateway.careplan.schedule` and flags from `gateway.careplan.flags` (both pure).
"""

from gateway.careplan.model import CarePlan, parse_plan
from gateway.careplan.service import PLAN_FILE, STATE_FILE, CarePlanService

__all__ = ["PLAN_FILE", "STATE_FILE", "CarePlan", "CarePlanService", "parse_plan"]
