"""The core never imports the apps (training, evaluation, figures, bench, CLI)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_loads_no_app():
    code = (
        "import sys, mixpro\n"
        "apps = ('mixpro.train', 'mixpro.evaluate', 'mixpro.data', 'mixpro.figures',\n"
        "        'mixpro.bench', 'mixpro.cli', 'matplotlib')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(apps))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"the core imported app modules: {out}"
