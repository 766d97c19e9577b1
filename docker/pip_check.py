"""`pip check` for the image build, allowing the packages named in PIP_CHECK_ALLOW_MISSING.

An image built without torchvision (TORCHVISION_VERSION empty: where only CUDA builds of
torchvision can be had) lacks one of compsweep's requirements on purpose; anything else that
`pip check` reports fails the build.
"""

from __future__ import annotations

import os
import subprocess
import sys

allowed = {
    n.strip().lower() for n in os.environ.get("PIP_CHECK_ALLOW_MISSING", "").split(",") if n.strip()
}
res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
problems = [
    line
    for line in res.stdout.splitlines()
    if line.strip()
    and not line.startswith("No broken requirements")
    and not any(line.lower().endswith(f"requires {n}, which is not installed.") for n in allowed)
]
print(
    "\n".join(problems)
    or "pip check: no broken requirements" + (f" (without {sorted(allowed)})" if allowed else "")
)
sys.exit(1 if problems else 0)
