"""validate: params.yaml checked in full (every section, unknown keys included) before any other
stage runs. Every stage depends on this stage's marker, so DVC stops here, before it removes any
stage's outputs, when the params are bad. The marker's bytes never change, so a valid edit of
params.yaml reruns only the stages whose own params changed."""

from __future__ import annotations

from egolens import checkpoint
from stages import VALID_MARKER, study_args


def main() -> None:
    study_args(__doc__)        # exits 2 with the bad keys named
    checkpoint.atomic_write_text(VALID_MARKER, "params.yaml is valid\n")


if __name__ == "__main__":
    main()
