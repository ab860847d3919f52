"""Validates every FHIR resource a medbox database queued for the uplink (`fhir/<type>` topics)
with an independent implementation of the FHIR R4B models (the `fhir.resources` package), and
checks what those models do not: resource ids per the FHIR id rule, one resource per id and
type with the last version winning, and the vital-signs profile.

usage: python3 tests/fhir/validate.py DB
"""

import json
import re
import sqlite3
import sys

from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation

MODELS = {"MedicationAdministration": MedicationAdministration, "Observation": Observation}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")
VITAL_SIGNS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"


def main(db):
    rows = sqlite3.connect(db).execute(
        "SELECT topic, payload FROM outbox WHERE topic LIKE '%/fhir/%' ORDER BY id"
    ).fetchall()
    if not rows:
        sys.exit(f"{db}: no FHIR resources queued")
    errors = []
    latest = {}
    for topic, payload in rows:
        resource = json.loads(payload)
        kind = topic.rsplit("/", 1)[-1]
        if resource.get("resourceType") != kind:
            errors.append(f"{topic}: resourceType {resource.get('resourceType')!r}")
            continue
        try:
            MODELS[kind].model_validate(resource)
        except Exception as e:  # the model's own message names the field
            errors.append(f"{kind}/{resource.get('id')}: {e}")
        if not FHIR_ID.match(str(resource.get("id", ""))):
            errors.append(f"{kind}: id {resource.get('id')!r} is not a FHIR id")
        if kind == "Observation":
            categories = [c["code"] for cat in resource.get("category", []) for c in cat["coding"]]
            profiles = resource.get("meta", {}).get("profile", [])
            if "vital-signs" in categories and VITAL_SIGNS not in profiles:
                errors.append(f"Observation/{resource['id']}: vital signs without the profile")
        latest[(kind, resource.get("id"))] = resource
    statuses = {}
    for (kind, _), r in latest.items():
        key = f"{kind}.{r.get('status')}"
        statuses[key] = statuses.get(key, 0) + 1
    for e in errors[:20]:
        print(e, file=sys.stderr)
    print(f"{len(rows)} resources ({len(latest)} distinct), {len(errors)} invalid; final states {statuses}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main(sys.argv[1])
