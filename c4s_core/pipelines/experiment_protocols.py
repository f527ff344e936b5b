"""The experiment's evaluation protocols: how each one treats the probes and the
gallery, and the sentence the report says of it (see ``experiment``)."""

from __future__ import annotations

from typing import Literal

PROTOCOLS = ("aligned", "perturbed", "distractors", "forensic")
Protocol = Literal["aligned", "perturbed", "distractors", "forensic"]
# protocol -> (probes perturbed, gallery enlarged with the distractors)
_PROTOCOL = {"aligned": (False, False), "perturbed": (True, False), "distractors": (False, True),
             "forensic": (True, True)}

_PROTOCOL_TEXT = {
    "aligned": "probes as drawn (after alignment)",
    "perturbed": "probes shifted, scaled and rotated a little after alignment (forensic sketches are never "
                 "pixel-aligned with their photos)",
    "distractors": "probes as drawn; gallery enlarged with the distractor photos",
    "forensic": "perturbed probes against the gallery enlarged with the distractor photos",
}
